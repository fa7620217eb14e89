"""The report's robust fine-tuning and robustness-index studies, run and written after the main loops.

Kept apart from :mod:`lit_sr.jobs.evaluate.runner` and :mod:`lit_sr.jobs.evaluate.writers` (two hook lines there):
:mod:`lit_sr.jobs.evaluate.robust` (worst case, defenses in the same table, trade-off plot) and
:mod:`lit_sr.jobs.evaluate.robustness_index` (Choi's index and its scatter).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.robust import append_to_summary, run_robust_study, write_robust_study
from lit_sr.jobs.evaluate.robustness_index import run_index_study, write_index_study
from lit_sr.jobs.evaluate.settings import ReportSettings
from lit_sr.jobs.evaluate.writers import write_json


def run_robust_studies(cfg: ReportSettings, models: Mapping[str, nn.Module], pairs_of: Callable, device: torch.device,
                       progress: bool = True) -> dict:
    """``{"robust": ..., "robustness_index": ...}``, each ``None`` when the config has no such block."""
    out = {"robust": None, "robustness_index": None}
    if cfg.robust is not None:
        scale = cfg.models[cfg.robust.base].scale
        out["robust"] = run_robust_study(cfg, models, pairs_of(cfg.robust.dataset, scale), device, progress)
    if cfg.robustness_index is not None:
        study = cfg.robustness_index
        scales = {cfg.models[m].scale for m in study.models}
        if len(scales) > 1:  # one image set for all: the same LR inputs for every model
            raise ConfigError(f"robustness_index.models: all must share one scale, got {sorted(scales)}")
        out["robustness_index"] = run_index_study(cfg, models, pairs_of(study.dataset, scales.pop()), device, progress)
    return out


def write_robust_studies(out: Path, studies: Mapping, summary: str | Path, results_json: str | Path) -> dict[str, str]:
    """Their CSV files and plots, their sections appended to ``summary.md``, their results added to ``results.json``."""
    files: dict[str, str] = {}
    sections = []
    if studies.get("robust") is not None:
        written, text = write_robust_study(out, studies["robust"])
        files.update(written)
        sections.append(text)
    if studies.get("robustness_index") is not None:
        written, text = write_index_study(out, studies["robustness_index"])
        files.update(written)
        sections.append(text)
    if sections:
        append_to_summary(summary, "\n".join(sections))
        payload = json.loads(Path(results_json).read_text())
        payload.update({k: v for k, v in studies.items() if v is not None})
        write_json(results_json, payload)
    return files
