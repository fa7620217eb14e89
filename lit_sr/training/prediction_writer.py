"""Write ``predict`` outputs as PNG files, with the inference-time settings (folder, tiling) of this run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_sr.io import write_image
from lit_sr.validation import check_int


@runtime_checkable
class TiledPredictor(Protocol):
    """What the writer needs from a module: its scale, and a place to put this run's tiling."""

    scale: int
    predict_tiling: tuple[int | None, int] | None


class PredictionWriter(BasePredictionWriter):
    """Writes every predicted SR image to ``<output_dir>/<input stem>_x<scale>.png`` (atomically).

    Inference settings live here, not in the module's hyper-parameters, so that a checkpoint given
    with ``--ckpt_path`` (whose saved hyper-parameters LightningCLI applies over the command line)
    cannot redirect or re-tile a prediction. ``train.py`` always adds one, configured with
    ``--prediction.output_dir``, ``--prediction.tile`` and ``--prediction.tile_overlap``.

    Args:
        output_dir: folder of the PNG files (created when missing).
        tile: LR tile side for the module's forward (``None``: whole images); see
            :func:`lit_sr.ops.tiled_forward` (seamless when ``tile_overlap // 2`` covers the
            network's receptive radius).
        tile_overlap: LR pixels shared by neighbouring tiles, in ``[0, tile)``.
    """

    def __init__(self, output_dir: str = "predictions", tile: int | None = None, tile_overlap: int = 16):
        super().__init__(write_interval="batch")
        if tile is not None:
            check_int(tile, "tile", minimum=1)
            check_int(tile_overlap, "tile_overlap", minimum=0)
            if tile_overlap >= tile:
                raise ValueError(f"tile_overlap must be smaller than tile={tile}, got {tile_overlap}")
        self.output_dir, self.tile, self.tile_overlap = Path(output_dir), tile, tile_overlap
        self.written: list[Path] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, TiledPredictor):
            raise TypeError(f"PredictionWriter needs a module with `scale` and `predict_tiling` "
                            f"(lit_sr.modules.SRModule), got {type(pl_module).__name__}")
        pl_module.predict_tiling = (self.tile, self.tile_overlap)
        self.written = []

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.predict_tiling = None

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(prediction, torch.Tensor) or prediction.dim() != 4:
            raise TypeError(f"PredictionWriter expects predict_step to return an (N, C, H, W) tensor, got "
                            f"{type(prediction).__name__}")
        if "path" not in batch or len(batch["path"]) != prediction.shape[0]:
            raise KeyError("PredictionWriter needs the batch's 'path' entry (one per image) to name the files")
        for image, source in zip(prediction, batch["path"]):
            target = self.output_dir / f"{Path(source).stem}_x{pl_module.scale}.png"
            self.written.append(write_image(image, target))
