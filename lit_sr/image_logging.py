"""Pictures to any Lightning logger, and the line that tells a person where to look.

One function for every callback and job that shows a picture: :func:`log_image` sends a
``(3, H, W)`` image in [0, 1] to each logger of a run in the way that logger takes pictures, and
writes the PNG file whatever the loggers are:

======================  ===============================================================
logger                  what it gets
======================  ===============================================================
``TensorBoardLogger``   ``SummaryWriter.add_image(tag, image, step)`` (+ ``add_text`` caption)
``WandbLogger``         ``WandbLogger.log_image(key=tag, images=[...], step, caption)``
``MLFlowLogger``        ``MlflowClient.log_image(run_id, image, artifact_file=images/<tag>/step<N>.png)``
``CSVLogger``           nothing (a CSV file holds numbers): the PNG file is the picture
any other logger        ``experiment.add_image`` where its experiment has one (a SummaryWriter-like)
======================  ===============================================================

:func:`logger_hints` is the end-of-run line for the loggers actually in use (``tensorboard
--logdir`` only for TensorBoard, the metrics file for CSV, ``mlflow ui`` for MLflow, ...).

The caller decides the rank: call these on global rank 0 only (they do not communicate).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lit_sr.io import to_uint8_array, write_image

__all__ = ["log_image", "logger_hints", "logger_kind"]


def logger_kind(logger: Any) -> str:
    """``"tensorboard"``, ``"wandb"``, ``"mlflow"``, ``"csv"`` or ``"other"``, read from the class.

    Classes are matched by name along the MRO, so a subclass of a Lightning logger counts as its
    base and the optional packages (wandb, mlflow) are never imported here.
    """
    names = {cls.__name__ for cls in type(logger).__mro__}
    for kind, cls_name in (("tensorboard", "TensorBoardLogger"), ("wandb", "WandbLogger"),
                           ("mlflow", "MLFlowLogger"), ("csv", "CSVLogger")):
        if cls_name in names:
            return kind
    return "other"


def _safe_tag(tag: str) -> str:
    """A tag as a relative artifact path (MLflow): letters, digits, ``_-./`` kept, the rest ``_``."""
    return re.sub(r"[^A-Za-z0-9_./-]", "_", tag).strip("/") or "image"


def log_image(
    loggers: Iterable[Any],
    tag: str,
    image: torch.Tensor,
    step: int,
    png: str | Path | None = None,
    caption: str | None = None,
) -> list[str]:
    """Send one picture to every logger in ``loggers`` and write it as a PNG file.

    Args:
        loggers: the run's loggers (``trainer.loggers``; an empty list is fine).
        tag: the picture's name, ``/``-separated (``val_images/0``, ``backdoor/grid``).
        image: ``(3, H, W)`` (or ``(1, H, W)``) float in [0, 1], any device.
        step: the global step it belongs to.
        png: where to write the PNG file (always written when given, whatever the loggers).
        caption: what the picture's columns are, for the loggers that show a caption
            (TensorBoard as a text entry ``<tag>_caption``, W&B under the image).

    Returns:
        The kinds of the loggers that took the picture, plus ``"png"`` when the file was written
        (so a caller or a test can tell a logger that got nothing from one that did).
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"log_image({tag!r}) takes one (3, H, W) image; got shape {tuple(image.shape)}")
    image = image.detach().float().clamp(0, 1).cpu()
    reached: list[str] = []
    for logger in loggers:
        kind = logger_kind(logger)
        if kind == "csv":
            continue
        if kind == "wandb":
            kwargs = {"caption": [caption]} if caption else {}
            logger.log_image(key=tag, images=[to_uint8_array(image)], step=step, **kwargs)
        elif kind == "mlflow":
            artifact = f"images/{_safe_tag(tag)}/step{step:07d}.png"
            logger.experiment.log_image(logger.run_id, to_uint8_array(image), artifact_file=artifact)
        else:
            experiment = getattr(logger, "experiment", None)
            if not hasattr(experiment, "add_image"):
                continue
            experiment.add_image(tag, image, global_step=step)
            if caption and hasattr(experiment, "add_text"):
                experiment.add_text(f"{tag}_caption", caption, global_step=step)
        reached.append(kind)
    if png is not None:
        write_image(image, png)
        reached.append("png")
    return reached


def logger_hints(loggers: Iterable[Any], log_dir: str | Path | None = None) -> str:
    """How to look at this run's logs, one line per logger in use (empty when there is none).

    ``log_dir`` is the run's folder (``trainer.log_dir``): the CSV and PNG hints name it.
    """
    lines = []
    for logger in loggers:
        kind = logger_kind(logger)
        if kind == "tensorboard":
            root = Path(logger.log_dir).parent if getattr(logger, "log_dir", None) else Path(log_dir or ".").parent
            lines.append(f"TensorBoard:  tensorboard --logdir {root}   (then open http://localhost:6006)")
        elif kind == "csv":
            folder = getattr(logger, "log_dir", None) or log_dir
            lines.append(f"CSV metrics:  {Path(folder) / 'metrics.csv'}   (pictures: the PNG files beside it)")
        elif kind == "mlflow":
            uri = getattr(logger, "_tracking_uri", None) or "<tracking uri>"
            lines.append(f"MLflow:       mlflow ui --backend-store-uri {uri}   (run {logger.run_id})")
        elif kind == "wandb":
            folder = getattr(logger, "save_dir", None) or log_dir
            lines.append(f"W&B:          the run's page (offline runs: wandb sync {folder}/wandb/offline-run-*)")
        else:
            lines.append(f"{type(logger).__name__}:  logs in {getattr(logger, 'log_dir', None) or log_dir}")
    return "\n".join(lines)
