"""The detection section of the defense report: label-free detection of each attack's poisoned pairs.

With a ``detection:`` block in the report's config, every attack run's training pairs (its data
module, rebuilt from its ``config.yaml``) are scored by
:func:`lit_sr.backdoor_defenses.detection.run_detection` (spectral signatures on backdoor-gradient
sketches, the early training loss, activation clustering) against the run's poisoned set (the
final active set in its ``backdoor_summary.json``; the data module's initial set when the run has
no summary). The block's keys are :func:`run_detection`'s keyword arguments (``methods``,
``early_steps``, ``layer``, ``flag_fraction``, ...), plus ``attacks`` (the attack names to score,
default all). Written: ``detection.csv`` (one row per attack x method: ROC-AUC, precision,
recall), ``roc_<attack>.png`` and a Markdown table appended to ``results.md``; the JSON goes into
``results.json`` under ``detection``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from lit_sr.backdoor_defenses.detection import METHODS, run_detection
from lit_sr.errors import ConfigError
from lit_sr.jobs.defend.runs import TrainedRun, build_datamodule
from lit_sr.tables import fmt, markdown_lines, write_csv


class DetectionSettings(Protocol):
    """What the detection section reads of the defense report's config
    (:class:`lit_sr.jobs.defend.config.DefenseReportConfig`, which imports this module for its validator)."""

    attacks: Mapping[str, Any]
    detection: Mapping[str, Any] | None
    seed: int

DETECTION_FIELDS = ("attack", "method", "roc_auc", "precision", "recall", "flagged", "true_positives", "n_pairs",
                    "n_poisoned", "seconds")
OWN_KEYS = ("attacks",)
FIXED = ("model", "data", "poisoned_indices", "progress")


def detection_kwargs(block: Mapping[str, Any], attacks: Sequence[str]) -> dict[str, Any]:
    """The ``detection:`` block's arguments of ``run_detection`` (checked when the config is read):
    unknown keys, unknown ``methods`` and ``attacks`` that are not the report's raise naming them."""
    accepted = [p for p in inspect.signature(run_detection).parameters if p not in FIXED]
    extra = sorted(set(block) - set(accepted) - set(OWN_KEYS))
    if extra:
        raise ConfigError(f"detection: unknown key(s) {extra}; expected some of {[*OWN_KEYS, *accepted]}")
    methods = block.get("methods", METHODS)
    if isinstance(methods, str) or not methods or any(m not in METHODS for m in methods):
        raise ConfigError(f"detection.methods must be a non-empty list of {list(METHODS)}; got {methods!r}")
    names = block.get("attacks") or list(attacks)
    if isinstance(names, str) or any(n not in attacks for n in names):
        raise ConfigError(f"detection.attacks must name attacks of this report ({list(attacks)}); got {names!r}")
    return {k: v for k, v in block.items() if k not in OWN_KEYS}


def poisoned_truth(run_dir: Path, datamodule: Any) -> list[int]:
    summary = run_dir / "backdoor_summary.json"
    if summary.is_file():
        indices = json.loads(summary.read_text()).get("config", {}).get("poisoned_indices")
        if indices is not None:
            return [int(i) for i in indices]
    return list(datamodule.poisoned_indices)


def _fmt(v: Any) -> str:
    return fmt(v, lambda x: f"{x:.3f}" if isinstance(x, float) else str(x))


def run_detection_section(cfg: DetectionSettings, runs: Mapping[str, TrainedRun], out: Path,
                          progress: bool) -> dict[str, Any]:
    """Score every chosen attack's training pairs; write the CSV and ROC plots; return rows, JSON, Markdown."""
    block = dict(cfg.detection or {})
    names = block.get("attacks") or list(cfg.attacks)
    kwargs = detection_kwargs(block, list(cfg.attacks))
    kwargs.setdefault("seed", cfg.seed)
    rows, results, files = [], {}, {}
    for name in names:
        run = runs[name]
        dm = build_datamodule(run)
        try:
            res = run_detection(run.model, dm, poisoned_truth(run.directory, dm), progress=progress, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"detection: {exc}") from None
        rows += [{"attack": name, **r} for r in res.to_rows()]
        results[name] = res.as_dict()
        files[f"roc_{name}"] = str(res.plot_roc(out / f"roc_{name}.png", title=f"{name}: detection of poisoned pairs"))
    files["detection_csv"] = str(write_csv(out / "detection.csv", rows, DETECTION_FIELDS))
    head = ["attack", "method", "ROC-AUC", "precision", "recall", "flagged", "poisoned / pairs", "time (s)"]
    table = [[r["attack"], r["method"], _fmt(r["roc_auc"]), _fmt(r["precision"]), _fmt(r["recall"]),
              str(r["flagged"]), f"{r['n_poisoned']} / {r['n_pairs']}", f"{r['seconds']:.1f}"] for r in rows]
    lines = ["### Detection of poisoned training pairs (label-free)", "", *markdown_lines(head, table), "",
             "ROC-AUC 0.5 is chance; precision and recall are of the top-k flagged pairs "
             "(lit_sr.backdoor_defenses.detection). ROC curves: " +
              ", ".join(f"`roc_{n}.png`" for n in names) + ".", ""]
    return {"rows": rows, "results": results, "files": files, "markdown": "\n".join(lines)}
