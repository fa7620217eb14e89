"""BadSR's adversarial trigger (Guo et al., arXiv 2505.15308, Sec. IV-C), built on the attack base.

The trigger is an attack on the substitute SR model: an optimised per-image perturbation of the LR
input that maximises the substitute's reconstruction error while staying perceptually close. It is
both an :class:`~lit_sr.attacks.base.Attack` (model handling, autocast, the per-sample loss) and a
:class:`~lit_sr.poison.trigger_base.Trigger` (the ``trigger(lr, hr, sample_ids)`` call and
:meth:`config` for cache keys). Importable as ``lit_sr.poison.AdversarialTrigger`` and
``lit_sr.poison.triggers.AdversarialTrigger`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import nn

from lit_sr.attacks.base import Attack
from lit_sr.metrics import LpipsNet, build_lpips
from lit_sr.poison.trigger_base import Trigger, check_trigger_batch, seeded_generator
from lit_sr.runtime import Autocast, frozen_eval, model_device
from lit_sr.validation import check_choice, check_int, check_module, check_number

Perceptual = Literal["lpips", "ssim"]
L2Schedule = Literal["linear", "exponential", "adaptive"]
Init = Literal["uniform", "zero"]
PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PERCEPTUAL_CHOICES: tuple[str, ...] = get_args(Perceptual)
L2_SCHEDULES: tuple[str, ...] = get_args(L2Schedule)
INIT_CHOICES: tuple[str, ...] = get_args(Init)


def _per_image_rms(x: torch.Tensor) -> torch.Tensor:
    # epsilon keeps the gradient of the norm finite when x is exactly 0 (e.g. f(x) vs f(x))
    return (x.float().pow(2).flatten(1).mean(dim=1) + 1e-12).sqrt()


def rms_distance(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``R``: the RMS of ``sr - ref`` per image, shape ``(N,)`` (the trigger's attack loss)."""
    return _per_image_rms(sr - ref)


def _ssim_distance(window: int) -> PerceptualFn:
    from kornia.losses import ssim_loss  # kornia is only needed for this stand-in

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ssim_loss(a, b, window_size=window, max_val=1.0, reduction="none").flatten(1).mean(dim=1)

    return distance


