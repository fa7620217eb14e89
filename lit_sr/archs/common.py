"""Building blocks shared by several networks, with BasicSR's module and parameter names."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import init


@torch.no_grad()
def default_init_weights(module_list, scale: float = 1.0, bias_fill: float = 0.0) -> None:
    """Kaiming-normal init scaled by ``scale`` (BasicSR's residual-block initialisation)."""
    if not isinstance(module_list, list):
        module_list = [module_list]
    for module in module_list:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)


def make_layer(block: type[nn.Module], num_blocks: int, **kwargs) -> nn.Sequential:
    """``num_blocks`` copies of ``block(**kwargs)`` in an ``nn.Sequential`` (keys ``0``, ``1``, ...)."""
    return nn.Sequential(*[block(**kwargs) for _ in range(num_blocks)])


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv residual block without batch norm (EDSR).

    Args:
        num_feat: channels.
        res_scale: the residual is multiplied by this before the skip is added.
        pytorch_init: keep PyTorch's default init; otherwise Kaiming scaled by 0.1.
    """

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0, pytorch_init: bool = False):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        if not pytorch_init:
            default_init_weights([self.conv1, self.conv2], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class Upsample(nn.Sequential):
    """Sub-pixel upsampler: conv + PixelShuffle(2) per factor of 2, or one conv + PixelShuffle(3).

    Args:
        scale: 2**n or 3.
        num_feat: channels.
    """

    def __init__(self, scale: int, num_feat: int):
        m: list[nn.Module] = []
        if scale >= 1 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                m.append(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1))
                m.append(nn.PixelShuffle(2))
        elif scale == 3:
            m.append(nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1))
            m.append(nn.PixelShuffle(3))
        else:
            raise ValueError(f"upscale {scale} is not supported; expected a power of 2 or 3")
        super().__init__(*m)


class MeanShiftMixin:
    """Input normalisation kept inside the model as in BasicSR: ``(x - mean) * img_range``.

    The mean is a non-persistent buffer, so it follows ``.to(device)`` but is not in the
    state_dict (BasicSR's checkpoints have no such key).
    """

    mean: torch.Tensor
    img_range: float

    def _register_mean(self, rgb_mean, num_in_ch: int) -> None:
        mean = torch.tensor(rgb_mean, dtype=torch.float32).view(1, -1, 1, 1)
        if num_in_ch != 3:
            mean = torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) * self.img_range

    def _denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.img_range + self.mean.to(x.dtype)
