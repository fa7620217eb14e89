"""Worst-case evaluation of robust fine-tuning: base vs fine-tuned, clean vs attacked, with restarts.

Robust training is judged by an attack stronger than the one it trained against, so that gradient
masking cannot pass for robustness: for every image the SR PSNR kept is the *minimum* over every
evaluation attack and every random restart (and over transfer attacks crafted on another model).

    lit-sr robust --config configs/robust/quickstart.yaml [--models.robust.weights PATH] [--out DIR]

writes ``robust_report.json`` and ``robust_report.md`` (a table per model: clean PSNR-Y, bicubic,
SR PSNR-Y under each attack, the worst case last).

The same worst case runs inside the YAML report (``lit-sr evaluate``, the ``robust``
block, :mod:`lit_sr.jobs.evaluate.robust`): there with the input-side defenses in the same table and the
clean-vs-robust trade-off plot over a sweep of training eps (``configs/evaluate/robust_report_quick.yaml``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_sr.attacks.spec import parse_eps
from lit_sr.attacks.worst_case import default_eval_attacks, output_psnr, worst_case_psnr
from lit_sr.errors import ConfigError
from lit_sr.io import atomic_write
from lit_sr.jobs.evaluate.config import ModelSpec
from lit_sr.jobs.evaluate.runner import build_model, load_pairs
from lit_sr.jobs.parser import job_parser, run_job
from lit_sr.tables import fmt, markdown_lines
from lit_sr.validation import check_int


@dataclass
class RobustConfig:
    """The worst-case report's config (``lit-sr robust``; docs/configs.md).

    Args:
        data: folder of HR images (LR made by MATLAB bicubic).
        models: name -> :class:`~lit_sr.jobs.evaluate.config.ModelSpec` (``arch``, ``arch_kwargs``,
            ``weights`` ...; a network with parameters needs its weights).
        out: output folder (``robust_report.json``, ``robust_report.md``).
        scale: upscaling factor of the models that do not set their own.
        eps: the budget on the [0, 1] scale, a number or a string like ``"8/255"``.
        train_steps: steps of the training attack; the evaluation's PGD takes ``max(30, 10 x train_steps)``.
        restarts: random restarts of each PGD.
        transfer_source: a model whose attacks are also transferred to every other model; ``None``: none.
        seed: the attacks' random starts.
        attacks: an ``attacks`` block of plain registered attacks (label -> parameters), each run with
            ``restarts`` restarts; ``None``: :func:`~lit_sr.attacks.worst_case.default_eval_block`.
    """

    data: str
    models: dict[str, ModelSpec]
    out: str = "runs/robust_report"
    scale: int = 4
    eps: float | str = "8/255"
    train_steps: int = 3
    restarts: int = 2
    transfer_source: str | None = None
    seed: int = 0
    attacks: dict[str, dict[str, Any] | None] | None = None

    def __post_init__(self) -> None:
        for key, minimum in (("scale", 1), ("train_steps", 1), ("restarts", 1), ("seed", 0)):
            try:
                setattr(self, key, check_int(getattr(self, key), key, minimum))
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        self.eps = parse_eps(self.eps, "eps")
        if not self.models:
            raise ConfigError("models: expected a non-empty mapping name -> {arch, arch_kwargs, weights}")
        for spec in self.models.values():
            spec.scale = self.scale if spec.scale is None else spec.scale
        if self.transfer_source is not None and self.transfer_source not in self.models:
            raise ConfigError(f"transfer_source: {self.transfer_source!r} is not one of the models {list(self.models)}")


def evaluate_models(
    models: Mapping[str, nn.Module],
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    scale: int,
    eps: float,
    train_steps: int = 3,
    restarts: int = 2,
    transfer_source: str | None = None,
    attacks: Mapping[str, Mapping | None] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean clean PSNR-Y (vs HR) and attacked PSNR-Y of each model over ``pairs`` (one image per batch).

    ``attacks``: an ``attacks`` block of plain registered attacks (label -> parameters); ``None``
    for :func:`~lit_sr.attacks.worst_case.default_eval_block`.
    """
    factories = default_eval_attacks(eps, train_steps, restarts, attacks)
    table: dict[str, dict[str, list[float]]] = {}
    for lr, hr in pairs:
        lr, hr = lr.unsqueeze(0), hr.unsqueeze(0)
        for name, model in models.items():
            row = table.setdefault(name, {})
            row.setdefault("clean/hr_psnr", []).append(float(output_psnr(model, lr, hr, scale, True)))
            transfer = None
            if transfer_source is not None and transfer_source != name and any(p.numel() for p in model.parameters()):
                transfer = {transfer_source: models[transfer_source]}
            for key, value in worst_case_psnr(model, lr, hr, factories, scale, True, transfer).items():
                row.setdefault(key, []).append(float(value))
    return {m: {k: sum(v) / len(v) for k, v in row.items()} for m, row in table.items()}


def markdown_table(results: Mapping[str, Mapping[str, float]], eps: float) -> str:
    """One row per model and metric: clean PSNR-Y vs HR, then each attack, the worst case last."""
    keys = sorted({k.split("/")[0] for row in results.values() for k in row} - {"clean", "worst"})
    header = ["model", "metric", "clean", *keys, "worst"]
    table = [[name, metric, fmt(row["clean/hr_psnr"]) if metric == "hr_psnr" else "-",
              *(fmt(row.get(f"{k}/{metric}")) for k in [*keys, "worst"])]
             for name, row in results.items() for metric in ("sr_psnr", "hr_psnr")]
    lines = [f"PSNR-Y (dB) at eps = {eps * 255:g}/255, per image the minimum over restarts, then the mean. "
             "sr_psnr: attacked SR vs clean SR (Choi et al.); hr_psnr: SR vs HR.", "", *markdown_lines(header, table)]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file (:func:`lit_sr.io.atomic_write`)."""
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text)
    return path


def _run(cfg: RobustConfig, namespace=None) -> int:
    torch.manual_seed(cfg.seed)
    models = {name: build_model(spec, torch.device("cpu"), name) for name, spec in cfg.models.items()}
    pairs = [(p.lr, p.hr) for p in load_pairs(cfg.data, cfg.scale)]
    results = evaluate_models(models, pairs, cfg.scale, cfg.eps, cfg.train_steps, cfg.restarts, cfg.transfer_source,
                              cfg.attacks)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, cfg.eps)
    write_text(out / "robust_report.json", json.dumps(results, indent=2))
    write_text(out / "robust_report.md", table)
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line (:class:`RobustConfig`), run the worst case, print its table; return the exit code."""
    parser = job_parser(RobustConfig, "lit-sr robust", __doc__.split("\n\n")[0],
                        "YAML config of the worst-case report (configs/robust/*.yaml)")
    return run_job(parser, argv, _run)