class AdversarialTrigger(Attack, Trigger):
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

    Built on :class:`lit_sr.attacks.base.Attack` (the substitute is the attacked model, ``R`` its
    per-sample loss): for the call the substitute (and the LPIPS network) is put in eval mode
    with frozen parameters and restored after; the call leaves ``torch.inference_mode`` and
    enables gradients, so it works inside Lightning's validation loop. After each call :attr:`last_report` holds per-image CPU tensors:
    ``recon_clean`` (R at delta = 0), ``recon_triggered``, ``delta_rms``, ``delta_linf``,
    ``perceptual`` and ``l2_weight`` (the final lambda_2).

    Args:
        substitute: the substitute SR model ``f`` (LR in [0, 1] -> SR), any ``nn.Module``.
        steps: Adam iterations. Default 300 (the paper).
        lr: Adam learning rate on the [0, 1] pixel scale. Default 1/255.
        eps: optional L-infinity bound on ``delta`` in (0, 1] (the paper has none; ``None``, which
            the :class:`~lit_sr.attacks.base.Attack` base holds as 1: on [0, 1] images that
            bound never binds).
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
        autocast: ``"none"`` (float32, default) or ``"bf16"``: the substitute runs under bf16
            autocast; ``delta`` and the loss stay in float32 (:data:`lit_sr.runtime.Autocast`).
    """

    name = "badsr"

    def __init__(
        self,
        substitute: nn.Module,
        steps: int = 300,
        lr: float = 1 / 255,
        eps: float | None = None,
        lpips_weight: float = 1.0,
        l2_schedule: L2Schedule = "adaptive",
        l2_weight_start: float = 1.0,
        l2_weight_end: float = 50.0,
        l2_budget: float = 4 / 255,
        l2_growth: float = 1.05,
        perceptual: Perceptual | PerceptualFn = "lpips",
        lpips_net: LpipsNet = "alex",
        lpips_backbone_path: str | None = None,
        ssim_window: int = 11,
        init: Init = "uniform",
        init_scale: float = 1 / 255,
        seed: int = 0,
        autocast: Autocast = "none",
    ):
        check_module(substitute, "substitute", "the substitute SR network")
        self._check_settings(steps, lr, eps, lpips_weight, l2_schedule, l2_weight_start, l2_weight_end,
                             l2_budget, l2_growth, ssim_window, init, init_scale, seed)
        # eps=None is held as 1: delta is clipped so that x + delta stays in [0, 1], so |delta| <= 1.
        Attack.__init__(self, substitute, 1.0 if eps is None else eps, loss=rms_distance, autocast=autocast,
                        eot_samples=1, seed=seed)
        Trigger.__init__(self)
        self.steps, self.lr = steps, float(lr)
        self.lpips_weight = float(lpips_weight)
        self.l2_schedule = l2_schedule
        self.l2_weight_start, self.l2_weight_end = float(l2_weight_start), float(l2_weight_end)
        self.l2_budget, self.l2_growth = float(l2_budget), float(l2_growth)
        self.init, self.init_scale = init, float(init_scale)
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
    def _check_settings(steps, lr, eps, lpips_weight, l2_schedule, l2_weight_start, l2_weight_end,
                        l2_budget, l2_growth, ssim_window, init, init_scale, seed) -> None:
        check_int(steps, "steps", 1)
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
        check_int(ssim_window, "ssim_window", 3)
        if ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd; got {ssim_window}")
        check_choice(init, "init", INIT_CHOICES)
        check_number(init_scale, "init_scale", 0.0, 1.0, low_inclusive=False)
        check_int(seed, "seed", 0)

    @staticmethod
    def _build_perceptual(perceptual, lpips_net, lpips_backbone_path, ssim_window) -> tuple[PerceptualFn, str]:
        if callable(perceptual) and not isinstance(perceptual, str):
            return perceptual, f"custom:{getattr(perceptual, '__name__', type(perceptual).__name__)}"
        check_choice(perceptual, "perceptual", PERCEPTUAL_CHOICES)
        if perceptual == "ssim":
            return _ssim_distance(ssim_window), "ssim"
        return build_lpips(net=lpips_net, backbone_path=lpips_backbone_path), f"lpips:{lpips_net}"

    @property
    def substitute(self) -> nn.Module:
        """The substitute SR model ``f`` (the attack's model)."""
        return self.model

    def _describe(self) -> dict:
        return dict(self._config)  # the repr shows the trigger's settings, as for every trigger

    @contextmanager
    def attack_mode(self) -> Iterator[None]:
        """The attack's mode (frozen eval-mode substitute, autograd on), and a frozen LPIPS network."""
        perceptual = self.perceptual_fn if isinstance(self.perceptual_fn, nn.Module) else nn.Identity()
        with super().attack_mode(), frozen_eval(perceptual):
            yield

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

    def forward(
        self,
        lr: torch.Tensor,
        hr: torch.Tensor | None = None,
        sample_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """The triggered batch ``x + delta`` (see :meth:`lit_sr.poison.trigger_base.Trigger.__call__`)."""
        check_trigger_batch(lr, hr)
        if hr is None and self.init == "zero":
            raise ValueError(
                "init='zero' needs hr: without an HR label the target is f(lr), where delta = 0 is a "
                "stationary point; use init='uniform' or pass hr"
            )
        device = model_device(self.model, lr.device)
        if isinstance(self.perceptual_fn, nn.Module):
            self.perceptual_fn.to(device)
        x = self.prepare(lr, "lr", device, check_range=False)
        clean_out = self.clean_output(x)
        target = clean_out if hr is None else self.prepare(hr, "hr", device, check_range=False)
        if clean_out.shape != target.shape:
            raise ValueError(
                f"hr has shape {tuple(target.shape)} but the substitute maps lr {tuple(x.shape)} "
                f"to {tuple(clean_out.shape)}"
            )
        delta = self._optimise(x, target, clean_out, sample_ids)
        out = (x + delta).clamp(0, 1)
        return out.to(device=lr.device, dtype=lr.dtype)

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
        # In place on the leaf ``delta`` (Adam holds it). With eps=None (held as 1) the first clamp
        # never changes the result: whatever it cuts, the [0, 1] clip below would cut the same way.
        delta.clamp_(-self.eps, self.eps)
        # clipping x + delta to [0, 1] only shrinks |delta|, so the eps bound still holds
        delta.copy_((x + delta).clamp(0, 1) - x)

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
            recon = self.per_sample_loss(x_adv, target)
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
            "recon_triggered": self.per_sample_loss(x_adv, target).cpu(),
            "delta_rms": _per_image_rms(delta).cpu(),
            "delta_linf": delta.abs().flatten(1).amax(dim=1).cpu(),
            "perceptual": self.perceptual_fn(x_adv, x).float().flatten().cpu(),
            "l2_weight": l2_weight.detach().cpu(),
        }
