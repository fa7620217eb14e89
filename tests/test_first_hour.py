"""What a new user met in the first hour (issue 21), pinned: a misspelt option is refused instead of being
taken as the option it abbreviates, and a SIGTERM ends ``fit`` with a non-zero code and a resumable
``last.ckpt`` instead of a silent exit 0."""

from __future__ import annotations

import textwrap

import pytest
import torch

from lit_sr.jobs.train.cli import SIGTERM_EXIT
from lit_sr.jobs.train.cli import main as train_main

TINY = ["--model", "lit_sr.modules.SRModule", "--model.init_args.arch", "edsr",
        "--model.init_args.arch_kwargs", "{num_feat: 8, num_block: 1}", "--model.init_args.scale", "2",
        "--data", "datamodules.EmbeddedPhotosDataModule", "--data.init_args.scale", "2",
        "--data.init_args.patch_size", "32", "--data.init_args.batch_size", "2", "--data.init_args.max_side", "64",
        "--data.init_args.repeat", "1", "--data.init_args.max_val_images", "1", "--data.init_args.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


def test_a_misspelt_trainer_option_is_refused_not_abbreviated(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", *TINY, "--trainer.max_epoch", "3", "--print_config"])
    assert exit_info.value.code == 2
    assert "--trainer.max_epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # the whole name still works
        train_main(["fit", *TINY, "--trainer.max_epochs", "3", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "max_epochs: 3" in capsys.readouterr().out


def test_sigterm_exits_143_and_leaves_a_resumable_last_checkpoint(tmp_path, monkeypatch):
    # a callback that sends this process SIGTERM after the second training step, as a scheduler would
    (tmp_path / "sigterm_after.py").write_text(textwrap.dedent("""
        import os, signal
        import lightning as L

        class SigtermAfter(L.Callback):
            def __init__(self, step: int = 2):
                self.step = step

            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step == self.step:
                    os.kill(os.getpid(), signal.SIGTERM)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code = train_main(["fit", *TINY, "--trainer.max_steps", "50", "--trainer.limit_val_batches", "0",
                       "--trainer.logger", "{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: runs}}",
                       "--trainer.callbacks", "[{class_path: callbacks.last_checkpoint.LastCheckpoint}, "
                       "{class_path: sigterm_after.SigtermAfter}]"])
    assert code == SIGTERM_EXIT == 143
    (run,) = (tmp_path / "runs" / "lightning_logs").iterdir()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # the step reached, not the epoch-end state of an earlier epoch
    assert not (run / "weights.pth").exists()  # written only when fit ends; the warning says so


@pytest.mark.parametrize("recipe", ["configs/train/robust_quickstart.yaml", "configs/evaluate/robustness_quick.yaml",
                                    "configs/evaluate_refsr/quick.yaml"])
def test_a_missing_run_output_names_the_command_that_writes_exactly_that_file(recipe, tmp_path, monkeypatch, capsys):
    """The recipes that read another run's weights: the "not found" error names a command, and that command's
    logger writes the very folder the recipe reads (so following the message fixes it)."""
    import re
    import shlex
    from pathlib import Path

    import yaml

    from lit_sr.io import read_state_dict

    root = Path(__file__).resolve().parents[1]
    text = (root / recipe).read_text()
    (weights,) = set(re.findall(r"weights: (runs/\S+/weights\.pth)", text))
    monkeypatch.chdir(tmp_path)  # no runs/ here
    with pytest.raises(FileNotFoundError) as error:
        read_state_dict(weights)
    command = re.search(r"`(lit-sr fit [^`]+)`", str(error.value)).group(1)
    args = shlex.split(command)[2:]
    assert args[0] == "--config"
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit):
        train_main(["fit", "--config", f"configs/train/{args[1]}.yaml", *args[2:], "--print_config"])
    logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]["init_args"]
    assert Path(logger["save_dir"], logger["name"], str(logger["version"]), "weights.pth") == Path(weights)


def test_the_refsr_report_progress_bar_has_a_total():
    from torch.utils.data import DataLoader

    from lit_sr.jobs.evaluate_refsr.report import batch_count

    loaders = [DataLoader(list(range(10)), batch_size=4), DataLoader(list(range(3)), batch_size=2)]
    assert batch_count(loaders, None) == 3 + 2
    assert batch_count(loaders, 5) == 2 + 2  # max_images per loader: ceil(5 / 4) and all of the second
    assert batch_count([iter(range(3))], None) is None  # no length: no total rather than a wrong one


def test_a_gpu_recipe_on_a_machine_without_one_stops_at_once_saying_what_to_pass(capsys, monkeypatch):
    from lit_sr.jobs.train import cli

    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    assert train_main(["fit", "--config", "configs/train/edsr_x4_div2k.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no GPU is present" in err and "strategy=ddp" in err and "precision=bf16-mixed" in err
    assert cli.CPU_OVERRIDES in err
    # what the message says to pass is enough for the check; a CPU recipe never trips it
    args = cli.CPU_OVERRIDES.split()
    trainer = dict(zip([a.removeprefix("--trainer.") for a in args[::2]], args[1::2]))
    assert cli.gpu_request({"strategy": "ddp", "precision": "bf16-mixed", **trainer}, False) is None
    assert cli.gpu_request({"accelerator": "auto", "devices": 1, "precision": "32-true"}, False) is None
    assert cli.gpu_request({"strategy": "ddp", "precision": "bf16-mixed"}, True) is None  # a GPU is there


def test_a_missing_prepared_folder_is_named_missing(tmp_path):
    from lit_sr.data.prepare import prepared_config

    with pytest.raises(FileNotFoundError, match="prepared data folder not found: .*nowhere.*lit-sr data prepare"):
        prepared_config(tmp_path / "nowhere")
