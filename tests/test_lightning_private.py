"""The private LightningCLI behaviour lit-sr builds on, pinned: when a Lightning release changes it, this fails.

``lit_sr.jobs.train.cli.SRLightningCLI`` overrides ``LightningCLI._parse_ckpt_path`` (to re-apply ``--model.*``
arguments typed on the command line after the checkpoint's hyper-parameters) and the training
entry point overrides ``_prepare_subcommand_parser`` (``predict`` keeps no predictions in memory).
Both are private, so ``pyproject.toml`` bounds Lightning's minor version; before raising the bound,
run this file against the new release: it checks that both hooks still exist with the signatures
used, are still called once per CLI, and that the upstream merge still lets the checkpoint win
(the behaviour the override corrects; if upstream fixed it, the override can go). ``lit-sr fit``
also relies on the trainer's private callback and module dispatchers skipping a hook that is not
callable, on ``LightningModule``'s per-batch hooks being empty, on ``ModelCheckpoint.on_train_batch_end``
doing nothing without a per-step schedule (``lit_sr.training.batch_hooks``), on the dispatchers
recording the running hook in ``pl_module._current_fx_name`` (``lit_sr.training.hook_name``) and on
``PassThroughProfiler`` being the Trainer's default (``lit_sr.training.no_profiler``): pinned here too.
"""

from __future__ import annotations

import copy
import dis
import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer import call

from lit_sr.jobs.train.cli import SRLightningCLI
from lit_sr.training.batch_hooks import TRAINING_BATCH_HOOKS
from lit_sr.training.hook_name import HOOK_NAME_ATTRIBUTE

MODEL = ["--model", "lit_sr.modules.SRModule", "--model.init_args.arch", "edsr",
         "--model.init_args.arch_kwargs", "{num_feat: 8, num_block: 1}", "--model.init_args.scale", "2"]
DATA = ["--data", "datamodules.EmbeddedPhotosDataModule", "--data.init_args.scale", "2"]
TRAINER = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]"]


def _cli(klass: type[LightningCLI], args: list[str]) -> LightningCLI:
    return klass(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_callback=None, args=args, run=False)


def _checkpoint(tmp_path, lr: float) -> str:
    """A checkpoint holding what LightningCLI saves as hyper-parameters (``_class_path``, ``_instantiator``)."""
    cli = _cli(LightningCLI, [*MODEL, "--model.init_args.lr", str(lr), *DATA, *TRAINER])
    hparams = dict(cli.model.hparams)
    assert hparams["_class_path"] == "lit_sr.modules.SRModule"  # what _parse_ckpt_path unpacks
    path = tmp_path / "hp.ckpt"
    torch.save({"hyper_parameters": hparams}, path)
    return str(path)


def test_the_private_hooks_exist_with_the_signatures_lit_sr_overrides():
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    params = inspect.signature(LightningCLI._prepare_subcommand_parser).parameters
    assert list(params)[:3] == ["self", "klass", "subcommand"]
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_each_hook_is_called_once_per_cli(tmp_path, monkeypatch):
    calls: list[str] = []

    class Spy(LightningCLI):
        def _parse_ckpt_path(self) -> None:
            calls.append("ckpt")
            super()._parse_ckpt_path()

        def _prepare_subcommand_parser(self, klass, subcommand, **kwargs):
            calls.append(subcommand)
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

    monkeypatch.setattr(Spy, "_run_subcommand", lambda self, subcommand: None)
    Spy(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=None, args=["fit", *MODEL, *DATA, *TRAINER])
    assert calls.count("ckpt") == 1
    assert {"fit", "validate", "test", "predict"} <= set(calls)  # one parser per subcommand, predict included


@pytest.mark.parametrize("klass, expected", [(LightningCLI, 0.5), (SRLightningCLI, 0.0123)])
def test_the_checkpoint_wins_upstream_and_the_command_line_wins_in_lit_sr(tmp_path, monkeypatch, klass, expected):
    ckpt = _checkpoint(tmp_path, lr=0.5)
    monkeypatch.setattr(klass, "_run_subcommand", lambda self, subcommand: None)
    args = ["fit", *MODEL, "--model.init_args.lr", "0.0123", *DATA, *TRAINER, "--ckpt_path", ckpt]
    if klass is SRLightningCLI:
        with pytest.warns(UserWarning, match="given on the command line overrides"):
            cli = klass(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        save_config_callback=None, args=args)
    else:
        cli = klass(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    save_config_callback=None, args=args)
    # Upstream: the checkpoint's lr replaces the one typed on the command line (if this changes, the
    # override in lit_sr.jobs.train.cli is no longer needed); lit-sr: the typed value wins.
    assert cli.model.hparams.lr == pytest.approx(expected)


