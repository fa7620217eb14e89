"""Worst-case evaluation of a (robust) SR model: per image, the minimum PSNR over attacks and restarts.

Robust training is judged by an attack stronger than the one it trained against, so that gradient
masking cannot pass for robustness: for every image the SR PSNR kept is the *minimum* over every
evaluation attack and every random restart (and over transfer attacks crafted on another model).
Used by ``lit-sr robust`` (:mod:`lit_sr.jobs.robust.cli`) and the ``robust`` block of
``lit-sr evaluate`` (:mod:`lit_sr.jobs.evaluate.robust`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lit_sr.attacks.base import Attack
from lit_sr.attacks.registry import plain_kinds
from lit_sr.attacks.spec import AttackRunner, AttackSpec, parse_attacks
from lit_sr.errors import ConfigError
from lit_sr.metrics import psnr
from lit_sr.runtime import Autocast

AttackFactory = Callable[[nn.Module, int], Attack]  # (model, restart index) -> attack


def default_eval_block(train_steps: int = 3) -> dict[str, dict[str, Any]]:
    """The evaluation attacks as an ``attacks`` block: the target metric (10-step I-FGSM against the HR
    image, as configs/evaluate/robustness_quick.yaml) and PGD with ``max(30, 10 * train_steps)`` steps
    against the HR image and against the clean output (Choi's Eq. 1)."""
    strong = max(30, 10 * train_steps)
    return {
        "ifgsm10_hr": {"attack": "ifgsm", "steps": 10, "reference": "hr"},
        f"pgd{strong}_hr": {"attack": "pgd", "steps": strong, "reference": "hr"},
        f"pgd{strong}_clean": {"attack": "pgd", "steps": strong, "reference": "clean"},
    }


def restart_factories(specs: Sequence[AttackSpec], eps: float, restarts: int, seed: int = 0,
                      autocast: Autocast = "none") -> dict[str, tuple[AttackFactory, int]]:
    """label -> ((model, restart) -> attack, number of runs), built through the attack registry.

    An attack with a random start runs ``restarts`` times with seeds ``seed, seed + 1, ...``; one
    without (``random_start`` false) runs once, since every run would be the same.
    """
    out = {}
    for spec in specs:
        def factory(model: nn.Module, r: int, spec: AttackSpec = spec) -> Attack:
            return AttackRunner(spec, model, eps, seed=seed + r, autocast=autocast).attack

        random = bool(getattr(factory(nn.Identity(), 0), "random_start", True))
        out[spec.label] = (factory, restarts if random else 1)
    return out


def default_eval_attacks(eps: float, train_steps: int = 3, restarts: int = 2,
                         attacks: Mapping[str, Mapping | None] | None = None) -> dict[str, tuple[AttackFactory, int]]:
    """The evaluation attacks of ``lit-sr robust``: ``attacks`` (an ``attacks`` block of any plain
    registered attacks) or :func:`default_eval_block`, with ``restarts`` random restarts each."""
    block = default_eval_block(train_steps) if attacks is None else attacks
    specs = parse_attacks(block, "attacks")
    for spec in specs:
        if spec.kind not in plain_kinds():
            raise ConfigError(f"attacks.{spec.label}: {spec.kind!r} is not a per-image attack; the worst case "
                              f"takes one of {list(plain_kinds())}")
    return restart_factories(specs, eps, restarts)


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
