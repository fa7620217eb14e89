"""The report's robust fine-tuning study: base, fine-tuned and defended models side by side, worst case.

Robust training is judged by an attack at least as strong as the training one and by the worst of
the naive and the adaptive evaluation, so that gradient masking cannot pass for robustness. For
every image and model the study keeps the *minimum* SR PSNR (attacked output vs clean output,
Choi et al.'s measure) over

* every configured per-image attack, white-box (adaptive), each random-start attack repeated with
  ``restarts`` seeds;
* the same attacks crafted on the ``base`` model and applied to the model (naive: transfer);
* for the input-side defenses (``robust.defenses``, or the ``defenses`` block's; applied to the base model): the
  attacks computed through the defense (adaptive; BPDA / differentiable JPEG inside the defense)
  and on the bare base model (naive).

It writes ``robust.csv`` (one row per model or defense and eps), the trade-off plot
``plots/robust_tradeoff_<dataset>.png`` (clean PSNR-Y vs worst-case SR PSNR, the models of the
training-eps sweep joined in order of their training eps, the goal region marked) and a section of
``summary.md``. YAML::

    robust:
      base: EDSR-quickstart
      train_eps: {EDSR-robust-e4: 4/255, EDSR-robust-e8: 8/255}
      restarts: 2
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.attacks.registry import plain_kinds
from lit_sr.attacks.spec import (
    eps_text,
    parse_eps,
    shape_batches,
)
from lit_sr.attacks.worst_case import output_psnr, restart_factories, worst_case_psnr
from lit_sr.defenses import INPUT_DEFENSES
from lit_sr.errors import ConfigError
from lit_sr.io import atomic_write
from lit_sr.jobs.evaluate.input_defenses import parse_defense
from lit_sr.jobs.evaluate.pairs import ImagePair
from lit_sr.jobs.evaluate.settings import ReportSettings
from lit_sr.plots import save_figure, tradeoff_figure
from lit_sr.tables import Column, markdown_table, write_csv
from lit_sr.validation import check_int, check_number

ROBUST_FIELDS = ("name", "kind", "train_eps_255", "dataset", "eps", "eps_255", "n_images", "clean_hr_psnr",
                 "clean_drop", "adaptive_sr_psnr", "naive_sr_psnr", "worst_sr_psnr", "worst_hr_psnr", "goal_met")


@dataclass
class RobustStudy:
    """Base vs fine-tuned vs defended models, each at its worst case (see the module docstring).

    Args:
        base: the model the others were fine-tuned from (a key of ``models``): its attacks are
            transferred to every other network, the defenses wrap it, and its clean PSNR-Y is the
            reference of ``max_clean_drop``.
        train_eps: model -> its training eps (a number or ``"8/255"``; 0 for the base itself): the
            sweep of the trade-off plot, joined in order of training eps. Models not listed are
            plotted as single points.
        attacks: labels of per-image attacks (kinds ifgsm, pgd, square) of the ``attacks`` block;
            ``None``: every such attack. Give them more steps than the training attack (the issue
            asks for at least 5x) and a random start, so that restarts differ.
        eps: the budgets; ``None``: every eps of the grid.
        restarts: seeds ``seed, seed + 1, ...`` of every random-start attack (the minimum is kept).
        dataset: a key of ``datasets``; ``None``: the first.
        bicubic: the model whose worst case is the bar to reach; ``None``: the first model with
            ``arch: bicubic`` (no bar when there is none).
        max_clean_drop: the clean PSNR-Y a fine-tuned model may lose against ``base`` (dB).
        defenses: input-side defenses evaluated on ``base`` in this table too: a mapping label ->
            parameters as in the ``defenses`` block's ``methods`` (``resize``, ``self_ensemble``,
            ``jpeg``, ``bit_depth``, ``random_resize``), ``true`` for the ``defenses`` block's
            methods (none without one), ``false`` for none.
    """

    base: str
    train_eps: dict[str, float | str] | None = None
    attacks: list[str] | None = None
    eps: list[float | str] | None = None
    restarts: int = 2
    dataset: str | None = None
    bicubic: str | None = None
    max_clean_drop: float = 0.6
    defenses: dict[str, dict[str, Any] | None] | bool = True


def resolve_robust_study(cfg: ReportSettings, study: RobustStudy | None) -> RobustStudy | None:
    """Validate ``robust`` against the rest of the config and fill its defaults (errors name ``robust.<key>``)."""
    if study is None:
        return None
    if not isinstance(study, RobustStudy):
        raise ConfigError(f"robust: expected a mapping with base, train_eps, attacks, eps, restarts, got {study!r}")
    if study.base not in cfg.models:
        raise ConfigError(f"robust.base: {study.base!r} is not one of the models {list(cfg.models)}")
    train_eps = {}
    for name, value in (study.train_eps or {}).items():
        if name not in cfg.models:
            raise ConfigError(f"robust.train_eps.{name}: not one of the models {list(cfg.models)}")
        # 0 is allowed here (and only here): the base model as the sweep's first point
        train_eps[name] = 0.0 if value in (0, "0", "0/255") else parse_eps(value, f"robust.train_eps.{name}")
    kinds = {a.label: a.kind for a in cfg.attacks}
    labels = [a for a, k in kinds.items() if k in plain_kinds()] if study.attacks is None else list(study.attacks)
    if not labels:
        raise ConfigError(f"robust.attacks: the attacks block has no per-image attack (kinds {list(plain_kinds())})")
    for label in labels:
        if kinds.get(label) not in plain_kinds():
            raise ConfigError(f"robust.attacks: {label!r} is not a per-image attack label ({list(plain_kinds())}) "
                              f"of the attacks block {list(kinds)}")
    eps = list(cfg.eps) if study.eps is None else [parse_eps(e, "robust.eps") for e in study.eps]
    dataset = next(iter(cfg.datasets)) if study.dataset is None else study.dataset
    if dataset not in cfg.datasets:
        raise ConfigError(f"robust.dataset: {dataset!r} is not one of the datasets {list(cfg.datasets)}")
    bicubic = study.bicubic
    if bicubic is None:
        bicubic = next((n for n, m in cfg.models.items() if m.arch == "bicubic"), None)
    elif bicubic not in cfg.models:
        raise ConfigError(f"robust.bicubic: {bicubic!r} is not one of the models {list(cfg.models)}")
    try:
        restarts = check_int(study.restarts, "robust.restarts", 1)
        drop = check_number(study.max_clean_drop, "robust.max_clean_drop", low=0.0)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return RobustStudy(base=study.base, train_eps=train_eps, attacks=labels, eps=eps, restarts=restarts,
                       dataset=dataset, bicubic=bicubic, max_clean_drop=drop,
                       defenses=_resolve_defenses(cfg, study.defenses))


def _resolve_defenses(cfg: ReportSettings, defenses) -> dict[str, dict[str, Any]]:
    """label -> parameters with their ``defense`` kind, validated as the ``defenses`` block's methods."""
    if defenses is True:
        return dict(cfg.defenses.methods) if cfg.defenses is not None else {}
    if defenses is False or defenses is None:
        return {}
    if not isinstance(defenses, Mapping):
        raise ConfigError(f"robust.defenses: expected true, false or a mapping label -> parameters, got {defenses!r}")
    try:
        return {label: parse_defense(label, params) for label, params in defenses.items()}
    except ConfigError as exc:
        raise ConfigError("robust.defenses." + str(exc).removeprefix("defenses.methods.")) from None


