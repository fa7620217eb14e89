"""Discriminators for GAN-trained SR: ESRGAN's VGG-style one and Real-ESRGAN's U-Net with spectral norm."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

_VGG_INPUT_SIZES = (128, 256)


class VGGStyleDiscriminator(nn.Module):
    """VGG-style discriminator of SRGAN / ESRGAN with BasicSR's layout and state_dict keys.

    Five (six for 256 px) stages of a 3x3 conv and a stride-2 4x4 conv, each followed by batch norm
    (except the very first conv) and LeakyReLU(0.2); then ``linear1`` (to 100) and ``linear2`` (to
    one logit per image). Keys: ``conv0_0``, ``conv0_1``, ``bn0_1``, ``conv1_0``, ``bn1_0``, ...,
    ``conv4_1``, ``bn4_1`` (``conv5_*``/``bn5_*`` at 256 px), ``linear1``, ``linear2``, so BasicSR's
    ESRGAN discriminator checkpoints load strictly.

    Args:
        num_in_ch: input channels (3).
        num_feat: channels of the first stage; doubled per stage up to 8x (64).
        input_size: square input side, 128 or 256; the linear head is sized for it, so other
            sizes raise ``ValueError`` in ``forward``.

    Parameter count (num_feat 64): 14,499,401 at 128 px, 21,055,049 at 256 px.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128):
        super().__init__()
        if input_size not in _VGG_INPUT_SIZES:
            raise ValueError(f"input_size must be one of {_VGG_INPUT_SIZES}, got {input_size!r}")
        if num_in_ch < 1 or num_feat < 1:
            raise ValueError(f"num_in_ch and num_feat must be positive, got {num_in_ch!r}, {num_feat!r}")
        self.input_size = input_size
        widths = [num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8]
        if input_size == 256:
            widths.append(num_feat * 8)
        self.num_stages = len(widths)
        self.conv0_0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(num_feat, num_feat, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(num_feat, affine=True)
        for i in range(1, self.num_stages):
            setattr(self, f"conv{i}_0", nn.Conv2d(widths[i - 1], widths[i], 3, 1, 1, bias=False))
            setattr(self, f"bn{i}_0", nn.BatchNorm2d(widths[i], affine=True))
            setattr(self, f"conv{i}_1", nn.Conv2d(widths[i], widths[i], 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(widths[i], affine=True))
        # After 5 (or 6) halvings the map is 4 x 4.
        self.linear1 = nn.Linear(num_feat * 8 * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) with S = ``input_size`` -> (N, 1) logits."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"VGGStyleDiscriminator(input_size={self.input_size}) needs "
                f"{self.input_size}x{self.input_size} inputs, got {tuple(x.shape[-2:])}; "
                "crop the GT/SR patches to that size"
            )
        feat = self.lrelu(self.conv0_0(x))
        feat = self.lrelu(self.bn0_1(self.conv0_1(feat)))
        for i in range(1, self.num_stages):
            feat = self.lrelu(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(feat)))
            feat = self.lrelu(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(feat)))
        return self.linear2(self.lrelu(self.linear1(feat.flatten(1))))


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral normalisation (Wang et al., "Real-ESRGAN: Training
    Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW 2021).

    Three stride-2 spectral-normed downsampling convs, three bilinear x2 upsampling stages (with
    U-Net skip additions when ``skip_connection``), two more spectral-normed convs, and a final conv
    to one logit per pixel. Spectral norm is ``torch.nn.utils.spectral_norm`` (keys
    ``weight_orig``, ``weight_u``, ``weight_v``) as in Real-ESRGAN, so its ``RealESRGAN_x4plus_netD``
    checkpoint loads strictly.

    Args:
        num_in_ch: input channels (3).
        num_feat: channels of the first level; 2x and 4x deeper down (64).
        skip_connection: add encoder features to the decoder (True in Real-ESRGAN).

    Input height and width must be multiples of 8. Parameter count (num_feat 64): 4,376,897
    (counting ``weight_orig``; ``weight_u``/``weight_v`` are buffers).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        if num_in_ch < 1 or num_feat < 1:
            raise ValueError(f"num_in_ch and num_feat must be positive, got {num_in_ch!r}, {num_feat!r}")
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(num_in_ch, num_feat, kernel_size=3, stride=1, padding=1)
        self.conv1 = spectral_norm(nn.Conv2d(num_feat, num_feat * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(num_feat * 2, num_feat * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(num_feat * 4, num_feat * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(num_feat * 8, num_feat * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(num_feat * 4, num_feat * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) with H, W multiples of 8 -> (N, 1, H, W) per-pixel logits."""
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"UNetDiscriminatorSN needs height and width divisible by 8, got {h}x{w}")
        x0 = _lrelu(self.conv0(x))
        x1 = _lrelu(self.conv1(x0))
        x2 = _lrelu(self.conv2(x1))
        x3 = _lrelu(self.conv3(x2))
        x4 = _lrelu(self.conv4(_up2(x3)))
        x4 = x4 + x2 if self.skip_connection else x4
        x5 = _lrelu(self.conv5(_up2(x4)))
        x5 = x5 + x1 if self.skip_connection else x5
        x6 = _lrelu(self.conv6(_up2(x5)))
        x6 = x6 + x0 if self.skip_connection else x6
        out = _lrelu(self.conv8(_lrelu(self.conv7(x6))))
        return self.conv9(out)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ImageDiscriminator(nn.Module):
    """DATSR's (and SRNTT's / C2-Matching's) discriminator, with the authors' keys (caojiezhang/DATSR).

    Five blocks of (3x3 conv, batch norm, LeakyReLU(0.2), stride-2 3x3 conv, batch norm,
    LeakyReLU(0.2)), then global average pooling, a 1x1 conv to 1024, LeakyReLU(0.2), a 1x1 conv to
    one score and a sigmoid: ``(N, 3, H, W) -> (N, 1, 1, 1)`` in (0, 1), any input size. The authors
    train it with the WGAN-GP loss despite the batch norm and the sigmoid; kept as they have it.
    Keys: ``conv_block1.0.weight`` ... ``conv_block5.4.running_var``, ``out_block.1``, ``out_block.3``.
    Init: N(0, 0.02) for conv weights, zero biases, batch-norm scales N(1, 0.02) (their
    ``srntt_init_weights``).

    Args:
        in_nc: input channels (3).
        ndf: channels of the first block, doubled per block (32).
    """

    def __init__(self, in_nc: int = 3, ndf: int = 32):
        super().__init__()
        if in_nc < 1 or ndf < 1:
            raise ValueError(f"in_nc and ndf must be positive, got {in_nc!r}, {ndf!r}")

        def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, True),
                nn.Conv2d(out_channels, out_channels, 3, 2, 1), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, True),
            )

        widths = [ndf * 2**k for k in range(5)]
        for i, (cin, cout) in enumerate(zip([in_nc] + widths[:-1], widths), start=1):
            setattr(self, f"conv_block{i}", conv_block(cin, cout))
        self.out_block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(widths[-1], 1024, kernel_size=1),
                                       nn.LeakyReLU(0.2), nn.Conv2d(1024, 1, kernel_size=1), nn.Sigmoid())
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.normal_(m.weight, 1.0, 0.02)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"conv_block{i}")(x)
        return self.out_block(x)
