"""Stop ``predict`` on SIGTERM, as Lightning already does for ``fit``, ``validate`` and ``test``."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StopOnSigterm(L.Callback):
    """Ends a ``predict`` run after the batch during which SIGTERM arrived.

    Lightning's signal handler only sets ``trainer.received_sigterm``; its fit and evaluation loops
    check the flag after each batch, its prediction loop does not, so a long inference ignored
    ``kill`` (issue 24). This raises Lightning's own :class:`SIGTERMException` (a ``SystemExit``)
    there, after the batch's outputs were written (every written file is whole: the writer writes
    atomically). SIGINT needs nothing: Python raises ``KeyboardInterrupt``, which Lightning turns
    into a graceful stop. ``train.py`` adds this callback to every run.
    """

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.received_sigterm:
            rank_zero_warn(f"predict stopped by SIGTERM after batch {batch_idx} (dataloader {dataloader_idx}); "
                           "the files written so far are complete")
            raise SIGTERMException
