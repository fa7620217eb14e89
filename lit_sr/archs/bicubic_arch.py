"""Bicubic interpolation as a parameter-free, differentiable "network": the robustness baseline."""

from __future__ import annotations

import torch
from torch import nn

from lit_sr.ops import imresize


class Bicubic(nn.Module):
    """MATLAB-compatible bicubic upsampling (the SR baseline of Choi et al., Table 1).

    It imports :mod:`lit_sr.ops` (a leaf module itself), so that the baseline is exactly the
    interpolation that made the benchmark LR images, not PyTorch's a = -0.75 bicubic.

    Args:
        upscale: integer upscaling factor.
        num_in_ch: accepted for interface symmetry with learnt networks; any channel count works.
        clamp: clamp the output to [0, 1] (bicubic overshoots slightly near edges).

    Parameter count: 0.
    """

    def __init__(self, upscale: int = 4, num_in_ch: int = 3, clamp: bool = False):
        super().__init__()
        if upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        self.upscale = upscale
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = imresize(x, scale=self.upscale, antialiasing=True)
        return y.clamp(0, 1) if self.clamp else y
