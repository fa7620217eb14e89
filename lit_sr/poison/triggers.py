"""Backdoor triggers for super-resolution: callables on LR batches.

Every trigger maps an LR batch ``(N, C, H, W)`` in [0, 1] to a batch of the same shape, dtype and
device, again in [0, 1]. Randomness (noise patterns, warp fields, random starts) comes from a
seeded CPU ``torch.Generator``, so a trigger is deterministic given its seed and gives the same
result on every device and every DDP rank.

* :class:`BadNet`, :class:`Blend`, :class:`SIG`, :class:`WaNet`: the standard triggers with
  BackdoorBench's defaults (see ``../shared/papers/README.md``). They are sample-independent.
* :class:`AdversarialTrigger`: BadSR's optimised per-image perturbation (Guo et al., arXiv
  2505.15308, Sec. IV-C).

All triggers share the call signature ``trigger(lr, hr=None, sample_ids=None)``; the static ones
ignore ``hr`` and ``sample_ids``. :meth:`Trigger.config` returns the hyper-parameters as a plain
dict, for cache keys and logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")
PATCH_PATTERNS = ("checkerboard", "random")
PERCEPTUAL_CHOICES = ("lpips", "ssim")
L2_SCHEDULES = ("linear", "exponential", "adaptive")

# --------------------------------------------------------------------------- validation helpers


def check_images(x: Any, name: str = "lr") -> None:
    """Raise a clear error unless ``x`` is a floating-point ``(N, C, H, W)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1]; got dtype {x.dtype}")


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``value`` is a number in the range."""
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int,) if integer else (int, float)):
        raise TypeError(f"{name} must be {kind}; got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}; got {value!r}")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same stream on every machine, device and rank."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


# --------------------------------------------------------------------------- base class


class Trigger:
    """Base class: validates the batch, then calls :meth:`_apply`.

    Subclasses set ``name`` and fill ``self._config`` with their hyper-parameters.
    """

    name = "trigger"

    def __init__(self) -> None:
        self._config: dict[str, Any] = {}

    def __call__(
        self,
        lr: torch.Tensor,
        hr: torch.Tensor | None = None,
        sample_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Apply the trigger.

        Args:
            lr: LR batch ``(N, C, H, W)`` in [0, 1].
            hr: HR labels of the batch (used by :class:`AdversarialTrigger` only).
            sample_ids: dataset indices of the batch (used by :class:`AdversarialTrigger` to seed
                each image's random start, so a result does not depend on batch composition).

        Returns:
            The triggered batch: same shape, dtype and device as ``lr``, values in [0, 1].
        """
        check_images(lr, "lr")
        if hr is not None:
            check_images(hr, "hr")
            if hr.shape[0] != lr.shape[0]:
                raise ValueError(f"hr has {hr.shape[0]} images but lr has {lr.shape[0]}")
        return self._apply(lr, hr, sample_ids)

    def _apply(self, lr: torch.Tensor, hr: torch.Tensor | None, sample_ids) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The trigger's name and hyper-parameters (plain Python values)."""
        return {"name": self.name, **self._config}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


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
        self, patch_ratio: float = 3 / 32, value: float | str = 1.0, corner: str = "bottom_right", seed: int = 0
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
        resize_mode: str = "bilinear",
        seed: int = 0,
    ):
        super().__init__()
        check_number(alpha, "alpha", 0.0, 1.0, low_inclusive=False)
        check_number(pattern_size, "pattern_size", 1, integer=True)
        check_choice(resize_mode, "resize_mode", ("bilinear", "nearest"))
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
        from pathlib import Path

        from lit_sr.io import read_image

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

    def __init__(self, k: int = 4, s: float = 0.5, grid_rescale: float = 1.0, mode: str = "bilinear", seed: int = 0):
        super().__init__()
        check_number(k, "k", 2, integer=True)
        check_number(s, "s", 0.0, low_inclusive=False)
        check_number(grid_rescale, "grid_rescale", 0.0, low_inclusive=False)
        check_choice(mode, "mode", ("bilinear", "nearest"))
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


