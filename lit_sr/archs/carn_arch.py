"""CARN and CARN-M (Ahn, Kang and Sohn, "Fast, Accurate, and Lightweight Super-Resolution with
Cascading Residual Network", ECCV 2018).

Module and parameter names follow the official code (``nmhkahn/CARN-pytorch``, ``carn/model/``), so
its checkpoints load strictly: ``entry``, ``b{1,2,3}`` cascading blocks with their own ``b*`` units
and ``c*`` 1x1 fusions, ``upsample.up`` (one scale) or ``upsample.up{2,3,4}`` (multi-scale), ``exit``.
The official model also carries its mean shift as two frozen 1x1 convs (``sub_mean.shifter``,
``add_mean.shifter``); here the mean is a non-persistent buffer, and a load hook accepts those keys
after checking they hold the same mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lit_sr.archs.common import MeanShiftMixin

_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
_MULTI_SCALES = (2, 3, 4)


class ConvReLU(nn.Module):
    """Conv followed by ReLU (the official ``BasicBlock``; key ``body.0``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        ksize: kernel size.
        stride: stride.
        pad: padding.
    """

    def __init__(self, in_channels: int, out_channels: int, ksize: int = 3, stride: int = 1, pad: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, ksize, stride, pad), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualBlock(nn.Module):
    """CARN's residual unit: conv-ReLU-conv, add the input, then ReLU.

    Args:
        num_feat: channels.
    """

    def __init__(self, num_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


class EResidualBlock(nn.Module):
    """CARN-M's efficient residual unit: two grouped 3x3 convs and a pointwise 1x1, add, ReLU.

    Args:
        num_feat: channels; must be divisible by ``group``.
        group: groups of the two 3x3 convs (4 in CARN-M).
    """

    def __init__(self, num_feat: int, group: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=group),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


def cascade(x: torch.Tensor, units: Sequence[nn.Module], fusions: Sequence[nn.Module]) -> torch.Tensor:
    """CARN's cascading connection: each unit's output is concatenated to everything before it, and a
    1x1 conv fuses the concatenation into the next unit's input."""
    concat = out = x
    for unit, fuse in zip(units, fusions):
        concat = torch.cat([concat, unit(out)], dim=1)
        out = fuse(concat)
    return out


class CascadingBlock(nn.Module):
    """Three residual units with cascading 1x1 fusions (``c1``, ``c2``, ``c3``).

    CARN has three units ``b1``, ``b2``, ``b3``. CARN-M shares one efficient unit ``b1`` across the
    three positions (the recursive weight sharing of the paper), which is why its blocks have only
    ``b1`` keys.

    Args:
        num_feat: channels.
        efficient: use one shared :class:`EResidualBlock` (CARN-M) instead of three
            :class:`ResidualBlock` units (CARN).
        group: groups of the efficient unit's 3x3 convs.
    """

    def __init__(self, num_feat: int, efficient: bool = False, group: int = 1):
        super().__init__()
        self.shared = efficient
        if efficient:
            self.b1 = EResidualBlock(num_feat, group)
        else:
            self.b1 = ResidualBlock(num_feat)
            self.b2 = ResidualBlock(num_feat)
            self.b3 = ResidualBlock(num_feat)
        self.c1 = ConvReLU(num_feat * 2, num_feat, 1, 1, 0)
        self.c2 = ConvReLU(num_feat * 3, num_feat, 1, 1, 0)
        self.c3 = ConvReLU(num_feat * 4, num_feat, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = (self.b1, self.b1, self.b1) if self.shared else (self.b1, self.b2, self.b3)
        return cascade(x, units, (self.c1, self.c2, self.c3))


class ScaleUpsample(nn.Module):
    """Sub-pixel upsampler of one scale: (conv to 4x channels, ReLU, PixelShuffle(2)) per factor 2, or
    (conv to 9x channels, ReLU, PixelShuffle(3)) for x3. Key ``body.0`` (and ``body.3`` for x4).

    Args:
        num_feat: channels.
        scale: 2, 3, 4 or 8.
        group: groups of the convs (4 in CARN-M).
    """

    def __init__(self, num_feat: int, scale: int, group: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        if scale in (2, 4, 8):
            for _ in range(scale.bit_length() - 1):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True)]
                layers += [nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True)]
            layers += [nn.PixelShuffle(3)]
        else:
            raise ValueError(f"CARN scale must be 2, 3, 4 or 8, got {scale!r}")
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CARNUpsample(nn.Module):
    """One upsampler (``up``) or the multi-scale set (``up2``, ``up3``, ``up4``) of the official code.

    Args:
        num_feat: channels.
        scale: the single scale (ignored when ``multi_scale``).
        multi_scale: build x2, x3 and x4 branches sharing the body.
        group: groups of the convs.
    """

    def __init__(self, num_feat: int, scale: int, multi_scale: bool, group: int = 1):
        super().__init__()
        self.multi_scale = multi_scale
        if multi_scale:
            self.up2 = ScaleUpsample(num_feat, 2, group)
            self.up3 = ScaleUpsample(num_feat, 3, group)
            self.up4 = ScaleUpsample(num_feat, 4, group)
        else:
            self.up = ScaleUpsample(num_feat, scale, group)

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if self.multi_scale:
            return getattr(self, f"up{scale}")(x)
        return self.up(x)


