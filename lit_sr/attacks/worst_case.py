"""Worst-case evaluation of a (robust) SR model: per image, the minimum PSNR over attacks and restarts.

Robust training is judged by an attack stronger than the one it trained against, so that gradient
masking cannot pass for robustness: for every image the SR PSNR kept is the *minimum* over every
evaluation attack and every random restart (and over transfer attacks crafted on another model).
Used by ``lit-sr robust`` (:mod:`lit_sr.jobs.robust.cli`) and the ``robust`` block of
``lit-sr evaluate`` (:mod:`lit_sr.jobs.evaluate.robust`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from lit_sr.attacks.base import Attack
from lit_sr.attacks.ifgsm import IFGSM, PGD
from lit_sr.metrics import psnr

AttackFactory = Callable[[nn.Module, int], Attack]  # (model, restart index) -> attack


def default_eval_attacks(eps: float, train_steps: int = 3, restarts: int = 2) -> dict[str, tuple[AttackFactory, int]]:
    """The evaluation attacks: the target metric (10-step I-FGSM against the HR image, as
    configs/evaluate/robustness_quick.yaml) and PGD with ``max(30, 10 * train_steps)`` steps and
    ``restarts`` random restarts against the clean output (Choi's Eq. 1) and against the HR image.
    Name -> (factory, number of restarts)."""
    strong = max(30, 10 * train_steps)
    return {
        "ifgsm10_hr": (lambda m, r: IFGSM(m, eps=eps, steps=10, reference="hr"), 1),
        f"pgd{strong}_hr": (lambda m, r: PGD(m, eps=eps, steps=strong, reference="hr", seed=r), restarts),
        f"pgd{strong}_clean": (lambda m, r: PGD(m, eps=eps, steps=strong, reference="clean", seed=r), restarts),
    }


def output_psnr(model: nn.Module, lr: torch.Tensor, ref: torch.Tensor, crop_border: int, y_channel: bool) -> torch.Tensor:
    """Per-image PSNR of ``model(lr)`` (clamped to [0, 1]) against ``ref``."""
    with torch.no_grad():
        sr = model(lr).float().clamp(0, 1)
    return psnr(sr, ref, crop_border=crop_border, y_channel=y_channel)


def worst_case_psnr(
    model: nn.Module,
    lr: torch.Tensor,
    hr: torch.Tensor,
    attacks: Mapping[str, tuple[AttackFactory, int]],
    crop_border: int,
    y_channel: bool = True,
    transfer_from: Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image PSNR of ``model`` under each attack, the minimum over restarts, and the worst of all.

    Two metrics per attack: ``<attack>/sr_psnr`` (attacked SR vs clean SR, Choi et al.'s SR PSNR:
    how far the attack moves the output) and ``<attack>/hr_psnr`` (attacked SR vs the HR image).
    ``transfer_from`` adds, per source model, the same attacks crafted on the source and applied
    to ``model`` (named ``<attack>@<source>``): the naive side of naive-vs-adaptive; the
    ``worst/...`` entries take the minimum over white-box and transferred attacks alike.
    """
    with torch.no_grad():
        clean_sr = model(lr).float().clamp(0, 1)
    results: dict[str, torch.Tensor] = {}
    sources = {"": model, **{f"@{k}": v for k, v in (transfer_from or {}).items()}}
    for suffix, source in sources.items():
        for name, (factory, restarts) in attacks.items():
            sr_runs, hr_runs = [], []
            for r in range(restarts):
                adv = factory(source, r)(lr, hr=hr)
                sr_runs.append(output_psnr(model, adv, clean_sr, crop_border, y_channel))
                hr_runs.append(output_psnr(model, adv, hr, crop_border, y_channel))
            results[f"{name}{suffix}/sr_psnr"] = torch.stack(sr_runs).min(dim=0).values
            results[f"{name}{suffix}/hr_psnr"] = torch.stack(hr_runs).min(dim=0).values
    for metric in ("sr_psnr", "hr_psnr"):
        values = [v for k, v in results.items() if k.endswith("/" + metric)]
        results[f"worst/{metric}"] = torch.stack(values).min(dim=0).values
    return results
