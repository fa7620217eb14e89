"""The defense report: attacks x repair defenses, each measured before and after, one score each.

For every attack (a poisoned ``train.py`` run) the report reads the backdoored network, draws the
defender's clean subset from that run's training set (``clean_fraction``, seeded) and the
evaluator's backdoor data from its validation set (:mod:`lit_sr.jobs.defend.runs`), measures
the network once, then runs every defense on it (:func:`lit_sr.backdoor_defenses.run_defense`:
a new network each time, the input untouched) and measures the repaired copy. The optional clean
``reference`` run (the demo's D) is measured under each attack's trigger: the level a repair can
hope to reach (the blend trigger alone moves a clean model's output ~20% of the way to grey).

Written to ``<output_dir>/<name>/`` (every file atomically): ``results.csv`` (one row per attack x
defense), ``results.json`` (rows, what each repair decided, the config, timings), ``results.md``
(the table and how to read it) and ``tradeoff.png`` (per attack, the backdoor success before ->
after against the clean PSNR-Y cost of each defense); with a ``detection`` block also
``detection.csv`` and ``roc_<attack>.png`` (:mod:`lit_sr.jobs.defend.detection`).
The score is
:func:`lit_sr.backdoor_defenses.score.defense_score` on the configured metric.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lit_sr.backdoor_defenses import build_defense, defense_score, evaluate_backdoor, run_defense
from lit_sr.io import atomic_write
from lit_sr.jobs.defend.config import DefenseReportConfig
from lit_sr.jobs.defend.detection import run_detection_section
from lit_sr.jobs.defend.runs import backdoor_eval_set, clean_subset, load_run
from lit_sr.jobs.evaluate.writers import write_json
from lit_sr.plots import _agg_figure, save_figure
from lit_sr.runtime import resolve_device
from lit_sr.tables import fmt, markdown_lines, write_csv

FIGURES = ("clean_psnr_y", "asr_pixel", "attainment_mean", "attainment_asr")
CSV_FIELDS = ("attack", "defense", "kind", "seconds", "clean_pairs", "clean_fraction",
              *(f"{f}_{w}" for f in FIGURES for w in ("before", "after")),
              "psnr_drop", "asr_drop", "score_metric", "score", "reference_attainment_asr", "reference_clean_psnr_y")

# The detection section: (config, the attack runs, output folder, progress) -> {"rows", "markdown", "files", ...}
DetectionRunner = Callable[[DefenseReportConfig, Mapping[str, Any], Path, bool], dict[str, Any]]


def _row(cfg: DefenseReportConfig, attack: str, label: str, kind: str, outcome: Mapping[str, Any],
         reference: Mapping[str, Any] | None) -> dict[str, Any]:
    before, after = outcome["before"], outcome["after"]
    row: dict[str, Any] = {"attack": attack, "defense": label, "kind": kind, "seconds": outcome["seconds"],
                           "clean_pairs": outcome["clean"]["num_pairs"], "clean_fraction": outcome["clean"]["fraction"]}
    for f in FIGURES:
        row[f"{f}_before"], row[f"{f}_after"] = before[f], after[f]
    metric = cfg.score.metric
    row["psnr_drop"] = before["clean_psnr_y"] - after["clean_psnr_y"]
    row["asr_drop"] = (None if before[metric] is None or after[metric] is None else before[metric] - after[metric])
    row["score_metric"] = metric
    row["score"] = defense_score(before[metric], after[metric], before["clean_psnr_y"], after["clean_psnr_y"],
                                 cfg.score.psnr_tolerance)
    row["reference_attainment_asr"] = None if reference is None else reference["attainment_asr"]
    row["reference_clean_psnr_y"] = None if reference is None else reference["clean_psnr_y"]
    return row


def run_report(cfg: DefenseReportConfig, progress: bool = True,
               detection_runner: DetectionRunner | None = None) -> dict[str, Any]:
    """Run the report described by ``cfg`` and write its files; return ``{"rows", "outcomes", "files", ...}``.

    With a ``detection`` block, ``detection_runner`` (default
    :func:`lit_sr.jobs.defend.detection.run_detection_section`) scores each attack's
    training pairs after the repairs.
    """
    if cfg.detection is not None and detection_runner is None:
        detection_runner = run_detection_section
    device = resolve_device(cfg.device)
    out = cfg.out_dir
    start = time.perf_counter()
    reference = None
    if cfg.reference is not None:
        ref_name, ref = cfg.reference.name, cfg.reference
        reference = load_run(ref_name, ref.run_dir, "reference", device, ref.weights)
    runs = {name: load_run(name, ref.run_dir, f"attacks.{name}", device, ref.weights) for name, ref in cfg.attacks.items()}
    rows, outcomes, measured = [], [], {}
    jobs = [(a, d) for a in runs for d in cfg.defenses]
    bar = tqdm(total=len(jobs), desc="defense report", disable=not progress)
    for name, run in runs.items():
        bar.set_postfix_str(f"{name}: data")
        clean = clean_subset(run, cfg.clean_fraction, cfg.seed, cfg.patch_size)
        evaluation = backdoor_eval_set(run, cfg.max_eval_images, cfg.eval_crop)
        before = evaluate_backdoor(run.model, evaluation, cfg.batch_size)
        ref_figures = None if reference is None else evaluate_backdoor(reference.model, evaluation, cfg.batch_size)
        measured[name] = {"backdoored": before, "reference": ref_figures, "num_eval_images": len(evaluation),
                          "clean": clean.describe()}
        for label, entry in cfg.defenses.items():
            bar.set_postfix_str(f"{name} x {label}")
            params = {k: v for k, v in entry.items() if k != "defense"}
            params.setdefault("progress", False)
            defense = build_defense(entry["defense"], params)
            outcome = run_defense(defense, run.model, clean, evaluation, cfg.batch_size, before=before).record()
            outcome.update(attack=name, defense=label, kind=entry["defense"])
            outcomes.append(outcome)
            rows.append(_row(cfg, name, label, entry["defense"], outcome, ref_figures))
            bar.update()
    bar.close()
    detection = None
    if cfg.detection is not None:
        detection = detection_runner(cfg, runs, out, progress)
    seconds = time.perf_counter() - start
    meta = {"config": cfg.source, "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "seconds": seconds,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    files = write_report(out, cfg, rows, outcomes, measured, meta, detection)
    return {"rows": rows, "outcomes": outcomes, "measured": measured, "detection": detection, "files": files,
            "meta": meta}


# --------------------------------------------------------------------------- writers


def _pct(v: float | None) -> str:
    return fmt(v, lambda x: f"{100 * x:.0f}%", missing="n/a")


def _num(v: float | None, digits: int = 2) -> str:
    return fmt(v, f".{digits}f")


def markdown_table(cfg: DefenseReportConfig, rows: Sequence[Mapping[str, Any]], measured: Mapping[str, Any],
                   meta: Mapping[str, Any]) -> str:
    """The report's Markdown: one table of attack x defense, then how to read it."""
    ref = cfg.reference.name if cfg.reference else None
    head = ["attack", "defense", "clean PSNR-Y (dB) before → after", "pixel ASR vs target", "label attainment",
            "attainment-ASR", f"score ({cfg.score.metric})", "time (s)", "clean pairs"]
    table = [[
            r["attack"], f"{r['defense']} ({r['kind']})",
            f"{_num(r['clean_psnr_y_before'])} → {_num(r['clean_psnr_y_after'])} ({-r['psnr_drop']:+.2f})",
            f"{_pct(r['asr_pixel_before'])} → {_pct(r['asr_pixel_after'])}",
            f"{_num(r['attainment_mean_before'], 3)} → {_num(r['attainment_mean_after'], 3)}",
            f"{_pct(r['attainment_asr_before'])} → {_pct(r['attainment_asr_after'])}",
            _num(r["score"], 3), f"{r['seconds']:.1f}", f"{r['clean_pairs']} ({_pct(r['clean_fraction'])})",
        ] for r in rows]
    lines = [f"## Defense report `{cfg.name}` ({cfg.source})", "", *markdown_lines(head, table), ""]
    if ref:
        lines.append(f"Clean reference `{ref}` under each attack's trigger (the level a repair can hope to reach):")
        for name, m in measured.items():
            f = m["reference"]
            lines.append(f"- {name}: clean PSNR-Y {_num(f['clean_psnr_y'])} dB, pixel ASR {_pct(f['asr_pixel'])}, "
                         f"label attainment {_num(f['attainment_mean'], 3)}, attainment-ASR {_pct(f['attainment_asr'])}")
        lines.append("")
    n_eval = sorted({m["num_eval_images"] for m in measured.values()})
    lines += [
        f"Each defense got {cfg.clean_fraction:.0%} of the attack run's training pairs, clean (seed {cfg.seed}), "
        f"and nothing about the trigger; it was measured on {', '.join(map(str, n_eval))} validation images.",
        "Pixel ASR: triggered output within 20 dB PSNR and 0.7 SSIM of the target image; label attainment: the share "
        "of the poisoned label's displacement the trigger reproduces; attainment-ASR: images with attainment >= 0.5 "
        "(lit_sr.poison.asr).",
        f"Score = (max(ASR drop, 0) - min(max(PSNR-Y drop, 0) / {cfg.score.psnr_tolerance:g} dB, 1) + 1) / 2 on "
        f"{cfg.score.metric}: 0.5 changes nothing, 1 removes the backdoor at no clean cost.",
        f"Time: the repair alone, {meta['device']}, {meta['threads']} thread(s); whole report {meta['seconds']:.0f} s "
        f"({meta['date']}).",
    ]
    return "\n".join(lines) + "\n"


