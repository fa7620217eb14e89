"""Print a short end-of-run table (model vs bicubic on val) and how to look at the run's logs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_sr.image_logging import logger_hints
from lit_sr.io import atomic_write
from lit_sr.tables import text_table


def training_record(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int]:
    """How much training a run had: optimiser steps, the module's parameters (an ``SRModule``'s are
    its network's) and their product (``param_steps``, the compute axis of a study's scale ladder: at
    a fixed batch and patch size a convolutional network's training FLOPs are proportional to it)."""
    params = sum(p.numel() for p in pl_module.parameters())
    return {"steps": int(trainer.global_step), "parameters": int(params),
            "param_steps": int(trainer.global_step) * int(params)}


class RunSummary(L.Callback):
    """At the end of ``fit``, prints model vs bicubic PSNR/SSIM on val and how to open the logs.

    The hint names the loggers in use (``tensorboard --logdir`` for TensorBoard only, the
    metrics file for CSV, ``mlflow ui`` for MLflow: :func:`lit_sr.image_logging.logger_hints`).

    The numbers are the logged ``val/*`` and ``val/bicubic_*`` metrics of the last validation
    (reduced across ranks); they are also written to ``<log_dir>/summary.json``.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir or "."  # collective under DDP: read on every rank
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        rows = []
        for name in ("psnr_y", "psnr_rgb", "ssim_y"):
            model_v = metrics.get(f"val/{name}")
            bic_v = metrics.get(f"val/bicubic_{name}")
            if model_v is None:
                continue
            fmt = "{:.4f}" if name.startswith("ssim") else "{:.2f}"
            rows.append((name, fmt.format(model_v), fmt.format(bic_v) if bic_v is not None else "-",
                         fmt.format(model_v - bic_v) if bic_v is not None else "-"))
        if not trainer.is_global_zero:
            return
        text = text_table(rows, ("val metric", "model", "bicubic", "gain"))
        hints = logger_hints(trainer.loggers, log_dir)
        rank_zero_info(f"\n{text}\n" + (f"\n{hints}\n" if hints else ""))
        with atomic_write(Path(log_dir) / "summary.json") as tmp:
            tmp.write_text(json.dumps({"val": metrics, "training": training_record(trainer, pl_module)}, indent=2))
