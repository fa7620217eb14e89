"""RRDBNet, the ESRGAN generator (Wang et al., "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks", ECCV Workshops 2018)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lit_sr.archs.common import default_init_weights, make_layer

# RRDBNet always upsamples x4 at the end; x2 and x1 first fold the input with pixel-unshuffle.
_UNSHUFFLE_FACTOR = {1: 4, 2: 2, 4: 1}


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the output is scaled by 0.2 and added to the input.

    Args:
        num_feat: channels in and out.
        num_grow_ch: channels each of the first four convs adds to the dense concatenation.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        # ESRGAN's small initialisation (Kaiming x 0.1) keeps the deep residual stack stable.
        default_init_weights([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a skip scaled by 0.2.

    Args:
        num_feat: channels.
        num_grow_ch: growth channels of each dense block.
    """

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """RRDBNet with BasicSR's constructor arguments and state_dict keys.

    BasicSR / ESRGAN / Real-ESRGAN checkpoints (``ESRGAN_SRx4_DF2KOST_official``,
    ``RealESRGAN_x4plus``, ``RealESRGAN_x2plus``, ...) load strictly (keys ``conv_first``,
    ``body.{i}.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
    ``conv_last``). The network has no mean shift: it maps [0, 1] to [0, 1] directly.

    The trunk always upsamples x4 (two nearest x2 + conv stages). As in BasicSR, x2 and x1 fold the
    input first with pixel-unshuffle (x2: factor 2, 4x channels; x1: factor 4, 16x channels), so
    their input height and width must be multiples of 2 and 4.

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        scale: 1, 2 or 4 (other factors are not part of the architecture and raise ``ValueError``).
        num_feat: trunk channels (64).
        num_block: RRDB blocks (23).
        num_grow_ch: growth channels of each dense block (32).

    Parameter count at x4 with 23 blocks: 16,697,987.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ):
        super().__init__()
        if scale not in _UNSHUFFLE_FACTOR:
            raise ValueError(f"RRDBNet scale must be one of {sorted(_UNSHUFFLE_FACTOR)}, got {scale!r}")
        for name, value in (("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch), ("num_feat", num_feat),
                            ("num_block", num_block), ("num_grow_ch", num_grow_ch)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.scale = scale
        self.unshuffle = _UNSHUFFLE_FACTOR[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = make_layer(RRDB, num_block, num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self._fold(x)
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle == 1:
            return x
        h, w = x.shape[-2:]
        if h % self.unshuffle or w % self.unshuffle:
            raise ValueError(
                f"RRDBNet x{self.scale} pixel-unshuffles its input by {self.unshuffle}; input size {h}x{w} "
                f"must be a multiple of {self.unshuffle} in both dimensions"
            )
        # torch's channel order (c, i, j) equals BasicSR's pixel_unshuffle, so checkpoints agree.
        return F.pixel_unshuffle(x, self.unshuffle)
