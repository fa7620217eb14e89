"""The private LightningCLI behaviour lit-sr builds on, pinned: when a Lightning release changes it, this fails.

``lit_sr.jobs.train.cli.SRLightningCLI`` overrides ``LightningCLI._parse_ckpt_path`` (to re-apply ``--model.*``
arguments typed on the command line after the checkpoint's hyper-parameters) and the training
entry point overrides ``_prepare_subcommand_parser`` (``predict`` keeps no predictions in memory).
Both are private, so ``pyproject.toml`` bounds Lightning's minor version; before raising the bound,
run this file against the new release: it checks that both hooks still exist with the signatures
used, are still called once per CLI, and that the upstream merge still lets the checkpoint win
(the behaviour the override corrects; if upstream fixed it, the override can go).
"""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from lit_sr.jobs.train.cli import SRLightningCLI

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
