"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_sr.archs.common import MeanShiftMixin, ResidualBlockNoBN, Upsample, make_layer


class EDSR(MeanShiftMixin, nn.Module):
    """EDSR with BasicSR's constructor arguments and state_dict keys.

    Official BasicSR checkpoints (``EDSR_Mx4_f64b16_DIV2K_official-0c287733.pth``,
    ``EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth``, ...) load strictly. Inputs and outputs are
    in [0, 1]; ``img_range`` and the mean shift live inside the model.

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        num_feat: feature channels: 64 for EDSR-baseline ("M"), 256 for EDSR ("L").
        num_block: residual blocks: 16 (baseline) or 32 (large).
        upscale: 2, 3 or 4.
        res_scale: residual scaling: 1 (baseline) or 0.1 (large).
        img_range: inputs are multiplied by this after mean subtraction (255 as in the paper).
        rgb_mean: DIV2K mean, subtracted from the input and added back to the output.

    Parameter counts at x4: EDSR-baseline (64, 16) 1,517,571; EDSR-L (256, 32) 43,089,923.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        upscale: int = 4,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: Sequence[float] = (0.4488, 0.4371, 0.4040),
    ):
        super().__init__()
        self.upscale = upscale
        self.img_range = img_range
        self._register_mean(rgb_mean, num_in_ch)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(
            ResidualBlockNoBN, num_block, num_feat=num_feat, res_scale=res_scale, pytorch_init=True
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._normalise(x)
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x)) + x
        x = self.conv_last(self.upsample(res))
        return self._denormalise(x)
