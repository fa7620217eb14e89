"""The robustness report's files: ``results.csv``/``.json``, plots, ``defenses.csv`` and the Markdown summary."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from lit_sr.attacks.spec import METRIC_KEYS, TARGET_KEYS, UNIVERSAL_KEYS, eps_label, eps_text
from lit_sr.io import atomic_write
from lit_sr.jobs.evaluate.downstream import DOWNSTREAM_FIELDS, downstream_markdown
from lit_sr.jobs.evaluate.settings import ReportSettings
from lit_sr.plots import psnr_vs_eps_figure, save_figure, transfer_figure
from lit_sr.tables import Column, fmt, markdown_lines, markdown_table, write_csv

ROW_FIELDS = (
    "model", "dataset", "attack", "kind", "eps", "eps_255", "n_images", "skipped",
    *METRIC_KEYS, *TARGET_KEYS, *UNIVERSAL_KEYS, "seconds",
)  # fmt: skip
DEFENSE_FIELDS = (
    "model", "dataset", "defense", "kind", "attack", "eps", "eps_255", "n_images", "undefended_sr_psnr",
    "naive_sr_psnr", "adaptive_sr_psnr", "worst_sr_psnr", "clean_hr_psnr", "naive_hr_psnr", "adaptive_hr_psnr",
    "worst_hr_psnr",
)  # fmt: skip


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


DEFENSE_COLUMNS = (
    Column("model", "model", "s"), Column("dataset", "dataset", "s"), Column("defense", "defense", "s"),
    Column("eps", lambda r: eps_text(r["eps"]), "s"), Column("undefended", "undefended_sr_psnr"),
    Column("naive", "naive_sr_psnr"), Column("adaptive", "adaptive_sr_psnr"), Column("worst", "worst_sr_psnr"),
    Column("clean HR PSNR", "clean_hr_psnr"),
)


def write_json(path: str | Path, payload) -> Path:
    """Write ``payload`` as indented JSON, atomically; NaN and inf become ``null`` (strict JSON has neither)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(payload), indent=2))
    return path


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(out: Path, cfg: ReportSettings, rows: list[dict], transfer: dict | None, defense_rows: list[dict],
                 meta: dict) -> dict[str, str]:
    """Write ``results.csv``, ``results.json``, the plots, ``defenses.csv`` and ``summary.md`` into ``out``."""
    fields = ROW_FIELDS + (DOWNSTREAM_FIELDS if cfg.downstream is not None else ())
    files = {"csv": write_csv(out / "results.csv", rows, fields)}
    payload = {"meta": meta, "config": cfg.raw, "rows": rows, "transfer": transfer, "defenses": defense_rows}
    files["json"] = write_json(out / "results.json", payload)
    plots = {}
    for dataset in cfg.datasets:
        for spec in cfg.attacks:
            sel = [r for r in rows if r["dataset"] == dataset and r["attack"] == spec.label]
            panels = {
                "SR PSNR, attacked vs clean output (higher = more robust)":
                    {m: [(r["eps_255"], r["sr_psnr"]) for r in sel if r["model"] == m] for m in cfg.models},
                "PSNR, attacked output vs HR":
                    {m: [(r["eps_255"], r["hr_psnr"]) for r in sel if r["model"] == m] for m in cfg.models},
            }
            fig = psnr_vs_eps_figure(panels, f"{spec.label} ({spec.kind}) on {dataset}")
            path = save_figure(fig, out / "plots" / f"psnr_vs_eps_{_slug(dataset)}_{_slug(spec.label)}.png")
            plots[dataset, spec.label] = path
            files[f"plot:{dataset}:{spec.label}"] = path
    if transfer is not None:
        fig = transfer_figure(transfer["names"], transfer["sr_psnr"],
                              f"{transfer['attack']} at {eps_text(transfer['eps'])} on {transfer['dataset']}")
        files["transfer_plot"] = save_figure(fig, out / "plots" / f"transfer_{_slug(transfer['dataset'])}.png")
    if defense_rows:
        files["defenses_csv"] = write_csv(out / "defenses.csv", defense_rows, DEFENSE_FIELDS)
    text = summary_markdown(cfg, rows, transfer, defense_rows, meta, plots, out)
    with atomic_write(out / "summary.md") as tmp:
        tmp.write_text(text)
    files["summary"] = out / "summary.md"
    return {k: str(v) for k, v in files.items()}


