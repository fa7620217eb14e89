"""Per-image sign-gradient attacks of Choi et al. (ICCV 2019): I-FGSM, PGD and the targeted attack."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from lit_sr.attacks.base import Attack, LossFn, LossName, uniform_like
from lit_sr.attacks.registry import register_attack
from lit_sr.runtime import Autocast
from lit_sr.validation import check_bool, check_choice, check_eps, check_int, check_positive

# What the output is pushed away from: the clean output f(X0) (the paper's Eq. 1) or the HR image.
Reference = Literal["clean", "hr"]
REFERENCES: tuple[str, ...] = get_args(Reference)


def _zero_gradient_error(cls_name: str) -> ValueError:
    return ValueError(
        f"{cls_name}(reference='clean', random_start=False) cannot move: the gradient of "
        "||f(X) - f(X0)|| is exactly zero at X = X0, so every sign step is 0. Use random_start=True "
        "(e.g. PGD) or reference='hr' with the HR image (the official code's loss)."
    )


class SignGradientAttack(Attack):
    """Shared loop of the I-FGSM family: ``steps`` signed steps, each followed by the projection.

    One step is Eq. (2)-(3) of the paper::

        X~ = clip_[0,1](X_n + direction * step_size * sign(grad L(X_n)) * M)
        X_{n+1} = clip_[-eps,eps](X~ - X0) + X0

    with ``direction = +1`` to degrade the output, ``-1`` to pull it towards a target (Eq. 11),
    and ``M`` the attack mask (all ones unless a subclass restricts it).

    Args:
        model, eps, loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`.
        steps: number of iterations T (>= 1).
        step_size: size of each signed step; ``None`` means ``default_step_factor * eps / steps``.
        random_start: start from ``X0`` plus uniform noise in [-eps, eps] (off in the official code).
    """

    default_step_factor = 1.0

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 50,
        step_size: float | None = None,
        random_start: bool = False,
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(model, eps, loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed)
        self.steps = check_int(steps, "steps", 1)
        if step_size is None:
            step_size = self.default_step_factor * self.eps / self.steps
        self.step_size = check_positive(step_size, "step_size")
        self.random_start = check_bool(random_start, "random_start")

    def _describe(self) -> dict:
        return {
            **super()._describe(),
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
        }

    def iterate(
        self,
        x0: torch.Tensor,
        ref: torch.Tensor,
        direction: float = 1.0,
        input_mask: torch.Tensor | None = None,
        loss_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the ``steps`` sign steps from ``x0`` against ``ref`` and return the final input."""
        x = x0
        if self.random_start:
            noise = uniform_like(x0, -self.eps, self.eps, self.generator(x0.device))
            if input_mask is not None:
                noise = noise * input_mask
            x = self.project(x0 + noise, x0)
        for _ in range(self.steps):
            step = self.input_gradient(x, ref, loss_weight).sign()
            if input_mask is not None:
                step = step * input_mask
            x = self.project(x + direction * self.step_size * step, x0)
        return x.detach()


@register_attack
class IFGSM(SignGradientAttack):
    """The basic attack of Choi et al. (Sec. 3.1, Eq. 1-3): I-FGSM on the LR input of an SR model.

    Called as ``atk(lr)`` or ``atk(lr, hr=hr)``; returns the adversarial LR batch, float32 on the
    model's device, in [0, 1] and within ``eps`` of ``lr`` in L_inf.

    Args:
        model: the SR network (any ``nn.Module`` mapping LR to SR).
        eps: L_inf budget alpha in (0, 1] (the paper uses 1/255 ... 32/255).
        steps: iterations T (the paper uses 50).
        step_size: ``None`` means ``eps / steps`` (the paper's alpha/T).
        random_start: add uniform noise in [-eps, eps] before the first step.
        reference: ``"clean"`` maximises the distance to the clean output f(X0) (the paper's
            Eq. 1; it needs ``random_start=True`` since its gradient is zero at X0, so that
            combination raises); ``"hr"`` maximises the distance to the HR image passed as ``hr``
            (the official code).
        loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`.

    With ``reference="clean"`` an ``hr`` argument is accepted and ignored, so that callers can
    pass the same arguments to every attack.
    """

    name = "ifgsm"
    plain = True

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 50,
        step_size: float | None = None,
        random_start: bool = False,
        reference: Reference = "clean",
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(
            model, eps, steps, step_size, random_start,
            loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed,
        )  # fmt: skip
        self.reference = check_choice(reference, "reference", REFERENCES)
        if self.reference == "clean" and not self.random_start:
            raise _zero_gradient_error(type(self).__name__)

    def _describe(self) -> dict:
        return {**super()._describe(), "reference": self.reference}

    def reference_output(self, x0: torch.Tensor, hr: torch.Tensor | None) -> torch.Tensor:
        """The image the output is pushed away from: f(X0) or the HR batch."""
        if self.reference == "clean":
            return self.clean_output(x0)
        if hr is None:
            raise ValueError(f"{type(self).__name__}(reference='hr') needs the HR batch: call atk(lr, hr=hr)")
        hr = self.prepare(hr, "hr", x0.device)
        if hr.shape[0] != x0.shape[0]:
            raise ValueError(f"hr has {hr.shape[0]} images but lr has {x0.shape[0]}")
        return hr

    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial LR batch for ``lr`` (and ``hr`` when ``reference="hr"``)."""
        x0 = self.prepare(lr, "lr", self.device_for(lr))
        ref = self.reference_output(x0, hr)
        return self.iterate(x0, ref, direction=1.0)


