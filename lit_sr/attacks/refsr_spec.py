"""Configured attacks on reference-based SR models: which side each perturbs, how it is built and measured.

An ``attacks`` block for a RefSR model (the :class:`~callbacks.adversarial_eval.AdversarialEvalCallback`
block, or the RefSR report's) names attacks of two sides:

* on the **reference** (LR clean): ``refsr_adv`` (:class:`~lit_sr.attacks.refsr_adv.RefSRAdv`,
  white-box PGD) and ``ref_square`` (:class:`~lit_sr.attacks.square.SquareAttack` on the
  reference through :class:`~lit_sr.attacks.refsr_adv.FixedLR`, query-only);
* on the **LR input** (reference clean): every plain kind of :mod:`lit_sr.attacks.spec`
  (``ifgsm``, ``pgd``, ``square``) run on :class:`~lit_sr.attacks.refsr_adv.FixedReference`,
  the single-image attack on the same model, for contrast.

The label is the kind unless the parameters hold ``attack: <kind>``, as in :func:`parse_attacks`.
Metrics per image (float64, CPU): the stealth of what was perturbed (``ref_psnr`` or
``lr_psnr``, RGB, no crop), ``sr_psnr``/``sr_ssim`` (attacked vs clean output), ``hr_psnr``/
``hr_ssim`` and ``clean_hr_psnr`` (vs ground truth), all SR-side ones with ``crop_border`` and
``y_channel`` as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from lit_sr.attacks.refsr_adv import FixedLR, FixedReference, RefSRAdv, check_pair
from lit_sr.attacks.registry import plain_kinds
from lit_sr.attacks.spec import AttackRunner, AttackSpec, init_params, parse_attacks
from lit_sr.attacks.square import SquareAttack
from lit_sr.errors import ConfigError
from lit_sr.metrics import psnr, ssim
from lit_sr.runtime import Autocast, autocast_context, autocast_dtype, frozen_eval

RefKind = Literal["refsr_adv", "ref_square"]
REF_ATTACKS: dict[str, type] = {"refsr_adv": RefSRAdv, "ref_square": SquareAttack}
REF_METRIC_KEYS = ("ref_psnr", "sr_psnr", "sr_ssim", "hr_psnr", "hr_ssim", "clean_hr_psnr")
LR_METRIC_KEYS = ("lr_psnr", "sr_psnr", "sr_ssim", "hr_psnr", "hr_ssim", "clean_hr_psnr")


@dataclass(frozen=True)
class RefSRAttackSpec:
    """One configured attack on a RefSR model.

    Args:
        label: the name in metric keys (``attack/<label>/eps8/sr_psnr``).
        kind: ``refsr_adv``, ``ref_square`` or a plain LR kind (``ifgsm``, ``pgd``, ``square``).
        kwargs: constructor arguments other than ``model`` and ``eps``.
        lr_spec: for an LR-side kind, the :class:`~lit_sr.attacks.spec.AttackSpec` it runs.
    """

    label: str
    kind: str
    kwargs: dict = field(default_factory=dict)
    lr_spec: AttackSpec | None = None

    @property
    def side(self) -> Literal["ref", "lr"]:
        """What the attack perturbs."""
        return "lr" if self.lr_spec is not None else "ref"

    def metric_keys(self) -> tuple[str, ...]:
        return REF_METRIC_KEYS if self.side == "ref" else LR_METRIC_KEYS


def ref_attack_kind(label: str, params: Mapping | None) -> str:
    """The kind an ``attacks`` entry names (its ``attack:`` key, else its label)."""
    return params.get("attack", label) if isinstance(params, Mapping) else label


def parse_refsr_attacks(attacks: Mapping[str, Mapping | None], where: str = "attacks") -> list[RefSRAttackSpec]:
    """Validate a RefSR ``attacks`` block; every attack is built once on a dummy model so a bad value fails here."""
    if not isinstance(attacks, Mapping) or not attacks:
        raise ConfigError(f"{where}: expected a non-empty mapping label -> parameters, e.g. {{refsr_adv: {{steps: 10}}}}")
    specs = []
    for label, params in attacks.items():
        kind = ref_attack_kind(label, params)
        here = f"{where}.{label}"
        if kind in REF_ATTACKS:
            specs.append(RefSRAttackSpec(label, kind, _ref_kwargs(kind, params, here)))
        elif kind in plain_kinds():
            lr_spec = parse_attacks({label: params}, where)[0]
            specs.append(RefSRAttackSpec(label, kind, dict(lr_spec.kwargs), lr_spec))
        else:
            raise ConfigError(
                f"{here}: {kind!r} cannot run on a RefSR model; expected one of {sorted(REF_ATTACKS)} (on the "
                f"reference) or {list(plain_kinds())} (on the LR input, reference held fixed)"
            )
    return specs


def _ref_kwargs(kind: str, params: Mapping | None, here: str) -> dict:
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{here}: expected a mapping of parameters, got {params!r}")
    kwargs = {k: v for k, v in (params or {}).items() if k != "attack"}
    if "eps" in kwargs:
        raise ConfigError(f"{here}.eps: eps comes from the eps list, not from the attack's parameters")
    allowed = [p for p in init_params(REF_ATTACKS[kind]) if p != "reference"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{here}: unknown parameter(s) {unknown} for {kind}; expected some of {allowed}")
    try:
        REF_ATTACKS[kind](nn.Identity(), eps=8 / 255, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{here}: {exc}") from None
    return kwargs


@torch.no_grad()
def refsr_predict(model: nn.Module, lr: torch.Tensor, ref: torch.Tensor, autocast: Autocast = "none") -> torch.Tensor:
    """``model(lr, ref)`` in eval mode without gradient, clamped to [0, 1]; the model's mode is restored."""
    with frozen_eval(model), autocast_context(autocast, lr.device):
        return model(lr, ref).float().clamp(0, 1)


