"""``lit-sr fit`` hides its callbacks' empty per-batch hooks from Lightning's dispatcher: fewer calls, the same run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from callbacks import LastCheckpoint, RunSummary, SRImageLogger
from lit_sr.io import load_checkpoint
from lit_sr.jobs.train.cli import train_cli
from lit_sr.modules import SRModule
from lit_sr.training.batch_hooks import (
    BATCH_HOOKS,
    noop_batch_hooks,
    restore_batch_hooks,
    skip_noop_batch_hooks,
)
from lit_sr.training.stop_on_nonfinite import StopOnNonFiniteLoss

ROOT = Path(__file__).resolve().parents[1]


def _pairs(n: int, hr: int = 16) -> list[dict]:
    """``n`` random x2 training pairs as lit-sr's batch dicts; their content does not matter here."""
    g = torch.Generator().manual_seed(0)
    hrs = torch.rand(n, 3, hr, hr, generator=g)
    lrs = torch.nn.functional.avg_pool2d(hrs, 2)
    return [{"lr": lrs[i], "hr": hrs[i], "index": i, "path": f"{i}.png"} for i in range(n)]


class Counter(L.Callback):
    """Overrides two batch hooks and counts them: an overridden hook must still run every batch."""

    def __init__(self):
        self.starts = self.ends = 0

    def on_train_batch_start(self, *args) -> None:
        self.starts += 1

    def on_validation_batch_end(self, *args) -> None:
        self.ends += 1


def test_only_hooks_that_do_nothing_are_hidden_and_restored():
    counter, summary = Counter(), RunSummary()
    best = ModelCheckpoint(monitor="val/psnr_y", mode="max")  # saves at validation ends only
    stepped, timed = ModelCheckpoint(every_n_train_steps=3), ModelCheckpoint(train_time_interval=timedelta(minutes=5))
    assert set(noop_batch_hooks(counter)) == set(BATCH_HOOKS) - {"on_train_batch_start", "on_validation_batch_end"}
    assert "on_train_batch_end" in noop_batch_hooks(best)  # returns at once without a per-step schedule
    assert "on_train_batch_end" in noop_batch_hooks(LastCheckpoint())
    for scheduled in (stepped, timed, LastCheckpoint(every_n_train_steps=3)):
        assert "on_train_batch_end" not in noop_batch_hooks(scheduled)  # it saves on its schedule
    hidden = skip_noop_batch_hooks([counter, summary, best, stepped])
    assert hidden == (len(BATCH_HOOKS) - 2) + 2 * len(BATCH_HOOKS) + (len(BATCH_HOOKS) - 1)
    assert counter.on_before_backward is None and summary.on_train_batch_end is None
    assert best.on_train_batch_end is None and callable(stepped.on_train_batch_end)
    assert callable(counter.on_train_batch_start)
    assert callable(RunSummary().on_train_batch_end)  # the class and other instances are unchanged
    assert skip_noop_batch_hooks([counter]) == 0  # hiding twice hides nothing more
    restore_batch_hooks([counter, summary, best, stepped])
    assert all(callable(getattr(cb, h)) for cb in (counter, summary, best, stepped) for h in BATCH_HOOKS)
    assert not any(h in vars(cb) for cb in (counter, summary, best, stepped) for h in BATCH_HOOKS)


def _fit(tmp_path: Path, hide: bool) -> tuple[str, Counter, list[str], dict]:
    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="cosine", export_weights=False)
    counter, logger = Counter(), CSVLogger(tmp_path, name="run", version=0)
    callbacks = [LearningRateMonitor(logging_interval="step"),
                 ModelCheckpoint(monitor="val/psnr_y", mode="max", save_top_k=1, filename="best"),
                 LastCheckpoint(every_n_train_steps=4), SRImageLogger(num_images=1), RunSummary(),
                 StopOnNonFiniteLoss(), counter]
    if hide:
        skip_noop_batch_hooks(callbacks)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=2, logger=logger, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    dispatched: list[str] = []
    profile = trainer.profiler.profile
    trainer.profiler.profile = lambda name: (dispatched.append(name), profile(name))[1]
    data = DataLoader(_pairs(8), batch_size=2)  # 4 steps an epoch, validation on the same 4 batches
    trainer.fit(module, data, data)
    folders = {Path(trainer.checkpoint_callback.dirpath), Path(callbacks[2].dirpath)}
    saved = {p.name: load_checkpoint(p)["state_dict"] for folder in folders for p in folder.glob("*.ckpt")}
    return (Path(logger.log_dir) / "metrics.csv").read_text(), counter, dispatched, saved


def test_a_fit_dispatches_no_empty_hook_and_logs_saves_and_calls_the_same(tmp_path):
    logged, counter, dispatched, saved = _fit(tmp_path / "hidden", hide=True)
    all_logged, all_counter, all_dispatched, all_saved = _fit(tmp_path / "all", hide=False)
    # the same logged points (loss, learning rate, validation metrics) at the same steps, digit for digit
    assert logged == all_logged
    header = logged.splitlines()[0].split(",")
    assert {"step", "train/loss", "lr-Adam", "val/psnr_y"} <= set(header) and len(logged.splitlines()) > 4
    # the same checkpoints with the same weights
    assert saved.keys() == all_saved.keys() == {"best.ckpt", "last.ckpt"}
    for name in saved:
        assert all(torch.equal(saved[name][k], all_saved[name][k]) for k in saved[name])
    # the overridden hooks ran on every batch either way
    assert (counter.starts, counter.ends) == (all_counter.starts, all_counter.ends) == (8, 8)
    # Lightning dispatched no empty batch hook, and everything else in the same order
    hidden = set(all_dispatched) - set(dispatched)
    assert {n.rsplit(".", 1)[1] for n in hidden} <= set(BATCH_HOOKS)
    assert [n for n in all_dispatched if n not in hidden] == dispatched
    summary_batch_hooks = [n for n in all_dispatched
                           if n.startswith("[Callback]RunSummary.") and n.rsplit(".", 1)[1] in BATCH_HOOKS]
    assert len(summary_batch_hooks) == 8 * 6 + 8 * 2  # 6 hooks a training batch, 2 a validation batch
    assert set(summary_batch_hooks) <= hidden
    assert not [n for n in dispatched if n.startswith("[Callback]") and ("backward" in n or "zero_grad" in n)]
    assert sum("LearningRateMonitor" in n and n.endswith(".on_train_batch_start") for n in dispatched) == 8

def test_lit_sr_fit_hides_the_empty_hooks_of_every_callback_it_builds():
    trainer = train_cli(["--config", str(ROOT / "configs" / "train" / "quickstart.yaml"), "--trainer.logger", "false"],
                        run=False).trainer
    assert len(trainer.callbacks) >= 8
    for callback in trainer.callbacks:
        assert noop_batch_hooks(callback) == []
        assert all(getattr(callback, h) is None or getattr(type(callback), h) is not getattr(L.Callback, h)
                   for h in BATCH_HOOKS)
    # what does work per step is still dispatched; the checkpoints save at validation and epoch ends
    assert callable(trainer.progress_bar_callback.on_train_batch_end)
    assert sum(callable(c.on_train_batch_end) for c in trainer.callbacks) == 2  # the bar, the NaN check
    assert sum(callable(c.on_train_batch_start) for c in trainer.callbacks) == 1  # the lr monitor
    assert trainer.checkpoint_callback.on_train_batch_end is None