# --------------------------------------------------------------------------- running


def _entries(name: str, kind: str, target: nn.Module, naive_source: nn.Module | None) -> dict:
    return {"name": name, "kind": kind, "target": target, "naive": naive_source}


def _targets(cfg: ReportSettings, study: RobustStudy, models: Mapping[str, nn.Module], device: torch.device) -> list[dict]:
    base = models[study.base]
    has_params = {n: any(p.numel() for p in m.parameters()) for n, m in models.items()}
    entries = []
    for name, model in models.items():
        naive = base if name != study.base and has_params[name] else None
        kind = "base" if name == study.base else ("fine-tuned" if name in study.train_eps else "model")
        kind = "bicubic" if name == study.bicubic else kind
        entries.append(_entries(name, kind, model, naive))
    if study.defenses:
        for label, params in study.defenses.items():
            params = dict(params)
            defense = INPUT_DEFENSES[params.pop("defense")](base, **params).to(device)
            entries.append(_entries(f"{study.base} + {label}", "defense", defense, base))
    return entries


def run_robust_study(cfg: ReportSettings, models: Mapping[str, nn.Module], pairs: Sequence[ImagePair],
                     device: torch.device, progress: bool = True) -> dict:
    """Per model (and defense) and eps: mean clean PSNR-Y, adaptive / naive / worst SR PSNR; the goal check."""
    study = cfg.robust
    specs = [a for a in cfg.attacks if a.label in study.attacks]
    crop_border = cfg.models[study.base].scale if cfg.crop_border is None else cfg.crop_border
    entries = _targets(cfg, study, models, device)
    rows = []
    jobs = [(e, eps) for eps in study.eps for e in entries]
    for entry, eps in tqdm(jobs, desc="robust study", disable=not progress):
        attacks = restart_factories(specs, eps, study.restarts, cfg.seed, cfg.autocast)
        per_image: dict[str, list[torch.Tensor]] = defaultdict(list)
        for idx in shape_batches([p.lr.shape for p in pairs], range(len(pairs)), cfg.batch_size):
            lr = torch.stack([pairs[i].lr for i in idx]).to(device)
            hr = torch.stack([pairs[i].hr for i in idx]).to(device)
            transfer = None if entry["naive"] is None else {"naive": entry["naive"]}
            res = worst_case_psnr(entry["target"], lr, hr, attacks, crop_border, cfg.y_channel, transfer)
            res["clean/hr_psnr"] = output_psnr(entry["target"], lr, hr, crop_border, cfg.y_channel)
            for key, value in res.items():
                per_image[key].append(value.double().cpu())
        rows.append(_row(entry, eps, study, {k: torch.cat(v) for k, v in per_image.items()}))
    _mark_goal(rows, study)
    return {"dataset": study.dataset, "base": study.base, "bicubic": study.bicubic, "attacks": list(study.attacks),
            "restarts": study.restarts, "max_clean_drop": study.max_clean_drop, "rows": rows}