def test_the_callback_dispatcher_skips_a_hook_that_is_not_callable():
    """``lit_sr.training.batch_hooks`` hides empty hooks by setting them to ``None`` on the instance."""
    assert "if callable(fn):" in inspect.getsource(call._call_callback_hooks)
    seen: list[str] = []

    class Hidden(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            seen.append("end")

    hidden = Hidden()
    hidden.on_train_batch_start = None  # what skip_noop_batch_hooks does
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[hidden])
    trainer.fit(BoringModel())  # no TypeError for the None hook, and the real one still runs
    assert seen == ["end", "end"]


@pytest.mark.parametrize("kwargs", [{}, {"monitor": "val/psnr_y", "mode": "max", "save_last": True}])
def test_a_checkpoint_without_a_per_step_schedule_does_nothing_after_a_training_batch(tmp_path, kwargs):
    """``batch_hooks`` hides ``ModelCheckpoint.on_train_batch_end`` when no per-step schedule is set."""
    calls: list[str] = []

    class Watched(ModelCheckpoint):
        def on_train_batch_end(self, *args) -> None:
            state = lambda: {k: copy.deepcopy(v) for k, v in vars(self).items() if not callable(v)}  # noqa: E731
            before = state()
            super().on_train_batch_end(*args)
            calls.append("end")
            assert state() == before  # no state touched

    checkpoint = Watched(dirpath=tmp_path, **kwargs)
    assert checkpoint._every_n_train_steps == 0 and checkpoint._train_time_interval is None
    saved = []
    checkpoint._save_topk_checkpoint = lambda *a: saved.append("topk")
    checkpoint._save_last_checkpoint = lambda *a: saved.append("last")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint],
                        default_root_dir=tmp_path)
    real_end = checkpoint.on_train_batch_end

    def end(*args):
        saved_before = len(saved)
        real_end(*args)
        assert len(saved) == saved_before  # nothing saved after a batch

    checkpoint.on_train_batch_end = end
    trainer.fit(BoringModel())
    assert calls == ["end"] * 3


def _does_nothing(fn) -> bool:
    """``fn``'s body only returns ``None`` (a docstring and ``pass`` at most)."""
    ops = [(i.opname, i.argval) for i in dis.get_instructions(fn)]
    return all(op in ("RESUME", "NOP", "RETURN_VALUE", "RETURN_CONST", "LOAD_CONST") for op, _ in ops) and all(
        value is None for op, value in ops if op in ("LOAD_CONST", "RETURN_CONST"))


def test_the_does_nothing_check_tells_an_empty_hook_from_one_that_works():
    def works(self, batch, batch_idx):
        return batch

    assert _does_nothing(L.Callback.on_before_backward) and not _does_nothing(works)
    assert not _does_nothing(L.LightningModule.on_before_batch_transfer)  # returns the batch


@pytest.mark.parametrize("hook", TRAINING_BATCH_HOOKS)
def test_the_lightning_module_training_batch_hooks_are_empty(hook):
    """``batch_hooks`` hides a module's training-step hooks that its class inherits from ``LightningModule``."""
    assert _does_nothing(getattr(L.LightningModule, hook))


def test_the_module_hook_dispatcher_skips_a_hook_that_is_not_callable():
    source = inspect.getsource(call._call_lightning_module_hook)
    assert "if not callable(fn):" in source
    seen: list[str] = []

    class Watched(BoringModel):
        def on_train_batch_end(self, *args) -> None:
            seen.append("end")

    model = Watched()
    model.on_train_batch_start = model.on_before_backward = None  # what skip_noop_batch_hooks does
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    assert seen == ["end", "end"]


def test_the_dispatchers_record_the_running_hook_in_the_attribute_plain_hook_name_stores():
    for dispatcher in (call._call_lightning_module_hook, call._call_callback_hooks, call._call_strategy_hook):
        assert f"pl_module.{HOOK_NAME_ATTRIBUTE} = hook_name" in inspect.getsource(dispatcher)
    assert getattr(BoringModel(), HOOK_NAME_ATTRIBUTE) is None


def test_the_trainer_default_profiler_is_exactly_pass_through():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert type(trainer.profiler) is PassThroughProfiler