# --------------------------------------------------------------------------- BadSR adversarial trigger


@contextmanager
def frozen_eval(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and freeze every parameter; restore both on exit."""
    modes = {m: m.training for m in module.modules()}
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def model_device(module: nn.Module, default: torch.device) -> torch.device:
    """The device of a module's first parameter or buffer (``default`` when it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return default


def _per_image_rms(x: torch.Tensor) -> torch.Tensor:
    # epsilon keeps the gradient of the norm finite when x is exactly 0 (e.g. f(x) vs f(x))
    return (x.float().pow(2).flatten(1).mean(dim=1) + 1e-12).sqrt()


def _ssim_distance(window: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from kornia.losses import ssim_loss  # kornia is only needed for this stand-in

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ssim_loss(a, b, window_size=window, max_val=1.0, reduction="none").flatten(1).mean(dim=1)

    return distance


class AdversarialTrigger(Trigger):
    """BadSR's adversarial trigger: an optimised, per-image perturbation of the LR input.

    For each LR image ``x`` with label ``y`` the trigger is ``x + delta`` where ``delta`` minimises
    (with Adam, all images of the batch at once and independently)::

        J_t(delta) = - R(delta) + lambda_1 * P(x + delta, x) + lambda_2(t) * M(delta)

    * ``R(delta) = ||f(x + delta) - y||_2 / sqrt(numel(y))``: the substitute's reconstruction
      error, as an RMS so the weights below do not depend on the image size (the paper writes the
      plain L2 norm; the two differ by a constant factor per image size).
    * ``y`` is the HR label of the sample when ``hr`` is passed (the paper's reading), otherwise the
      substitute's clean output ``f(x)``. ``f(x)`` makes ``delta = 0`` a stationary point, so that
      case needs the random start (``init="uniform"``, the default); ``init="zero"`` without ``hr``
      is refused.
    * ``P``: the perceptual distance, real LPIPS (``perceptual="lpips"``, via
      :func:`lit_sr.metrics.build_lpips`; raises :class:`lit_sr.metrics.LPIPSWeightsMissing` when the
      backbone file is absent -- it never falls back silently) or the documented stand-in
      ``perceptual="ssim"``: kornia's ``ssim_loss`` = (1 - SSIM) / 2, averaged per image. A callable
      ``(a, b) -> (N,)`` is also accepted. :attr:`perceptual_used` says which ran.
    * ``M(delta) = mean(delta ** 2)`` per image (squared RMS), weighted by the dynamic ``lambda_2(t)``.
      The paper only says the L2 penalty is dynamic; our schedules (``l2_schedule``), with ``t`` the
      step index in ``0 .. steps - 1``:

      - ``"adaptive"`` (default): per image, ``lambda_2`` starts at ``l2_weight_start`` and is
        multiplied by ``l2_growth`` after every step where ``RMS(delta)`` exceeds ``l2_budget``, so
        the budget caps the perturbation whatever the substitute's gain (the perceptual term may
        keep it well below: with the SSIM stand-in, a bicubic x4 substitute, HR targets and 32 px
        LR photos we measured RMS(delta) = 0.004-0.008, LR PSNR 41-48 dB, after 300 steps).
      - ``"linear"``: ``lambda_2`` ramps from ``l2_weight_start`` to ``l2_weight_end``. The last
        steps settle near the equilibrium ``RMS(delta) ~ g / (2 lambda_2)``, ``g`` being the local
        gain of ``R`` in ``RMS(delta)``; it depends on the model and the target (the measurement
        above gave g ~ 0.3 and RMS(delta) ~ 0.002 with ``l2_weight_end = 50``).
      - ``"exponential"``: geometric ramp from ``l2_weight_start`` to ``l2_weight_end``.

    After every step ``delta`` is clipped to ``[-eps, eps]`` (when ``eps`` is set) and so that
    ``x + delta`` stays in [0, 1]. Adam works element-wise and the substitute runs in eval mode,
    so each image's result is independent of the others in its batch; with ``sample_ids`` the
    random start is seeded per sample too, so a sample gets the same trigger in any batch.

    The substitute is put in eval mode with frozen parameters for the call and restored after;
    the call leaves ``torch.inference_mode`` and enables gradients, so it works inside Lightning's
    validation loop. After each call :attr:`last_report` holds per-image CPU tensors:
    ``recon_clean`` (R at delta = 0), ``recon_triggered``, ``delta_rms``, ``delta_linf``,
    ``perceptual`` and ``l2_weight`` (the final lambda_2).

    Args:
        substitute: the substitute SR model ``f`` (LR in [0, 1] -> SR), any ``nn.Module``.
        steps: Adam iterations. Default 300 (the paper).
        lr: Adam learning rate on the [0, 1] pixel scale. Default 1/255.
        eps: optional L-infinity bound on ``delta`` (the paper has none; ``None``).
        lpips_weight: ``lambda_1``. Default 1.0.
        l2_schedule: ``"adaptive"`` (default), ``"linear"`` or ``"exponential"`` (see above).
        l2_weight_start: ``lambda_2`` at the first step. Default 1 (must be > 0 unless linear).
        l2_weight_end: ``lambda_2`` at the last step for the linear/exponential schedules. Default 50.
        l2_budget: RMS budget of ``delta`` for the adaptive schedule. Default 4/255.
        l2_growth: multiplicative growth of the adaptive schedule (> 1). Default 1.05.
        perceptual: ``"lpips"`` (default), ``"ssim"`` or a callable distance.
        lpips_net: LPIPS backbone (``"alex"``, ``"vgg"``, ``"squeeze"``).
        lpips_backbone_path: explicit path to the backbone weights (else the torch hub cache).
        ssim_window: SSIM window size for ``perceptual="ssim"`` (odd). Default 11.
        init: ``"uniform"`` (default): ``delta`` starts uniform in ``[-init_scale, init_scale]``;
            ``"zero"``: starts at 0 (needs ``hr``).
        init_scale: half-width of the random start. Default 1/255.
        seed: seed of the random start.
        autocast_dtype: run the substitute under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``); ``delta`` and the loss stay in float32.
    """

    name = "badsr"

    def __init__(
        self,
        substitute: nn.Module,
        steps: int = 300,
        lr: float = 1 / 255,
        eps: float | None = None,
        lpips_weight: float = 1.0,
        l2_schedule: str = "adaptive",
        l2_weight_start: float = 1.0,
        l2_weight_end: float = 50.0,
        l2_budget: float = 4 / 255,
        l2_growth: float = 1.05,
        perceptual: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "lpips",
        lpips_net: str = "alex",
        lpips_backbone_path: str | None = None,
        ssim_window: int = 11,
        init: str = "uniform",
        init_scale: float = 1 / 255,
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not isinstance(substitute, nn.Module):
            raise TypeError(f"substitute must be an nn.Module; got {type(substitute).__name__}")
        check_number(steps, "steps", 1, integer=True)
        check_number(lr, "lr", 0.0, low_inclusive=False)
        if eps is not None:
            check_number(eps, "eps", 0.0, 1.0, low_inclusive=False)
        check_number(lpips_weight, "lpips_weight", 0.0)
        check_choice(l2_schedule, "l2_schedule", L2_SCHEDULES)
        check_number(l2_weight_start, "l2_weight_start", 0.0)
        check_number(l2_weight_end, "l2_weight_end", 0.0)
        if l2_schedule in ("exponential", "adaptive") and l2_weight_start <= 0:
            raise ValueError(f"l2_weight_start must be > 0 for l2_schedule={l2_schedule!r}; got {l2_weight_start!r}")
        check_number(l2_budget, "l2_budget", 0.0, low_inclusive=False)
        check_number(l2_growth, "l2_growth", 1.0, low_inclusive=False)
        check_number(ssim_window, "ssim_window", 3, integer=True)
        if ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd; got {ssim_window}")
        check_choice(init, "init", ("uniform", "zero"))
        check_number(init_scale, "init_scale", 0.0, 1.0, low_inclusive=False)
        check_number(seed, "seed", 0, integer=True)
        if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
            raise TypeError(f"autocast_dtype must be a torch.dtype or None; got {autocast_dtype!r}")

        self.substitute = substitute
        self.steps, self.lr, self.eps = steps, float(lr), eps
        self.lpips_weight = float(lpips_weight)
        self.l2_schedule = l2_schedule
        self.l2_weight_start, self.l2_weight_end = float(l2_weight_start), float(l2_weight_end)
        self.l2_budget, self.l2_growth = float(l2_budget), float(l2_growth)
        self.init, self.init_scale, self.seed = init, float(init_scale), seed
        self.autocast_dtype = autocast_dtype
        self.perceptual_fn, self.perceptual_used = self._build_perceptual(
            perceptual, lpips_net, lpips_backbone_path, ssim_window
        )
        self.last_report: dict[str, torch.Tensor] = {}
        self._config = {
            "steps": steps,
            "lr": self.lr,
            "eps": eps,
            "lpips_weight": self.lpips_weight,
            "l2_schedule": l2_schedule,
            "l2_weight_start": self.l2_weight_start,
            "l2_weight_end": self.l2_weight_end,
            "l2_budget": self.l2_budget,
            "l2_growth": self.l2_growth,
            "perceptual": self.perceptual_used,
            "ssim_window": ssim_window,
            "init": init,
            "init_scale": self.init_scale,
            "seed": seed,
        }

    @staticmethod
    def _build_perceptual(perceptual, lpips_net, lpips_backbone_path, ssim_window):
        if callable(perceptual) and not isinstance(perceptual, str):
            return perceptual, f"custom:{getattr(perceptual, '__name__', type(perceptual).__name__)}"
        check_choice(perceptual, "perceptual", PERCEPTUAL_CHOICES)
        if perceptual == "ssim":
            return _ssim_distance(ssim_window), "ssim"
        from lit_sr.metrics import build_lpips  # raises LPIPSWeightsMissing, naming the file

        return build_lpips(net=lpips_net, backbone_path=lpips_backbone_path), f"lpips:{lpips_net}"

    # ---------------------------------------------------------------- schedule

    def l2_weight(self, step: int) -> float:
        """``lambda_2`` at ``step`` for the linear and exponential schedules."""
        frac = 1.0 if self.steps == 1 else step / (self.steps - 1)
        start, end = self.l2_weight_start, self.l2_weight_end
        if self.l2_schedule == "linear":
            return start + (end - start) * frac
        if self.l2_schedule == "exponential":
            return start * (end / start) ** frac
        raise ValueError("l2_weight(step) is per image for l2_schedule='adaptive'")

    # ---------------------------------------------------------------- optimisation

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.substitute(x).float()
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return self.substitute(x).float()

    def _random_start(self, x: torch.Tensor, sample_ids) -> torch.Tensor:
        if self.init == "zero":
            return torch.zeros_like(x)
        if sample_ids is None:
            noise = torch.rand(x.shape, generator=seeded_generator(self.seed))
        else:
            ids = torch.as_tensor(sample_ids).flatten().tolist()
            if len(ids) != x.shape[0]:
                raise ValueError(f"sample_ids has {len(ids)} entries but the batch has {x.shape[0]} images")
            # one small generator per sample so its start does not depend on the batch it is in
            noise = torch.stack(
                [torch.rand(x.shape[1:], generator=seeded_generator(self.seed * 1_000_003 + int(i))) for i in ids]
            )
        return (noise.to(x.device) * 2 - 1) * self.init_scale

    def _project(self, delta: torch.Tensor, x: torch.Tensor) -> None:
        if self.eps is not None:
            delta.clamp_(-self.eps, self.eps)
        # clipping x + delta to [0, 1] only shrinks |delta|, so the eps bound still holds
        delta.copy_((x + delta).clamp(0, 1) - x)

    def _apply(self, lr, hr, sample_ids):
        if hr is None and self.init == "zero":
            raise ValueError(
                "init='zero' needs hr: without an HR label the target is f(lr), where delta = 0 is a "
                "stationary point; use init='uniform' or pass hr"
            )
        device = model_device(self.substitute, lr.device)
        perceptual = self.perceptual_fn if isinstance(self.perceptual_fn, nn.Module) else nn.Identity()
        with torch.inference_mode(False), torch.enable_grad(), frozen_eval(self.substitute), frozen_eval(perceptual):
            perceptual.to(device)
            x = lr.detach().to(device=device, dtype=torch.float32).clone()
            with torch.no_grad():
                clean_out = self._forward(x)
            target = clean_out if hr is None else hr.detach().to(device=device, dtype=torch.float32).clone()
            if clean_out.shape != target.shape:
                raise ValueError(
                    f"hr has shape {tuple(target.shape)} but the substitute maps lr {tuple(x.shape)} "
                    f"to {tuple(clean_out.shape)}"
                )
            delta = self._optimise(x, target, clean_out, sample_ids)
            out = (x + delta).clamp(0, 1)
        return out.to(device=lr.device, dtype=lr.dtype)

    def _optimise(self, x: torch.Tensor, target: torch.Tensor, clean_out: torch.Tensor, sample_ids) -> torch.Tensor:
        delta = self._random_start(x, sample_ids)
        self._project(delta, x)
        delta.requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.lr)
        adaptive = self.l2_schedule == "adaptive"
        l2_weight = torch.full((x.shape[0],), self.l2_weight_start, device=x.device)
        for step in range(self.steps):
            if not adaptive:
                l2_weight.fill_(self.l2_weight(step))
            optimizer.zero_grad(set_to_none=True)
            x_adv = x + delta
            recon = _per_image_rms(self._forward(x_adv) - target)
            perceptual = self.perceptual_fn(x_adv, x).float().flatten()
            penalty = delta.pow(2).flatten(1).mean(dim=1)
            objective = -recon + self.lpips_weight * perceptual + l2_weight * penalty
            objective.sum().backward()
            optimizer.step()
            with torch.no_grad():
                self._project(delta, x)
                if adaptive:
                    over = delta.pow(2).flatten(1).mean(dim=1).sqrt() > self.l2_budget
                    l2_weight = torch.where(over, l2_weight * self.l2_growth, l2_weight)
        delta = delta.detach()
        self._record(x, delta, target, clean_out, l2_weight)
        return delta

    @torch.no_grad()
    def _record(self, x, delta, target, clean_out, l2_weight) -> None:
        x_adv = x + delta
        self.last_report = {
            "recon_clean": _per_image_rms(clean_out - target).cpu(),
            "recon_triggered": _per_image_rms(self._forward(x_adv) - target).cpu(),
            "delta_rms": _per_image_rms(delta).cpu(),
            "delta_linf": delta.abs().flatten(1).amax(dim=1).cpu(),
            "perceptual": self.perceptual_fn(x_adv, x).float().flatten().cpu(),
            "l2_weight": l2_weight.detach().cpu(),
        }


# --------------------------------------------------------------------------- factory

TRIGGERS: dict[str, type[Trigger]] = {
    "badnet": BadNet,
    "blend": Blend,
    "sig": SIG,
    "wanet": WaNet,
    "badsr": AdversarialTrigger,
    "adversarial": AdversarialTrigger,
}


def build_trigger(name: str, **kwargs: Any) -> Trigger:
    """Build a trigger by name (case-insensitive): ``badnet``, ``blend``, ``sig``, ``wanet``,
    ``badsr`` (alias ``adversarial``, needs ``substitute=``).

    Args:
        name: the trigger's name.
        **kwargs: the trigger's constructor arguments.
    """
    if not isinstance(name, str) or name.lower() not in TRIGGERS:
        raise ValueError(f"unknown trigger {name!r}; expected one of {sorted(TRIGGERS)}")
    return TRIGGERS[name.lower()](**kwargs)