def _row(entry: dict, eps: float, study: RobustStudy, values: Mapping[str, torch.Tensor]) -> dict:
    def worst(keys: list[str]) -> float:
        return float(torch.stack([values[k] for k in keys]).min(dim=0).values.mean()) if keys else float("nan")

    sr_keys = [k for k in values if k.endswith("/sr_psnr") and not k.startswith("worst/")]
    adaptive = [k for k in sr_keys if "@" not in k.split("/")[0]]
    naive = [k for k in sr_keys if "@" in k.split("/")[0]]
    train_eps = study.train_eps.get(entry["name"]) if entry["kind"] != "defense" else None
    row = {"name": entry["name"], "kind": entry["kind"],
           "train_eps_255": None if train_eps is None else round(train_eps * 255, 4),
           "dataset": study.dataset, "eps": eps, "eps_255": round(eps * 255, 4), "n_images": len(values["clean/hr_psnr"]),
           "clean_hr_psnr": float(values["clean/hr_psnr"].mean()),
           "adaptive_sr_psnr": worst(adaptive), "naive_sr_psnr": worst(naive),
           "worst_sr_psnr": float(values["worst/sr_psnr"].mean()), "worst_hr_psnr": float(values["worst/hr_psnr"].mean())}
    for label in study.attacks:
        row[f"{label}/sr_psnr"] = float(values[f"{label}/sr_psnr"].mean())
        if f"{label}@naive/sr_psnr" in values:
            row[f"{label}@naive/sr_psnr"] = float(values[f"{label}@naive/sr_psnr"].mean())
    return row


