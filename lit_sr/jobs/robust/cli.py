"""Worst-case evaluation of robust fine-tuning: base vs fine-tuned, clean vs attacked, with restarts.

Robust training is judged by an attack stronger than the one it trained against, so that gradient
masking cannot pass for robustness: for every image the SR PSNR kept is the *minimum* over every
evaluation attack and every random restart (and over transfer attacks crafted on another model).

    lit-sr robust --data data/embedded_val --scale 4 \
        --model base=edsr:runs/quickstart/version_0/weights.pth \
        --model robust=edsr:runs/robust_quickstart/version_0/weights.pth \
        --model bicubic=bicubic: --arch_kwargs '{"num_feat": 32, "num_block": 4}' \
        --transfer_source base --out runs/robust_report

writes ``robust_report.json`` and ``robust_report.md`` (a table per model: clean PSNR-Y, bicubic,
SR PSNR-Y under each attack, the worst case last).

The same worst case runs inside the YAML report (``lit-sr evaluate``, the ``robust``
block, :mod:`lit_sr.jobs.evaluate.robust`): there with the input-side defenses in the same table and the
clean-vs-robust trade-off plot over a sweep of training eps (``configs/evaluate/robust_report_quick.yaml``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from lit_sr.archs import arch_kwargs_with_scale, build_arch
from lit_sr.attacks.worst_case import default_eval_attacks, output_psnr, worst_case_psnr
from lit_sr.io import atomic_write, load_weights
from lit_sr.jobs.evaluate.runner import load_pairs
from lit_sr.tables import fmt, markdown_lines


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


def _load_model(spec: str, arch_kwargs: dict, scale: int) -> tuple[str, nn.Module]:
    if "=" not in spec or ":" not in spec.split("=", 1)[1]:
        raise ValueError(f"--model must be NAME=ARCH:WEIGHTS, got {spec!r}")
    name, rest = spec.split("=", 1)
    arch, weights = rest.split(":", 1)
    net = build_arch(arch, **arch_kwargs_with_scale(arch, arch_kwargs if arch != "bicubic" else {}, scale))
    if weights:
        load_weights(net, weights)
    elif any(p.numel() for p in net.parameters()):
        raise ValueError(f"--model {spec!r}: a network with parameters needs a weights file (NAME=ARCH:WEIGHTS)")
    return name, net.eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-sr robust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of HR images (LR made by bicubic)")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--model", action="append", required=True, help="NAME=ARCH:WEIGHTS (repeatable)")
    parser.add_argument("--arch_kwargs", default="{}", help="JSON constructor arguments of the networks")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--train_steps", type=int, default=3, help="steps of the training attack (eval uses >= 5x)")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--transfer_source", default=None, help="model whose attacks are also transferred")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    models = dict(_load_model(s, json.loads(args.arch_kwargs), args.scale) for s in args.model)
    pairs = [(p.lr, p.hr) for p in load_pairs(args.data, args.scale)]
    results = evaluate_models(models, pairs, args.scale, args.eps, args.train_steps, args.restarts,
                              args.transfer_source)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, args.eps)
    write_text(out / "robust_report.json", json.dumps(results, indent=2))
    write_text(out / "robust_report.md", table)
    print(table)
    return 0