class CARN(MeanShiftMixin, nn.Module):
    """Cascading Residual Network: three cascading blocks of three residual units, cascaded again.

    Inputs and outputs are in [0, 1]; the DIV2K mean is subtracted inside the model (no range
    scaling, as in the official code).

    Scale: the official models are trained multi-scale (``--scale 0``: one body, an x2, x3 and x4
    upsampler each, chosen per batch). ``multi_scale=True`` builds that network and
    ``forward(x, scale)`` picks the branch (default ``scale``). ``multi_scale=False`` (the default
    here) builds a single-scale ``upsample.up`` for ``scale``: a single-scale recipe then trains no
    unused parameters (which DDP would reject).

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        num_feat: channels (64).
        scale: output scale: 2, 3 or 4 (8 also for single-scale); the default branch when multi-scale.
        multi_scale: build the x2/x3/x4 upsampler set of the official checkpoints.
        group: groups of the upsampler convs (1 in CARN).
        rgb_mean: mean subtracted from the input and added back to the output.

    Parameter counts (the mean shift is a buffer here; the official code adds 24 frozen
    parameters for it): multi-scale, as the paper reports (1,592K): 1,591,939; single-scale x4:
    1,111,875 (x2: 964,163, x3: 1,148,803).
    """

    efficient = False

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        scale: int = 4,
        multi_scale: bool = False,
        group: int = 1,
        rgb_mean: Sequence[float] = _DIV2K_MEAN,
    ):
        super().__init__()
        _validate(num_in_ch, num_out_ch, num_feat, scale, multi_scale, group)
        self.scale = scale
        self.multi_scale = multi_scale
        self.img_range = 1.0
        self._register_mean(rgb_mean, num_in_ch)
        self.entry = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.b1 = CascadingBlock(num_feat, self.efficient, group)
        self.b2 = CascadingBlock(num_feat, self.efficient, group)
        self.b3 = CascadingBlock(num_feat, self.efficient, group)
        self.c1 = ConvReLU(num_feat * 2, num_feat, 1, 1, 0)
        self.c2 = ConvReLU(num_feat * 3, num_feat, 1, 1, 0)
        self.c3 = ConvReLU(num_feat * 4, num_feat, 1, 1, 0)
        self.upsample = CARNUpsample(num_feat, scale, multi_scale, group)
        self.exit = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.register_load_state_dict_pre_hook(_accept_official_mean_shift)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        """Super-resolve ``x`` (N, C, H, W) in [0, 1].

        Args:
            x: low-resolution batch.
            scale: which branch of a multi-scale model to use (default: ``self.scale``); a
                single-scale model only accepts its own scale.
        """
        scale = self._check_scale(scale)
        feat = self.entry(self._normalise(x))
        feat = cascade(feat, (self.b1, self.b2, self.b3), (self.c1, self.c2, self.c3))
        return self._denormalise(self.exit(self.upsample(feat, scale)))

    def _check_scale(self, scale: int | None) -> int:
        if scale is None:
            return self.scale
        if self.multi_scale and scale in _MULTI_SCALES:
            return scale
        if not self.multi_scale and scale == self.scale:
            return scale
        accepted = _MULTI_SCALES if self.multi_scale else (self.scale,)
        raise ValueError(f"{type(self).__name__} was built for scales {accepted}; got scale={scale!r}")


class CARNM(CARN):
    """CARN-M, the mobile CARN: each cascading block shares one efficient residual unit (grouped 3x3
    convs + 1x1) across its three positions, and the upsampler convs are grouped too.

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        num_feat: channels (64); divisible by ``group``.
        scale: output scale 2, 3 or 4 (8 also for single-scale); the default branch when multi-scale.
        multi_scale: build the x2/x3/x4 upsampler set of the official checkpoints.
        group: groups of the efficient units and the upsampler convs (4, as the official recipe).
        rgb_mean: mean subtracted from the input and added back to the output.

    Parameter counts (mean shift as a buffer; the official code adds 24 frozen parameters):
    multi-scale, as the paper reports (412K): 414,787; single-scale x4: 294,147
    (x2: 257,027, x3: 303,427).
    """

    efficient = True

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        scale: int = 4,
        multi_scale: bool = False,
        group: int = 4,
        rgb_mean: Sequence[float] = _DIV2K_MEAN,
    ):
        super().__init__(num_in_ch, num_out_ch, num_feat, scale, multi_scale, group, rgb_mean)


def _validate(
    num_in_ch: int, num_out_ch: int, num_feat: int, scale: int, multi_scale: bool, group: int
) -> None:
    for name, value in (("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch), ("num_feat", num_feat),
                        ("group", group)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_feat % group:
        raise ValueError(f"num_feat {num_feat} must be divisible by group {group}")
    allowed = _MULTI_SCALES if multi_scale else (2, 3, 4, 8)
    if scale not in allowed:
        raise ValueError(f"scale must be one of {allowed} (multi_scale={multi_scale}), got {scale!r}")


def _accept_official_mean_shift(module: CARN, state_dict: dict, prefix: str, *args) -> None:
    """Drop the official checkpoints' frozen mean-shift convs after checking they hold our mean."""
    expected = {"sub_mean": -module.mean.flatten(), "add_mean": module.mean.flatten()}
    for name, bias in expected.items():
        weight_key, bias_key = f"{prefix}{name}.shifter.weight", f"{prefix}{name}.shifter.bias"
        if weight_key not in state_dict and bias_key not in state_dict:
            continue
        weight = state_dict.pop(weight_key, None)
        loaded_bias = state_dict.pop(bias_key, None)
        identity = torch.eye(bias.numel()).view(bias.numel(), bias.numel(), 1, 1)
        if (
            weight is None
            or loaded_bias is None
            or weight.shape != identity.shape
            or not torch.allclose(weight.float().cpu(), identity, atol=1e-6)
            or not torch.allclose(loaded_bias.float().cpu(), bias.float().cpu(), atol=1e-5)
        ):
            raise ValueError(
                f"checkpoint key {name}.shifter does not hold an identity 1x1 conv with bias "
                f"{bias.tolist()} (the model's rgb_mean); build the model with the checkpoint's mean"
            )
