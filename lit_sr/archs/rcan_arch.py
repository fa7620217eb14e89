"""RCAN (Zhang et al., "Image Super-Resolution Using Very Deep Residual Channel Attention Networks",
ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_sr.archs.common import MeanShiftMixin, Upsample, make_layer


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (global average pool, 1x1 down, ReLU, 1x1 up, sigmoid).

    Args:
        num_feat: channels.
        squeeze_factor: the bottleneck has ``num_feat // squeeze_factor`` channels.
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        hidden = num_feat // squeeze_factor
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, hidden, 1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    """Residual channel attention block: conv-ReLU-conv-CA, scaled by ``res_scale``, plus the skip.

    Args:
        num_feat: channels.
        squeeze_factor: channel-attention reduction.
        res_scale: the residual is multiplied by this before the skip is added.
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rcab(x) * self.res_scale


class ResidualGroup(nn.Module):
    """``num_block`` RCABs and a 3x3 conv inside a long skip connection.

    Args:
        num_feat: channels.
        num_block: RCABs in the group.
        squeeze_factor: channel-attention reduction.
        res_scale: residual scaling of each RCAB.
    """

    def __init__(self, num_feat: int, num_block: int, squeeze_factor: int = 16, res_scale: float = 1.0):
        super().__init__()
        self.residual_group = make_layer(
            RCAB, num_block, num_feat=num_feat, squeeze_factor=squeeze_factor, res_scale=res_scale
        )
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.residual_group(x))


class RCAN(MeanShiftMixin, nn.Module):
    """RCAN with BasicSR's constructor arguments and state_dict keys.

    BasicSR's ``RCAN_BIX4-official`` style checkpoints load strictly (keys such as
    ``body.0.residual_group.0.rcab.0.weight``, ``body.0.residual_group.0.rcab.3.attention.1.weight``,
    ``body.0.conv.weight``, ``upsample.0.weight``). Inputs and outputs are in [0, 1];
    ``img_range`` and the mean shift live inside the model (the mean is a non-persistent buffer, as
    BasicSR's checkpoints have no such key).

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        num_feat: feature channels (64).
        num_group: residual groups (10).
        num_block: RCABs per group (20 in the paper; BasicSR's constructor default is 16, kept here).
        squeeze_factor: channel-attention reduction (16).
        upscale: 2, 3, 4 or 8 (any power of two, or 3).
        res_scale: residual scaling inside each RCAB (1).
        img_range: inputs are multiplied by this after mean subtraction (255 as in the paper).
        rgb_mean: DIV2K mean, subtracted from the input and added back to the output.

    Parameter count at x4 with the paper's 10 groups x 20 blocks: 15,592,355.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_group: int = 10,
        num_block: int = 16,
        squeeze_factor: int = 16,
        upscale: int = 4,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: Sequence[float] = (0.4488, 0.4371, 0.4040),
    ):
        super().__init__()
        _check_positive(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=num_feat, num_group=num_group,
                        num_block=num_block, squeeze_factor=squeeze_factor)
        if num_feat // squeeze_factor < 1:
            raise ValueError(
                f"squeeze_factor={squeeze_factor} leaves no channel in the attention bottleneck of "
                f"num_feat={num_feat}; expected squeeze_factor <= num_feat"
            )
        self.upscale = upscale
        self.img_range = img_range
        self._register_mean(rgb_mean, num_in_ch)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(
            ResidualGroup, num_group, num_feat=num_feat, num_block=num_block,
            squeeze_factor=squeeze_factor, res_scale=res_scale,
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self._normalise(x))
        res = self.conv_after_body(self.body(x)) + x
        return self._denormalise(self.conv_last(self.upsample(res)))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