class RefSRAttackRunner:
    """One configured attack at one eps against one RefSR model: build it, run it on a batch, measure.

    Args:
        spec: the attack (:func:`parse_refsr_attacks`).
        model: the RefSR network ``model(lr, ref)``.
        eps: L_inf budget on the [0, 1] scale.
        seed: the attack's seed unless its parameters set one.
        autocast: ``"none"`` or ``"bf16"`` for the forward passes unless the parameters set it.
        crop_border, y_channel: SR-side metric convention.
    """

    def __init__(self, spec: RefSRAttackSpec, model: nn.Module, eps: float, *, seed: int | None = 0,
                 autocast: Autocast = "none", crop_border: int = 0, y_channel: bool = False):
        autocast_dtype(autocast, "RefSRAttackRunner.autocast")
        self.spec, self.model, self.eps, self.seed, self.autocast = spec, model, eps, seed, autocast
        self.crop_border, self.y_channel = crop_border, y_channel

    def perturb(self, lr: torch.Tensor, ref: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """The adversarial reference (reference-side kinds) or adversarial LR (LR-side kinds) of a batch.

        ``hr`` is needed by LR-side attacks configured with ``reference: hr`` (the ifgsm default).
        """
        check_pair(lr, ref)
        kwargs = dict(self.spec.kwargs)
        kwargs.setdefault("seed", self.seed)
        autocast = kwargs.pop("autocast", self.autocast)
        if self.spec.kind == "refsr_adv":
            return RefSRAdv(self.model, self.eps, autocast=autocast, **kwargs)(lr, ref)
        if self.spec.kind == "ref_square":
            return SquareAttack(FixedLR(self.model, lr, autocast), self.eps, **kwargs)(ref)
        runner = AttackRunner(self.spec.lr_spec, FixedReference(self.model, ref, autocast), self.eps,
                              seed=self.seed, autocast="none")
        return runner.attack(lr) if hr is None else runner.attack(lr, hr=hr)

    def run(self, lr: torch.Tensor, ref: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Attack an ``(N, 3, h, w)`` / ``(N, 3, Hr, Wr)`` batch; return the perturbed input and per-image metrics."""
        adv = self.perturb(lr, ref, hr)
        on_ref = self.spec.side == "ref"
        clean = refsr_predict(self.model, lr, ref, self.autocast)
        attacked = refsr_predict(self.model, lr, adv, self.autocast) if on_ref else \
            refsr_predict(self.model, adv, ref, self.autocast)
        hr = hr.to(clean.device).float()
        kw = {"crop_border": self.crop_border, "y_channel": self.y_channel}
        metrics = {
            "ref_psnr" if on_ref else "lr_psnr": psnr(adv, (ref if on_ref else lr).to(adv.device)),
            "sr_psnr": psnr(attacked, clean, **kw),
            "sr_ssim": ssim(attacked, clean, **kw),
            "hr_psnr": psnr(attacked, hr, **kw),
            "hr_ssim": ssim(attacked, hr, **kw),
            "clean_hr_psnr": psnr(clean, hr, **kw),
        }
        return adv, {k: v.detach().double().cpu() for k, v in metrics.items()}
