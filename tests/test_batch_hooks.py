"""``lit-sr fit`` dispatches less per step than Lightning's stock Trainer, and runs the same.

It hides the callbacks' and the module's empty per-batch hooks from Lightning's dispatchers
(``lit_sr.training.batch_hooks``), profiles with :class:`~lit_sr.training.NoProfiler` unless a
profiler was asked for, and lit-sr's modules record the running hook's name as a plain attribute
(:class:`~lit_sr.training.PlainHookName`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler
from torch.utils.data import DataLoader

from callbacks import LastCheckpoint, RunSummary, SRImageLogger
from lit_sr.io import load_checkpoint
from lit_sr.jobs.train.cli import train_cli
from lit_sr.modules import SRModule
from lit_sr.training.batch_hooks import (
    BATCH_HOOKS,
    TRAINING_BATCH_HOOKS,
    noop_batch_hooks,
    restore_batch_hooks,
    skip_noop_batch_hooks,
)
from lit_sr.training.hook_name import HOOK_NAME_ATTRIBUTE
from lit_sr.training.no_profiler import NoProfiler, use_no_profiler
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


class StockSRModule(SRModule):
    """``SRModule`` recording the running hook's name through ``nn.Module.__setattr__``, as stock Lightning does."""

    __setattr__ = torch.nn.Module.__setattr__