@register_attack
class PGD(IFGSM):
    """:class:`IFGSM` with a random start (on by default) and steps of ``2.5 * eps / steps``.

    The 2.5 factor is Madry et al.'s choice: the iterate can cross the whole eps-ball even from a
    corner of the random start. Arguments as for :class:`IFGSM`; ``reference="clean"`` (the
    paper's Eq. 1) is the default and works because of the random start.
    """

    name = "pgd"
    default_step_factor = 2.5

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 50,
        step_size: float | None = None,
        random_start: bool = True,
        reference: Reference = "clean",
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(
            model, eps, steps, step_size, random_start, reference,
            loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed,
        )  # fmt: skip


@register_attack
class FastFGSM(IFGSM):
    """One FGSM step of ``step_factor * eps`` from a uniform random start in [-eps, eps].

    The "fast" adversarial training attack of Wong et al. ("Fast is better than free", ICLR 2020):
    one forward/backward per batch, so robust fine-tuning (``RobustFinetuneModule(attack="fast")``)
    costs about two clean steps. Being plain, it also runs in any report's ``attacks`` block.

    Args:
        model: the SR network.
        eps: L_inf budget in (0, 1].
        step_factor: the step in units of eps (Wong et al. use 1.25: the step can leave the
            random start's corner and still reach the boundary of the ball).
        reference: ``"clean"`` (Eq. 1; fine with the random start) or ``"hr"`` (the HR image).
        loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`.
    """

    name = "fast"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        step_factor: float = 1.25,
        reference: Reference = "clean",
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        self.step_factor = check_positive(step_factor, "step_factor")
        super().__init__(
            model, eps, 1, self.step_factor * check_eps(eps), True, reference,
            loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed,
        )  # fmt: skip


@register_attack
class TargetedAttack(SignGradientAttack):
    """The targeted attack of Choi et al. (Sec. 5.1, Eq. 11): pull f(X) towards a target HR image.

    Called as ``atk(lr, target=target_hr)``; the sign step descends the loss between the output
    and ``target`` (the official code flips the sign and uses the target as the loss reference).

    Args:
        model: the SR network.
        eps: L_inf budget in (0, 1] (the paper's demonstration uses 16/255).
        steps: iterations T.
        step_size: ``None`` means ``eps / steps``.
        random_start: uniform start in [-eps, eps] (not needed: the gradient towards a target
            is not zero at X0).
        loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`.
    """

    name = "targeted"

    def forward(self, lr: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial LR batch whose output approaches ``target`` (same shape as the SR output)."""
        if target is None:
            raise ValueError("TargetedAttack needs the target HR batch: call atk(lr, target=target_hr)")
        x0 = self.prepare(lr, "lr", self.device_for(lr))
        target = self.prepare(target, "target", x0.device)
        if target.shape[0] not in (1, x0.shape[0]):
            raise ValueError(f"target has {target.shape[0]} images; expected 1 or {x0.shape[0]} (as lr)")
        target = target.expand(x0.shape[0], *target.shape[1:])
        return self.iterate(x0, target, direction=-1.0)
