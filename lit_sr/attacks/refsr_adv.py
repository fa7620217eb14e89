"""RefSR-Adv (arXiv 2601.01202): PGD on the reference image of a reference-based SR model.

The LR input is left untouched; only the reference is perturbed, under an L_inf budget, to push
the output away from the clean output f(lr, ref), which is computed once and held fixed (the
paper's pseudo ground truth). Also here: the contrasts the paper reports against (uniform noise
of the same budget on the reference, and PGD on the LR input of the same model), and the
query-only case its conclusion leaves open (Square Attack on the reference), all gathered by
:func:`refsr_attack_report`.

RefSR models are called as ``model(lr, ref)``; :class:`FixedReference` and :class:`FixedLR` turn
one into a single-input model, so every single-input attack of :mod:`lit_sr.attacks` runs on the
LR or on the reference side unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_sr.attacks.base import Attack, uniform_like
from lit_sr.attacks.ifgsm import PGD
from lit_sr.attacks.square import SquareAttack
from lit_sr.metrics import psnr, ssim
from lit_sr.runtime import Autocast, autocast_context, autocast_dtype, frozen_eval, model_device
from lit_sr.validation import check_bool, check_choice, check_eps, check_images, check_int, check_positive

LOSS_NAMES = ("l2", "sse", "mse")


def check_pair(lr: torch.Tensor, ref: torch.Tensor) -> None:
    """Raise unless ``lr`` and ``ref`` are [0, 1] image batches with the same number of images."""
    check_images(lr, "lr", value_range=True)
    check_images(ref, "ref", value_range=True)
    if lr.shape[0] != ref.shape[0]:
        raise ValueError(f"lr has {lr.shape[0]} images but ref has {ref.shape[0]}: one reference per LR image")


class FixedReference(nn.Module):
    """``lr -> model(lr, ref)`` with the reference batch fixed: a RefSR model seen from the LR side.

    Args:
        model: the RefSR network.
        ref: the reference batch (one per LR image of the batches it will be called on).
        autocast: ``"none"`` or ``"bf16"`` for the wrapped forward pass; the output is float32.
    """

    def __init__(self, model: nn.Module, ref: torch.Tensor, autocast: Autocast = "none"):
        super().__init__()
        autocast_dtype(autocast)
        self.model, self.autocast = model, autocast
        self.register_buffer("ref", ref.detach(), persistent=False)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.autocast, lr.device):
            return self.model(lr, self.ref.to(lr.device)).float()


class FixedLR(nn.Module):
    """``ref -> model(lr, ref)`` with the LR batch fixed: a RefSR model seen from the reference side.

    Args:
        model: the RefSR network.
        lr: the LR batch.
        autocast: ``"none"`` or ``"bf16"`` for the wrapped forward pass; the output is float32.
    """

    def __init__(self, model: nn.Module, lr: torch.Tensor, autocast: Autocast = "none"):
        super().__init__()
        autocast_dtype(autocast)
        self.model, self.autocast = model, autocast
        self.register_buffer("lr", lr.detach(), persistent=False)

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.autocast, ref.device):
            return self.model(self.lr.to(ref.device), ref).float()


class RefSREnsemble(nn.Module):
    """Several RefSR models as one: ``(lr, ref) -> cat([w_k * f_k(lr, ref)], dim=1)``.

    RefSR-Adv on the ensemble (``RefSRAdv(RefSREnsemble(models), ...)``) optimises one reference
    perturbation against all the models together: its L2 destruction loss on the concatenated
    outputs is ``sqrt(sum_k w_k^2 ||f_k(lr, ref + d) - f_k(lr, ref)||^2)``, so every model's damage
    counts and the gradient is the sum of the models' gradients. With the default equal weights a
    model whose output moves more steers the sign steps more; ``weights`` rebalances (a choice the
    RefSR-Adv paper does not make: it attacks one model at a time).

    Args:
        models: the RefSR networks, each called as ``model(lr, ref)`` with the same scale; all run
            on the device of the inputs.
        weights: one non-negative weight per model (default all 1).
    """

    def __init__(self, models: list[nn.Module] | tuple[nn.Module, ...], weights: list[float] | None = None):
        super().__init__()
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError(f"models: expected a non-empty list of nn.Module, got {models!r}")
        weights = [1.0] * len(models) if weights is None else list(weights)
        if len(weights) != len(models):
            raise ValueError(f"weights: one per model ({len(models)}), got {len(weights)}")
        self.weights = [check_positive(w, f"weights[{i}]") for i, w in enumerate(weights)]
        self.models = nn.ModuleList(models)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        outputs = [w * model(lr, ref).float() for w, model in zip(self.weights, self.models)]
        if len({o.shape for o in outputs}) != 1:
            raise ValueError(f"the models' outputs differ in shape: {[tuple(o.shape) for o in outputs]}")
        return torch.cat(outputs, dim=1)


class RefSRAdv(Attack):
    """Reference-only PGD: maximise ``||f(lr, ref + d) - f(lr, ref)||_2`` subject to ``||d||_inf <= eps``.

    Called as ``ref_adv = atk(lr, ref)``; returns the adversarial reference, float32 on the
    model's device, in [0, 1] and within ``eps`` of ``ref``. ``lr`` is never modified (the attack
    works on a copy, and only the reference is perturbed). Batched: every image of the batch gets
    its own perturbation (the per-image losses are summed, so each gradient is its own image's).

    One step: ``ref <- clip_[0,1](ref0 + clip_[-eps,eps](ref + step_size * sign(grad) - ref0))``.

    Args:
        model: a RefSR network called as ``model(lr, ref)`` (e.g. ``build_arch("ttsr")``).
        eps: L_inf budget on the [0, 1] scale (the paper: 8/255).
        steps: PGD iterations (50).
        step_size: signed step; ``None`` is ``2.5 * eps / steps`` (Madry et al.'s factor, so the
            iterate can cross the ball from a corner of the random start; the paper does not give
            its step).
        random_start: start from uniform noise in [-eps, eps] (the paper's choice). It is
            required: the gradient of ``||f(ref) - f(ref0)||`` is exactly zero at ``ref0``, so a
            zero start never moves; ``random_start=False`` raises.
        loss: ``"l2"`` (the paper's non-squared L2 destruction loss), ``"sse"`` or ``"mse"``;
            the three give the same sign steps per image.
        autocast: ``"none"`` or ``"bf16"`` for the model's forward passes (the perturbation and
            the loss stay float32).
        seed: seed of the random start; ``None`` uses the global generator.
        keep_best: return each image's best iterate (largest loss, the start included) instead
            of the last; costs one more forward pass. With ``atk(lr, ref, start=...)`` this makes an
            attack that is never weaker than its start (the adaptive evaluation of
            :mod:`lit_sr.defenses.refsr` starts from the naive attack's reference).
    """

    name = "refsr_adv"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 50,
        step_size: float | None = None,
        random_start: bool = True,
        *,
        loss: str = "l2",
        autocast: Autocast = "none",
        seed: int | None = None,
        keep_best: bool = False,
    ):
        # Autocast is applied in :meth:`sr` (the two-input call), so the base runs in float32.
        super().__init__(model, check_eps(eps), loss=check_choice(loss, "loss", LOSS_NAMES), seed=seed)
        autocast_dtype(autocast)
        self.autocast_mode: Autocast = autocast
        self.steps = check_int(steps, "steps", 1)
        self.step_size = check_positive(2.5 * self.eps / self.steps if step_size is None else step_size, "step_size")
        self.random_start = check_bool(random_start, "random_start")
        self.keep_best = check_bool(keep_best, "keep_best")
        if not self.random_start:
            raise ValueError(
                "RefSRAdv(random_start=False) cannot move: the gradient of ||f(lr, ref) - f(lr, ref0)|| is "
                "exactly zero at ref = ref0, so every sign step is 0. RefSR-Adv starts from uniform noise."
            )
        self._lr: torch.Tensor | None = None

    def _describe(self) -> dict:
        return {**super()._describe(), "steps": self.steps, "step_size": self.step_size,
                "autocast": self.autocast_mode}

    def sr(self, ref: torch.Tensor) -> torch.Tensor:
        """``f(lr, ref)`` for the LR batch of the current call, float32."""
        if self._lr is None:
            raise RuntimeError("RefSRAdv.sr is only defined during a call atk(lr, ref)")
        with autocast_context(self.autocast_mode, ref.device):
            out = self.model(self._lr, ref)
        return out.float()

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """The adversarial reference batch for ``(lr, ref)``.

        ``start``: an adversarial reference to continue from (projected into the ball) instead of
        the random start, e.g. an attack computed on another model.
        """
        check_pair(lr, ref)
        device = self.device_for(lr)
        self._lr = self.prepare(lr, "lr", device)
        try:
            ref0 = self.prepare(ref, "ref", device)
            target = self.clean_output(ref0)
            if start is not None:
                if start.shape != ref.shape:
                    raise ValueError(f"start must have the reference's shape {tuple(ref.shape)}, got {tuple(start.shape)}")
                x = self.project(start.detach().to(device, torch.float32), ref0)
            else:
                x = self.project(ref0 + uniform_like(ref0, -self.eps, self.eps, self.generator(device)), ref0)
            best, best_loss = x, None
            for _ in range(self.steps):
                loss, grad = self._loss_and_gradient(x, target)
                best, best_loss = self._better(best, best_loss, x, loss)
                x = self.project(x + self.step_size * grad.sign(), ref0)
            if not self.keep_best:
                return x.detach()
            with torch.no_grad():
                best, _ = self._better(best, best_loss, x, self.per_sample_loss(x, target))
            return best.detach()
        finally:
            self._lr = None

    def _loss_and_gradient(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss at ``x`` and the gradient of their sum w.r.t. ``x``, from one forward pass."""
        x = x.detach().requires_grad_(True)
        loss = self.per_sample_loss(x, target)
        return loss.detach(), torch.autograd.grad(loss.sum(), x)[0]

    def _better(self, best, best_loss, x, loss):
        """Per image, the iterate with the larger loss (only tracked with ``keep_best``)."""
        if not self.keep_best:
            return best, best_loss
        if best_loss is None:
            return x.detach(), loss
        improved = loss > best_loss
        return torch.where(improved.view(-1, 1, 1, 1), x.detach(), best), torch.where(improved, loss, best_loss)


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` plus uniform noise in [-eps, eps], clipped to [0, 1] (the random baseline of the same budget)."""
    eps = check_eps(eps)
    return (x + uniform_like(x, -eps, eps, generator)).clamp(0, 1)


# --------------------------------------------------------------------------- the report


def _damage(sr_adv, sr_clean, hr, crop_border, y_channel) -> dict[str, torch.Tensor]:
    out = {
        "sr_psnr": psnr(sr_adv, sr_clean, crop_border=crop_border, y_channel=y_channel),
        "sr_ssim": ssim(sr_adv, sr_clean, crop_border=crop_border, y_channel=y_channel),
    }
    if hr is not None:
        out["hr_psnr"] = psnr(sr_adv, hr, crop_border=crop_border, y_channel=y_channel)
        out["hr_ssim"] = ssim(sr_adv, hr, crop_border=crop_border, y_channel=y_channel)
    return out


@torch.no_grad()
def refsr_output(model: nn.Module, lr: torch.Tensor, ref: torch.Tensor, autocast: Autocast = "none") -> torch.Tensor:
    """``model(lr, ref)`` without gradient, in float32 and clamped to [0, 1] (what every report row measures)."""
    with autocast_context(autocast, lr.device):
        return model(lr, ref).float().clamp(0, 1)


def refsr_attack_report(
    model: nn.Module,
    lr: torch.Tensor,
    ref: torch.Tensor,
    hr: torch.Tensor | None = None,
    *,
    eps: float = 8 / 255,
    steps: int = 50,
    step_size: float | None = None,
    crop_border: int = 4,
    y_channel: bool = True,
    square_queries: int = 0,
    autocast: Autocast = "none",
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-image metrics of RefSR-Adv and of its contrasts on one batch, float64 ``(N,)`` tensors on the CPU.

    Rows (outer keys):
        ``clean``: ``hr_psnr``, ``hr_ssim`` of the clean output (with ``hr``).
        ``refsr_adv``: RefSR-Adv on the reference.
        ``ref_noise``: uniform noise in [-eps, eps] on the reference (the random baseline).
        ``lr_pgd``: PGD (random start, 2.5 eps/steps) on the LR input, reference clean: the
            single-image attack on the same model, same budget and steps.
        ``ref_square``: the query-only Square Attack on the reference (``square_queries`` > 0).
    Columns: ``sr_psnr``/``sr_ssim`` (vs the clean output: the paper's damage), ``hr_psnr``/
    ``hr_ssim`` (vs HR), and the stealth of what was perturbed: ``ref_psnr`` (adversarial vs clean
    reference; the paper keeps it above 35 dB) or ``lr_psnr``; the square row adds ``queries``.

    PSNR/SSIM follow :mod:`lit_sr.metrics` (8-bit, ``crop_border`` on the SR side, Y channel by
    default as published RefSR tables); the stealth PSNR is RGB without a crop.

    Args:
        model: the RefSR network ``model(lr, ref)``; run frozen in eval mode, restored afterwards.
        lr, ref, hr: batches in [0, 1]; ``hr`` optional.
        eps, steps, step_size: the budget and PGD schedule shared by RefSR-Adv and the LR attack.
        crop_border: SR-side border crop (the scale).
        y_channel: SR-side metrics on BT.601 Y.
        square_queries: query budget of the Square Attack row (0 leaves the row out).
        autocast: ``"none"`` or ``"bf16"`` for every forward pass.
        seed: seed of the random starts and the noise.
    """
    check_pair(lr, ref)
    crop_border = check_int(crop_border, "crop_border", 0)
    square_queries = check_int(square_queries, "square_queries", 0)
    device = model_device(model, lr.device)
    lr, ref = lr.to(device).float(), ref.to(device).float()
    hr = None if hr is None else hr.to(device).float()
    rows: dict[str, dict[str, torch.Tensor]] = {}
    with frozen_eval(model):
        sr_clean = refsr_output(model, lr, ref, autocast)
        if hr is not None:
            rows["clean"] = {"hr_psnr": psnr(sr_clean, hr, crop_border=crop_border, y_channel=y_channel),
                             "hr_ssim": ssim(sr_clean, hr, crop_border=crop_border, y_channel=y_channel)}
        candidates = {
            "refsr_adv": RefSRAdv(model, eps, steps, step_size, autocast=autocast, seed=seed)(lr, ref),
            "ref_noise": uniform_noise(ref, eps, torch.Generator(device=device).manual_seed(seed)),
        }
        if square_queries:
            square = SquareAttack(FixedLR(model, lr, autocast), eps, n_queries=square_queries, seed=seed)
            candidates["ref_square"] = square(ref)
        for name, ref_adv in candidates.items():
            rows[name] = _damage(refsr_output(model, lr, ref_adv, autocast), sr_clean, hr, crop_border, y_channel)
            rows[name]["ref_psnr"] = psnr(ref_adv, ref)
        if square_queries:
            rows["ref_square"]["queries"] = torch.full((lr.shape[0],), float(square_queries + 1), dtype=torch.float64)
        pgd_step = 2.5 * eps / steps if step_size is None else step_size
        lr_adv = PGD(FixedReference(model, ref, autocast), eps, steps, pgd_step, loss="l2", seed=seed)(lr)
        rows["lr_pgd"] = _damage(refsr_output(model, lr_adv, ref, autocast), sr_clean, hr, crop_border, y_channel)
        rows["lr_pgd"]["lr_psnr"] = psnr(lr_adv, lr)
    return {row: {k: v.detach().double().cpu() for k, v in cols.items()} for row, cols in rows.items()}