class HookNameSpy(SRModule):
    """Records the hook name seen in ``training_step`` and counts the assignments of the name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.names_in_step: list[str | None] = []

    def training_step(self, batch, batch_idx):
        self.names_in_step.append(getattr(self, HOOK_NAME_ATTRIBUTE))
        return super().training_step(batch, batch_idx)


def test_only_the_module_hooks_it_inherits_empty_are_hidden():
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2)
    # SRModule's own on_train_batch_end (the EMA update) is kept; the evaluation hooks are never hidden
    assert set(noop_batch_hooks(module)) == set(TRAINING_BATCH_HOOKS) - {"on_train_batch_end"}
    assert skip_noop_batch_hooks([module]) == len(TRAINING_BATCH_HOOKS) - 1
    assert callable(module.on_validation_batch_end) and callable(module.on_predict_batch_start)
    assert module.on_before_backward is None and callable(module.on_train_batch_end)
    assert callable(SRModule(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2).on_before_backward)
    assert "on_before_backward" not in dict(module.named_modules()) and "on_before_backward" not in module.state_dict()
    restore_batch_hooks([module])
    assert all(callable(getattr(module, h)) for h in BATCH_HOOKS) and not any(h in vars(module) for h in BATCH_HOOKS)


def test_the_hook_name_is_a_plain_attribute_and_everything_else_registers_as_before(monkeypatch):
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2)
    checked: list[str] = []
    stock = torch.nn.Module.__setattr__
    conv = torch.nn.Conv2d(3, 3, 1)

    def spy(self, name, value):
        if self is module:
            checked.append(name)
        stock(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", spy)
    module._current_fx_name = "training_step"
    assert checked == [] and vars(module)[HOOK_NAME_ATTRIBUTE] == "training_step"
    module.extra = conv  # a submodule, a parameter and a buffer still register
    module.scale_param = torch.nn.Parameter(torch.ones(1))
    module.register_buffer("counter", torch.zeros(1))
    module.counter = torch.ones(1)
    assert checked == ["extra", "scale_param", "counter"]
    assert "extra.weight" in module.state_dict() and "scale_param" in module.state_dict()
    assert torch.equal(module.state_dict()["counter"], torch.ones(1))
    with pytest.raises(TypeError, match="cannot assign"):
        module.scale_param = 3.0  # nn.Module's checks still apply to every other name


def test_no_profiler_replaces_only_lightnings_default(tmp_path):
    def trainer(**kwargs) -> L.Trainer:
        return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path, **kwargs)

    default, simple = trainer(), trainer(profiler="simple")
    assert use_no_profiler(default) and type(default.profiler) is NoProfiler
    assert not use_no_profiler(simple) and type(simple.profiler) is SimpleProfiler
    assert not use_no_profiler(default)  # already replaced
    profiler = NoProfiler()
    assert profiler.profile("a") is profiler.profile("b")
    with profiler.profile("outer"), profiler.profile("inner"):  # nested hooks, as Lightning nests them
        pass


def test_lit_sr_fit_profiles_with_no_profiler_unless_a_profiler_is_asked_for():
    args = ["--config", str(ROOT / "configs" / "train" / "quickstart.yaml"), "--trainer.logger", "false"]
    cli = train_cli(args, run=False)
    assert type(cli.trainer.profiler) is NoProfiler
    assert noop_batch_hooks(cli.model) == [] and cli.model.on_before_backward is None
    assert type(train_cli([*args, "--trainer.profiler", "simple"], run=False).trainer.profiler) is SimpleProfiler


def _fit(tmp_path: Path, hide: bool, module_class: type[SRModule] = SRModule) -> tuple[str, Counter, list[str], dict]:
    torch.manual_seed(0)
    module = module_class(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2, lr=1e-3,
                          scheduler="cosine", export_weights=False)
    counter, logger = Counter(), CSVLogger(tmp_path, name="run", version=0)
    callbacks = [LearningRateMonitor(logging_interval="step"),
                 ModelCheckpoint(monitor="val/psnr_y", mode="max", save_top_k=1, filename="best"),
                 LastCheckpoint(every_n_train_steps=4), SRImageLogger(num_images=1), RunSummary(),
                 StopOnNonFiniteLoss(), counter]
    if hide:
        skip_noop_batch_hooks([*callbacks, module])
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, log_every_n_steps=2, logger=logger, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    if hide:
        use_no_profiler(trainer)
    assert type(trainer.profiler) is (NoProfiler if hide else PassThroughProfiler)
    dispatched: list[str] = []
    profile = trainer.profiler.profile
    trainer.profiler.profile = lambda name: (dispatched.append(name), profile(name))[1]
    data = DataLoader(_pairs(8), batch_size=2)  # 4 steps an epoch, validation on the same 4 batches
    trainer.fit(module, data, data)
    folders = {Path(trainer.checkpoint_callback.dirpath), Path(callbacks[2].dirpath)}
    saved = {p.name: load_checkpoint(p)["state_dict"] for folder in folders for p in folder.glob("*.ckpt")}
    # the module's class is in its hooks' names: one name for both runs' modules
    dispatched = [n.replace(f"[LightningModule]{module_class.__name__}.", "[LightningModule]module.")
                  for n in dispatched]
    return (Path(logger.log_dir) / "metrics.csv").read_text(), counter, dispatched, saved


def test_a_fit_dispatches_no_empty_hook_and_logs_saves_and_calls_the_same(tmp_path):
    """lit-sr's dispatch (hidden hooks, NoProfiler, the plain hook name) against Lightning's stock one."""
    logged, counter, dispatched, saved = _fit(tmp_path / "hidden", hide=True, module_class=HookNameSpy)
    all_logged, all_counter, all_dispatched, all_saved = _fit(tmp_path / "all", hide=False,
                                                              module_class=StockSRModule)
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
    # the module's empty hooks were hidden too; its own on_train_batch_end (the EMA update) ran every batch
    assert {f"[LightningModule]module.{h}" for h in ("on_train_batch_start", "on_before_backward",
                                                     "on_after_backward", "on_before_optimizer_step",
                                                     "on_before_zero_grad")} <= hidden
    assert dispatched.count("[LightningModule]module.on_train_batch_end") == 8
    assert dispatched.count("[Strategy]SingleDeviceStrategy.training_step") == 8


def test_self_log_sees_the_running_hook_with_the_plain_hook_name(tmp_path):
    """``self.log`` reads the running hook's name (its defaults and checks depend on it): still right."""
    spy = HookNameSpy(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2, export_weights=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    use_no_profiler(trainer)
    trainer.fit(spy, DataLoader(_pairs(6), batch_size=2))
    assert spy.names_in_step == ["training_step"] * 3
    assert getattr(spy, HOOK_NAME_ATTRIBUTE) is None  # restored after the fit, as Lightning leaves it

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
