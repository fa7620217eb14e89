"""Lightning's tqdm progress bar, redrawn at most every ``min_interval`` seconds during training."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class TimedProgressBar(TQDMProgressBar):
    """The training bar of :class:`~lightning.pytorch.callbacks.TQDMProgressBar`, redrawn by the clock.

    Lightning's bar redraws after every ``refresh_rate``-th training batch (default: every batch),
    twice per batch (the counter, then the metrics), and gathers the progress-bar metrics each time:
    about 1 ms of CPU per step, which on a small network's few-millisecond step is a large share of
    the step (``benchmarks/step_overhead.py``). A fixed ``refresh_rate`` would trade that for a
    bar that stalls on slow networks (``refresh_rate: 20`` at 2 s a step redraws every 40 s). This
    bar instead redraws when ``min_interval`` seconds have passed since its last redraw, and always
    on an epoch's last batch: the same counter, rate and metrics, up to 1 / ``min_interval`` times
    a second (tqdm's own ``mininterval`` is 0.1 s), so a slow step still redraws every step and a
    fast one costs a clock read. Validation, test and predict bars are Lightning's, unchanged.

    ``lit-sr fit`` (``train.py``) uses it in place of Lightning's default bar; a bar configured in
    ``trainer.callbacks`` is kept as given.

    Args:
        min_interval: seconds between two redraws of the training bar (0: every batch, Lightning's
            behaviour).
        refresh_rate: as Lightning's (0 hides the bars); batches between redraws of the validation,
            test and predict bars.
        process_position: as Lightning's.
        leave: as Lightning's.
    """

    def __init__(self, min_interval: float = 0.1, refresh_rate: int = 1, process_position: int = 0,
                 leave: bool = False):
        if not min_interval >= 0:  # also refuses NaN
            raise ValueError(f"min_interval must be >= 0 seconds, got {min_interval}")
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.min_interval = float(min_interval)
        self._last_redraw = -float("inf")

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._last_redraw = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or not self.is_enabled:
            return
        now = time.monotonic()
        if now - self._last_redraw < self.min_interval and batch_idx + 1 != bar.total:
            return
        self._last_redraw = now
        bar.n = batch_idx + 1  # what Lightning's bar does on its redraws
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # one redraw: counter and metrics together
