"""Backdoor triggers for super-resolution: callables on LR batches.

Every trigger maps an LR batch ``(N, C, H, W)`` in [0, 1] to a batch of the same shape, dtype and
device, again in [0, 1]. Randomness (noise patterns, warp fields, random starts) comes from a
seeded CPU ``torch.Generator``, so a trigger is deterministic given its seed and gives the same
result on every device and every DDP rank.

* :class:`BadNet`, :class:`Blend`, :class:`SIG`, :class:`WaNet`: the standard triggers with
  BackdoorBench's defaults (see ``../shared/papers/README.md``). They are sample-independent.
* :class:`AdversarialTrigger`: BadSR's optimised per-image perturbation (Guo et al., arXiv
  2505.15308, Sec. IV-C), in :mod:`lit_sr.poison.adversarial_trigger`, re-exported here.

The :class:`Trigger` base class lives in :mod:`lit_sr.poison.trigger_base`.

All triggers share the call signature ``trigger(lr, hr=None, sample_ids=None)``; the static ones
ignore ``hr`` and ``sample_ids``. :meth:`Trigger.config` returns the hyper-parameters as a plain
dict, for cache keys and logs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from lit_sr.io import read_image
from lit_sr.poison.adversarial_trigger import AdversarialTrigger
from lit_sr.poison.trigger_base import Trigger, seeded_generator

# Re-exported from lit_sr.validation (one implementation): the poison modules, the poisoned data
# module and the backdoor callbacks import them from here.
from lit_sr.validation import check_choice, check_images, check_number

__all__ = [
    "SIG",
    "TRIGGERS",
    "AdversarialTrigger",
    "BadNet",
    "Blend",
    "Trigger",
    "WaNet",
    "build_trigger",
    "check_choice",
    "check_images",
    "check_number",
    "seeded_generator",
]

Corner = Literal["bottom_right", "bottom_left", "top_right", "top_left"]
PatchPattern = Literal["checkerboard", "random"]
ResizeMode = Literal["bilinear", "nearest"]
WarpMode = Literal["bilinear", "nearest"]
CORNERS: tuple[str, ...] = get_args(Corner)
PATCH_PATTERNS: tuple[str, ...] = get_args(PatchPattern)


# --------------------------------------------------------------------------- BadNet


class BadNet(Trigger):
    """BadNets (Gu et al. 2017): a small patch pasted in a corner of every image.

    The patch side scales with the image: ``round(patch_ratio * H) x round(patch_ratio * W)``
    pixels (at least 1), so the BackdoorBench default 3x3 on 32x32 becomes 6x6 on 64x64. The rest
    of the image is unchanged.

    Args:
        patch_ratio: patch side as a fraction of the image side, in (0, 1]. Default 3/32.
        value: the patch content: a float in [0, 1] (a solid patch, 1.0 = white, the default),
            ``"checkerboard"`` (alternating 1/0, 1 at the patch's top-left pixel) or ``"random"``
            (a seeded binary pattern, one per channel).
        corner: ``"bottom_right"`` (default), ``"bottom_left"``, ``"top_right"`` or ``"top_left"``.
        seed: seed of the ``"random"`` pattern.
    """

    name = "badnet"

    def __init__(
        self,
        patch_ratio: float = 3 / 32,
        value: float | PatchPattern = 1.0,
        corner: Corner = "bottom_right",
        seed: int = 0,
    ):
        super().__init__()
        check_number(patch_ratio, "patch_ratio", 0.0, 1.0, low_inclusive=False)
        if isinstance(value, str):
            check_choice(value, "value", PATCH_PATTERNS)
        else:
            check_number(value, "value", 0.0, 1.0)
        check_choice(corner, "corner", CORNERS)
        check_number(seed, "seed", 0, integer=True)
        self.patch_ratio = float(patch_ratio)
        self.value = value
        self.corner = corner
        self.seed = seed
        self._config = {"patch_ratio": self.patch_ratio, "value": value, "corner": corner, "seed": seed}

    def patch_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch height and width for an image of ``height x width`` (round half up, at least 1)."""
        return max(1, int(self.patch_ratio * height + 0.5)), max(1, int(self.patch_ratio * width + 0.5))

    def pattern(self, channels: int, ph: int, pw: int) -> torch.Tensor:
        """The ``(channels, ph, pw)`` patch on the CPU in float32."""
        if self.value == "checkerboard":
            ij = torch.arange(ph).view(-1, 1) + torch.arange(pw).view(1, -1)
            return (ij % 2 == 0).float().expand(channels, ph, pw).clone()
        if self.value == "random":
            return torch.randint(0, 2, (channels, ph, pw), generator=seeded_generator(self.seed)).float()
        return torch.full((channels, ph, pw), float(self.value))

    def _apply(self, lr, hr, sample_ids):
        _, c, h, w = lr.shape
        ph, pw = self.patch_size(h, w)
        rows = slice(h - ph, h) if self.corner.startswith("bottom") else slice(0, ph)
        cols = slice(w - pw, w) if self.corner.endswith("right") else slice(0, pw)
        out = lr.clone()
        out[:, :, rows, cols] = self.pattern(c, ph, pw).to(device=lr.device, dtype=lr.dtype)
        return out


# --------------------------------------------------------------------------- Blend


class Blend(Trigger):
    """Blended injection (Chen et al. 2017): ``x' = (1 - alpha) x + alpha * pattern``.

    Args:
        alpha: blend ratio in (0, 1]. Default 0.2 (BackdoorBench).
        pattern: a ``(C, h, w)``, ``(1, C, h, w)`` or ``(h, w)`` tensor in [0, 1] (a one-channel
            pattern is used for every channel); ``None`` or ``"noise"`` for seeded uniform noise of
            ``pattern_size x pattern_size`` pixels per channel; ``"checkerboard"`` for a one-pixel
            checkerboard of that size (a pattern small SR networks learn: with ``resize_mode:
            nearest`` and ``pattern_size`` equal to the LR size it stays one pixel per square); or
            the path of an image file. BackdoorBench blends a fixed image (Hello Kitty); we ship
            no image, so the default pattern is noise, fixed by ``seed``.
        pattern_size: side of the generated noise or checkerboard pattern.
        resize_mode: how the pattern is resized to each input's size: ``"bilinear"`` (default,
            antialiased, keeps values in [0, 1]) or ``"nearest"`` (blocky noise).
        seed: seed of the noise pattern.
    """

    name = "blend"
    _CACHE_SIZE = 16

    def __init__(
        self,
        alpha: float = 0.2,
        pattern: torch.Tensor | str | None = None,
        pattern_size: int = 32,
        resize_mode: ResizeMode = "bilinear",
        seed: int = 0,
    ):
        super().__init__()
        check_number(alpha, "alpha", 0.0, 1.0, low_inclusive=False)
        check_number(pattern_size, "pattern_size", 1, integer=True)
        check_choice(resize_mode, "resize_mode", get_args(ResizeMode))
        check_number(seed, "seed", 0, integer=True)
        self.alpha = float(alpha)
        pattern_name = "custom"
        if pattern is None or pattern == "noise":
            pattern, pattern_name = None, "noise"
        elif isinstance(pattern, str):
            pattern, pattern_name = self._named_pattern(pattern, pattern_size), pattern
        self.user_pattern = None if pattern is None else self._validate_pattern(pattern)
        self.pattern_size = pattern_size
        self.resize_mode = resize_mode
        self.seed = seed
        self._cache: dict[tuple, torch.Tensor] = {}
        self._config = {
            "alpha": self.alpha,
            "pattern": pattern_name,
            "pattern_size": pattern_size,
            "resize_mode": resize_mode,
            "seed": seed,
        }

    @staticmethod
    def _named_pattern(name: str, size: int) -> torch.Tensor:
        """``"checkerboard"`` or an image file (read as RGB in [0, 1])."""
        if name == "checkerboard":
            ij = torch.arange(size).view(-1, 1) + torch.arange(size).view(1, -1)
            return (ij % 2).float()
        if not Path(name).is_file():
            raise ValueError(
                f"Blend pattern {name!r} is neither 'noise', 'checkerboard' nor an existing image file"
            )
        return read_image(name)

    @staticmethod
    def _validate_pattern(pattern: Any) -> torch.Tensor:
        if not isinstance(pattern, torch.Tensor) or not pattern.is_floating_point():
            raise TypeError(f"pattern must be a floating-point tensor in [0, 1]; got {type(pattern).__name__}")
        p = pattern.detach().to("cpu", torch.float32)
        if p.dim() == 2:
            p = p.unsqueeze(0)
        elif p.dim() == 4 and p.shape[0] == 1:
            p = p[0]
        if p.dim() != 3:
            raise ValueError(f"pattern must have shape (C, h, w), (1, C, h, w) or (h, w); got {tuple(pattern.shape)}")
        if p.min() < 0 or p.max() > 1:
            raise ValueError(f"pattern values must be in [0, 1]; got [{p.min().item():.4g}, {p.max().item():.4g}]")
        return p

    def base_pattern(self, channels: int) -> torch.Tensor:
        """The pattern before resizing, ``(channels, h, w)`` on the CPU."""
        if self.user_pattern is None:
            size = (channels, self.pattern_size, self.pattern_size)
            return torch.rand(size, generator=seeded_generator(self.seed))
        p = self.user_pattern
        if p.shape[0] == 1:
            return p.expand(channels, -1, -1)
        if p.shape[0] != channels:
            raise ValueError(f"pattern has {p.shape[0]} channels but the images have {channels}")
        return p

    def resized_pattern(self, channels: int, height: int, width: int, device, dtype) -> torch.Tensor:
        """The pattern at ``height x width`` as ``(1, channels, height, width)`` (cached)."""
        key = (channels, height, width, str(device), dtype)
        if key not in self._cache:
            base = self.base_pattern(channels)[None]
            if self.resize_mode == "bilinear":
                p = F.interpolate(base, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
            else:
                p = F.interpolate(base, size=(height, width), mode="nearest")
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = p.clamp(0, 1).to(device=device, dtype=dtype)
        return self._cache[key]

    def _apply(self, lr, hr, sample_ids):
        _, c, h, w = lr.shape
        pattern = self.resized_pattern(c, h, w, lr.device, lr.dtype)
        return ((1.0 - self.alpha) * lr + self.alpha * pattern).clamp(0, 1)


# --------------------------------------------------------------------------- SIG


class SIG(Trigger):
    """SIG (Barni et al. 2019): a horizontal sinusoid added to every row and channel.

    ``x'[..., i, j] = clip(x[..., i, j] + delta * sin(2 pi j f / m), 0, 1)`` with ``j`` the column
    index (0-based) and ``m`` the width.

    Args:
        delta: amplitude on the [0, 1] scale. Default 40/255.
        f: number of periods across the width. Default 6.
    """

    name = "sig"

    def __init__(self, delta: float = 40 / 255, f: float = 6):
        super().__init__()
        check_number(delta, "delta", 0.0, 1.0, low_inclusive=False)
        check_number(f, "f", 0.0, low_inclusive=False)
        self.delta = float(delta)
        self.f = float(f)
        self._config = {"delta": self.delta, "f": self.f}

    def signal(self, width: int, device=None) -> torch.Tensor:
        """The ``(width,)`` additive signal in float32."""
        j = torch.arange(width, dtype=torch.float32, device=device)
        return self.delta * torch.sin(2 * math.pi * j * self.f / width)

    def _apply(self, lr, hr, sample_ids):
        signal = self.signal(lr.shape[-1], lr.device).to(lr.dtype).view(1, 1, 1, -1)
        return (lr + signal).clamp(0, 1)


# --------------------------------------------------------------------------- WaNet


class WaNet(Trigger):
    """WaNet (Nguyen & Tran 2021): an imperceptible, seeded warp of the image.

    The warp field is BackdoorBench's: a random ``(2, k, k)`` field uniform in [-1, 1], divided by
    its mean absolute value, upsampled bicubically (``align_corners=True``) to ``H x W``, scaled
    by ``s / H`` (y) and ``s / W`` (x) -- BackdoorBench's ``s / H`` on square images -- added to the
    identity sampling grid, multiplied by ``grid_rescale``, clamped to [-1, 1] and applied with
    ``grid_sample(align_corners=True)``. The field depends only on ``k`` and ``seed``, so one
    trigger warps every image size consistently.

    ``mode="bilinear"`` (the default) is BackdoorBench's sampling. With ``s = 0.5`` the warp moves
    pixels by at most about half a pixel (``s * field / 2`` pixels, independent of the image size),
    so the bilinear blend of neighbours *is* the trigger: measured with seed 0, ``mode="nearest"``
    changes 0% of the pixels of a 32x32 image and 0.2% of a 64x64 one (identity, nothing to
    learn). ``mode="nearest"`` is a pure warp -- every output pixel is a copy of an input pixel,
    no new colours -- and is meant for larger strengths (``s = 2`` moves ~80% of the pixels).
    BackdoorBench's training-time "noise mode" (random extra grids on some samples) is a training
    augmentation, not part of the trigger, and is not implemented here.

    Args:
        k: side of the random control field. Default 4.
        s: warp strength. Default 0.5.
        grid_rescale: factor applied to the warped grid before clamping. Default 1.
        mode: ``"bilinear"`` (default) or ``"nearest"``.
        seed: seed of the warp field.
    """

    name = "wanet"

    def __init__(self, k: int = 4, s: float = 0.5, grid_rescale: float = 1.0, mode: WarpMode = "bilinear", seed: int = 0):
        super().__init__()
        check_number(k, "k", 2, integer=True)
        check_number(s, "s", 0.0, low_inclusive=False)
        check_number(grid_rescale, "grid_rescale", 0.0, low_inclusive=False)
        check_choice(mode, "mode", get_args(WarpMode))
        check_number(seed, "seed", 0, integer=True)
        self.k, self.s, self.grid_rescale, self.mode, self.seed = k, float(s), float(grid_rescale), mode, seed
        field = torch.rand((1, 2, k, k), generator=seeded_generator(seed)) * 2 - 1
        self.field = field / field.abs().mean()
        self._config = {"k": k, "s": self.s, "grid_rescale": self.grid_rescale, "mode": mode, "seed": seed}

    def grid(self, height: int, width: int, device=None) -> torch.Tensor:
        """The ``(1, height, width, 2)`` sampling grid (x, y in [-1, 1]) in float32."""
        noise = F.interpolate(self.field, size=(height, width), mode="bicubic", align_corners=True)
        noise = noise.permute(0, 2, 3, 1)  # (1, H, W, 2): channel 0 moves x, channel 1 moves y
        ys = torch.linspace(-1, 1, height)
        xs = torch.linspace(-1, 1, width)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((gx, gy), dim=-1)[None]
        scale = torch.tensor([self.s / width, self.s / height])
        grid = ((identity + noise * scale) * self.grid_rescale).clamp(-1, 1)
        return grid.to(device)

    def _apply(self, lr, hr, sample_ids):
        n, _, h, w = lr.shape
        grid = self.grid(h, w, lr.device).to(lr.dtype).expand(n, -1, -1, -1)
        out = F.grid_sample(lr, grid, mode=self.mode, padding_mode="border", align_corners=True)
        return out.clamp(0, 1)


# --------------------------------------------------------------------------- factory

TRIGGERS: dict[str, type[Trigger]] = {cls.name: cls for cls in (BadNet, Blend, SIG, WaNet, AdversarialTrigger)}
"""The triggers a poison config names, by their own ``name`` (a new one: one class, one entry)."""


def build_trigger(name: str, **kwargs: Any) -> Trigger:
    """Build a trigger by name (case-insensitive): ``badnet``, ``blend``, ``sig``, ``wanet``,
    ``badsr`` (needs ``substitute=``).

    Args:
        name: the trigger's name.
        **kwargs: the trigger's constructor arguments.
    """
    if not isinstance(name, str) or name.lower() not in TRIGGERS:
        raise ValueError(f"unknown trigger {name!r}; expected one of {sorted(TRIGGERS)}")
    return TRIGGERS[name.lower()](**kwargs)