def _mark_goal(rows: list[dict], study: RobustStudy) -> None:
    """``clean_drop`` against the base and ``goal_met``: worst SR PSNR >= bicubic's and the drop within budget."""
    for row in rows:
        same = {r["name"]: r for r in rows if r["eps"] == row["eps"]}
        row["clean_drop"] = same[study.base]["clean_hr_psnr"] - row["clean_hr_psnr"]
        bar = same[study.bicubic]["worst_sr_psnr"] if study.bicubic in same else None
        if row["name"] in (study.base, study.bicubic) or bar is None:
            row["goal_met"] = None
        else:
            row["goal_met"] = bool(row["worst_sr_psnr"] >= bar and row["clean_drop"] <= study.max_clean_drop)


# --------------------------------------------------------------------------- writing


GOAL_TEXT = {True: "**met**", False: "not met"}


def robust_markdown(result: dict, plots: Mapping[float, str]) -> str:
    """The summary section: one table per eps (models, then defenses), the goal and the plot."""
    labels = result["attacks"]
    lines = [f"## Robust fine-tuning: worst case on {result['dataset']} (base `{result['base']}`)", "",
             "SR PSNR-Y (dB, attacked output vs clean output; higher = more robust), per image the minimum "
             f"over {', '.join(labels)} with {result['restarts']} restart(s) of every random-start attack, then "
             "the mean. *adaptive*: white-box on the row's model (through the defense for defenses); *naive*: "
             "crafted on the base model (bare, for defenses) and applied to the row's; *worst*: the minimum of "
             f"both. Goal: worst >= {result['bicubic'] or 'bicubic'}'s, losing <= {result['max_clean_drop']:g} dB "
             "clean PSNR-Y against the base.", ""]
    for eps in sorted({r["eps"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["eps"] == eps]
        columns = [Column("model", "name", "s"), Column("train eps", "train_eps_255", lambda v: f"{v:g}/255"),
                   Column("clean PSNR-Y", "clean_hr_psnr"), Column("clean drop", "clean_drop"),
                   *[Column(f"{a} adaptive", f"{a}/sr_psnr") for a in labels], Column("naive", "naive_sr_psnr"),
                   Column("worst", "worst_sr_psnr"), Column("goal", "goal_met", GOAL_TEXT.get)]
        lines += [f"### eps {eps_text(eps)}", "", *markdown_table(rows, columns)]
        if eps in plots:
            lines += ["", f"![clean vs robust PSNR at {eps_text(eps)}]({plots[eps]})"]
        lines.append("")
    return "\n".join(lines)


def write_robust_study(out: Path, result: dict) -> tuple[dict[str, str], str]:
    """``robust.csv`` and one trade-off plot per eps under ``out``; the written files and the summary section."""
    files = {"robust_csv": str(write_csv(out / "robust.csv", result["rows"], ROBUST_FIELDS))}
    plots = {}
    for eps in sorted({r["eps"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["eps"] == eps]
        sweep = sorted((r for r in rows if r["train_eps_255"] is not None), key=lambda r: r["train_eps_255"])
        points = {r["name"]: (r["clean_hr_psnr"], r["worst_sr_psnr"], r["kind"]) for r in rows}
        base = next(r for r in rows if r["name"] == result["base"])
        bar = next((r["worst_sr_psnr"] for r in rows if r["name"] == result["bicubic"]), None)
        fig = tradeoff_figure(
            sweep=[(r["clean_hr_psnr"], r["worst_sr_psnr"], f"{r['train_eps_255']:g}/255") for r in sweep],
            points=points, min_clean=base["clean_hr_psnr"] - result["max_clean_drop"], min_robust=bar,
            title=f"clean vs worst-case SR PSNR-Y at eps {eps_text(eps)} on {result['dataset']}")
        name = f"robust_tradeoff_{result['dataset']}_eps{round(eps * 255, 4):g}.png"
        path = save_figure(fig, out / "plots" / name)
        files[f"robust_plot:{eps_text(eps)}"] = str(path)
        plots[eps] = f"plots/{name}"
    return files, robust_markdown(result, plots)


def append_to_summary(summary: str | Path, text: str) -> None:
    """Append a section to ``summary.md`` (rewritten atomically)."""
    summary = Path(summary)
    with atomic_write(summary) as tmp:
        tmp.write_text(summary.read_text().rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