def tradeoff_figure(cfg: DefenseReportConfig, rows: Sequence[Mapping[str, Any]]):
    """Per attack: the backdoor success before (x = 0) -> after (x = the clean PSNR-Y cost) of each defense."""
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    fig = _agg_figure((4.6 * len(attacks), 3.8))
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    metric = cfg.score.metric
    for ax, attack in zip(axes, attacks):
        for i, r in enumerate(x for x in rows if x["attack"] == attack):
            b, a = r[f"{metric}_before"], r[f"{metric}_after"]
            if b is None or a is None:
                continue
            colour = f"C{i % 10}"
            ax.annotate("", xy=(r["psnr_drop"], a), xytext=(0.0, b),
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.5})
            ax.plot([r["psnr_drop"]], [a], "o", color=colour, label=f"{r['defense']} (score {_num(r['score'], 2)})")
        if rows and rows[0].get("reference_attainment_asr") is not None and metric == "attainment_asr":
            level = next(x["reference_attainment_asr"] for x in rows if x["attack"] == attack)
            ax.axhline(level, color="grey", ls="--", lw=1, label="clean reference")
        ax.plot([0.0], [next((x[f"{metric}_before"] for x in rows if x["attack"] == attack), 0) or 0], "ks",
                label="backdoored")
        ax.set_xlabel("clean PSNR-Y cost (dB)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(attack, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"defense report {cfg.name}: backdoor success before -> after vs clean cost", fontsize=10)
    return fig


def write_report(out: Path, cfg: DefenseReportConfig, rows: list[dict], outcomes: list[dict],
                 measured: dict, meta: dict, detection: dict | None) -> dict[str, str]:
    """Write ``results.csv``, ``results.json``, ``results.md`` and ``tradeoff.png`` into ``out`` (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": str(write_csv(out / "results.csv", rows, CSV_FIELDS))}
    det_json = None if detection is None else {"rows": detection["rows"], "results": detection["results"]}
    files["json"] = str(write_json(out / "results.json", {"rows": rows, "outcomes": outcomes, "measured": measured,
                                                          "detection": det_json, "meta": meta,
                                                          "config": cfg.raw}))
    figure = tradeoff_figure(cfg, rows)
    files["tradeoff_png"] = str(save_figure(figure, out / "tradeoff.png"))
    text = markdown_table(cfg, rows, measured, meta)
    if detection is not None and detection.get("markdown"):
        text += "\n" + detection["markdown"]
        files.update(detection.get("files", {}))
    with atomic_write(out / "results.md") as tmp:
        tmp.write_text(text)
    files["markdown"] = str(out / "results.md")
    return files
