"""``last.ckpt`` that always holds the latest training state, whatever the monitored metric does."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` every ``every_n_train_steps`` steps or ``every_n_epochs`` epochs, and when fit ends.

    Lightning 2.6's ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt`` only
    when it saves a top-k file, i.e. when the metric improves, so a resume from ``last.ckpt`` can go
    back in time. This callback has no monitor: it overwrites one ``last.ckpt`` on its schedule and,
    at the end of ``fit`` (``max_steps`` reached mid-epoch included), once more unless that step is
    already saved. Keep the best checkpoint with a separate ``ModelCheckpoint(monitor=...,
    save_last=False)``, listed first so that ``ckpt_path="best"`` refers to it.

    On SIGTERM (a cluster's pre-emption, ``kill``), Lightning stops the loop; this callback then
    writes ``last.ckpt`` of the step reached, so the run resumes from there (``--ckpt_path``).

    Args:
        dirpath: folder (default: the logger's ``<log_dir>/checkpoints``).
        every_n_train_steps: save every this many optimiser steps (0: off).
        every_n_epochs: save at the end of every this many training epochs (0: off; the default 1
            applies only when ``every_n_train_steps`` is 0).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 0, every_n_epochs: int | None = None):
        if every_n_epochs is None:
            every_n_epochs = 0 if every_n_train_steps else 1
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                         save_last=False, every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=True, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(kind="last", every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._every_n_epochs)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            self.on_train_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        self.last_model_path = self.best_model_path
