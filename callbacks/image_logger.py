"""Log labelled LR / bicubic / SR / HR comparisons of the first validation images to every logger and PNG."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from callbacks.backdoor_pictures import PADDING, header_strip
from lit_sr.image_logging import log_image
from lit_sr.ops import imresize

COLUMNS = ("LR (nearest)", "bicubic", "SR", "HR")


def comparison_row(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor | None, scale: int) -> torch.Tensor:
    """One image as ``[LR (nearest, enlarged) | bicubic | SR | HR]`` side by side under a strip naming
    the columns, ``(3, 14 + H, 4W)`` (three columns when ``hr`` is ``None``)."""
    lr_big = F.interpolate(lr[None].float(), scale_factor=scale, mode="nearest")[0]
    bic = imresize(lr.float(), scale).clamp(0, 1)
    tiles = [lr_big, bic, sr.float()] + ([hr.float()] if hr is not None else [])
    h = min(t.shape[-2] for t in tiles)
    w = min(t.shape[-1] for t in tiles)
    body = make_grid([t[..., :h, :w].cpu() for t in tiles], nrow=len(tiles), padding=PADDING, pad_value=1.0)
    header = header_strip(COLUMNS[: len(tiles)], w)
    width = min(header.shape[-1], body.shape[-1])
    return torch.cat([header[..., :width], body[..., :width]], dim=1)


class SRImageLogger(L.Callback):
    """Every ``every_n_epochs`` validations, logs the first ``num_images`` comparisons.

    Rows are ``LR (nearest x scale) | bicubic | SR | HR`` under a strip naming the columns; they go to
    every logger of the run as ``val_images/<k>`` (:func:`lit_sr.image_logging.log_image`: TensorBoard,
    W&B, MLflow) and, with ``save_png``, to ``<log_dir>/images/epoch<E>_<k>.png``.

    Args:
        num_images: validation images to show (taken from the first batches).
        every_n_epochs: how often.
        save_png: also write PNG files.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, save_png: bool = True):
        super().__init__()
        self.num_images, self.every_n_epochs, self.save_png = num_images, every_n_epochs, save_png
        self._shown = 0
        self._log_dir: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP, so read it here, where every rank is.
        self._log_dir = trainer.log_dir

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._shown >= self.num_images:
            return
        if trainer.current_epoch % self.every_n_epochs or not isinstance(outputs, dict) or "sr" not in outputs:
            return
        scale = getattr(pl_module, "scale", outputs["sr"].shape[-1] // batch["lr"].shape[-1])
        for lr, sr, hr in zip(batch["lr"], outputs["sr"], batch["hr"]):
            if self._shown >= self.num_images:
                break
            row = comparison_row(lr, sr, hr, scale)
            self._log(trainer, row, self._shown)
            self._shown += 1

    def _log(self, trainer: L.Trainer, row: torch.Tensor, k: int) -> None:
        png = None
        if self.save_png and self._log_dir:
            png = Path(self._log_dir) / "images" / f"epoch{trainer.current_epoch:04d}_{k}.png"
        log_image(trainer.loggers, f"val_images/{k}", row, trainer.global_step, png=png,
                  caption="columns: " + " | ".join(COLUMNS))
