"""TimedProgressBar: the training bar redrawn by the clock, and ``lit-sr fit`` using it in place of Lightning's."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks import TimedProgressBar
from lit_sr.jobs.train.cli import train_cli

ROOT = Path(__file__).resolve().parents[1]


class CountingBar(TimedProgressBar):
    """Records the counter at every redraw made after a training batch."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.redraws: list[int] = []

    def get_metrics(self, trainer, pl_module):
        if not trainer.training or self.train_progress_bar is None:
            return super().get_metrics(trainer, pl_module)
        self.redraws.append(self.train_progress_bar.n)
        return super().get_metrics(trainer, pl_module)


def _fit(tmp_path, bar: TimedProgressBar) -> L.Trainer:
    torch.manual_seed(0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=6, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[bar],
                        default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    return trainer


def test_a_fast_run_redraws_at_each_epochs_end_only(tmp_path):
    bar = CountingBar(min_interval=3600.0)
    _fit(tmp_path, bar)
    # one redraw after each epoch's last batch (counter 6) and one at each epoch's end, none in between
    assert bar.redraws == [6, 6, 6, 6]
    assert bar.train_progress_bar.n == 6


def test_min_interval_zero_redraws_every_batch_as_lightning_does(tmp_path):
    bar = CountingBar(min_interval=0.0)
    _fit(tmp_path, bar)
    assert bar.redraws == [1, 2, 3, 4, 5, 6, 6] * 2


def test_min_interval_is_validated():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="min_interval must be >= 0 seconds"):
            TimedProgressBar(min_interval=bad)


def _cli_trainer(*extra: str) -> L.Trainer:
    args = ["--config", str(ROOT / "configs" / "train" / "quickstart.yaml"), "--trainer.logger", "false", *extra]
    return train_cli(args, run=False).trainer


def test_lit_sr_fit_uses_the_timed_bar_and_keeps_a_configured_one():
    assert type(_cli_trainer().progress_bar_callback) is TimedProgressBar
    chosen = _cli_trainer("--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar",
                          "--trainer.callbacks.refresh_rate=7")
    assert type(chosen.progress_bar_callback) is TQDMProgressBar and chosen.progress_bar_callback.refresh_rate == 7
    assert sum(isinstance(c, TQDMProgressBar) for c in chosen.callbacks) == 1
    assert _cli_trainer("--trainer.enable_progress_bar", "false").progress_bar_callback is None