def robustness_ranking(rows: Sequence[Mapping], dataset: str, attack: str) -> list[tuple[str, float]]:
    """Models ordered from most to least robust: mean SR PSNR (attacked vs clean output) over the eps grid."""
    means = defaultdict(list)
    for r in rows:
        if r["dataset"] == dataset and r["attack"] == attack and math.isfinite(r["sr_psnr"]):
            means[r["model"]].append(r["sr_psnr"])
    return sorted(((m, sum(v) / len(v)) for m, v in means.items()), key=lambda mv: -mv[1])


def summary_markdown(cfg: ReportSettings, rows, transfer, defense_rows, meta, plots, out: Path) -> str:
    """The Markdown summary: one table per data set x attack (models x eps), transfer and defenses."""
    lines = [
        "# Robustness report",
        "",
        f"Config `{meta['config']}`; {meta['date']}; device {meta['device']} ({meta['machine']}); "
        f"torch {meta['torch']}; {meta['seconds']} s.",
        "",
        f"Metrics on {meta['metric_convention']}. Each cell is **SR PSNR** (attacked output vs clean "
        "output: higher = more robust) / **HR PSNR** (attacked output vs ground truth), in dB, averaged "
        "over the images; LR PSNR (attacked vs clean input) is in `results.csv`. For the partial "
        "attack the SR side is measured outside the attacked region; for the universal attack on the "
        "attacked centre window (the whole-image values, diluted by the untouched border, are "
        "`full_sr_psnr` / `full_hr_psnr` in `results.csv`).",
        "",
    ]
    for dataset in cfg.datasets:
        for spec in cfg.attacks:
            sel = [r for r in rows if r["dataset"] == dataset and r["attack"] == spec.label]
            if not sel:
                continue
            params = ", ".join(f"{k}={v}" for k, v in spec.kwargs.items())
            lines += [f"## {dataset}: {spec.label} ({spec.kind}; {params})", ""]
            header = ["model", "clean HR PSNR", *[f"eps {eps_text(e)}" for e in cfg.eps]]
            table = []
            for model in cfg.models:
                cells = {eps_label(r["eps"]): r for r in sel if r["model"] == model}
                clean = next((r["clean_hr_psnr"] for r in cells.values()), None)
                row = [model, fmt(clean)]
                for e in cfg.eps:
                    r = cells.get(eps_label(e))
                    row.append("-" if r is None else f"{fmt(r['sr_psnr'])} / {fmt(r['hr_psnr'])}")
                table.append(row)
            lines += markdown_lines(header, table)
            n = {r["n_images"] for r in sel}
            lines += ["", f"Images: {', '.join(map(str, sorted(n)))}."]
            if spec.kind == "targeted":
                lines.append("Targeted: `target_psnr` (attacked output vs target) and `clean_target_psnr` are in the CSV.")
            ranking = robustness_ranking(rows, dataset, spec.label)
            if ranking:
                lines.append("Most to least robust (mean SR PSNR over eps): "
                             + ", ".join(f"{m} ({v:.2f})" for m, v in ranking) + ".")
            if (dataset, spec.label) in plots:
                lines += ["", f"![{dataset} {spec.label}]({Path(plots[dataset, spec.label]).relative_to(out).as_posix()})"]
            lines.append("")
    if transfer is not None:
        names = transfer["names"]
        lines += [f"## Transferability: {transfer['attack']} at {eps_text(transfer['eps'])} on "
                  f"{transfer['dataset']} ({transfer['n_images']} images)", "",
                  "SR PSNR of each target model on inputs attacked on each source model (rows: source, "
                  "columns: target; the diagonal is white-box; lower = the attack transfers).", ""]
        lines += markdown_lines(["source \\ target", *names],
                                ([name, *map(fmt, values)] for name, values in zip(names, transfer["sr_psnr"])))
        lines += ["", f"![transfer](plots/transfer_{_slug(transfer['dataset'])}.png)", ""]
    if defense_rows:
        lines += ["## Defenses (naive: attack computed on the bare model; adaptive: through the defense)", ""]
        lines += markdown_table(defense_rows, DEFENSE_COLUMNS)
        lines += ["", "Values are SR PSNR vs the defended model's clean output (dB); report the worst case.", ""]
    lines += downstream_markdown(cfg, rows)
    return "\n".join(lines)
