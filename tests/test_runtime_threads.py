"""Threads per process: lit_sr.runtime.configure_threads and the train CLI's --threads."""

from __future__ import annotations

import pytest
import torch

from lit_sr import runtime
from lit_sr.runtime import configure_threads, default_threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored with the rest of the environment
    yield
    torch.set_num_threads(threads)


def test_an_explicit_count_wins_and_is_passed_on(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(2) == 2
    assert torch.get_num_threads() == 2
    assert runtime.os.environ["OMP_NUM_THREADS"] == "2"  # DDP ranks and Lightning read it


def test_the_environment_is_kept_when_no_count_is_given(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(None) == 2 and torch.get_num_threads() == 2


def test_the_default_divides_the_usable_cores_among_the_local_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_threads() == 1  # never zero
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert default_threads() == 1
    assert configure_threads(None) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        configure_threads(bad)


def test_a_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two'"):
        configure_threads(None)


def test_the_train_cli_applies_threads(tmp_path):
    from lit_sr.jobs.train.cli import train_cli

    args = ["--model", "lit_sr.modules.SRModule", "--model.arch", "edsr",
            "--model.arch_kwargs", "{num_feat: 4, num_block: 1}", "--model.scale", "2",
            "--data", "datamodules.EmbeddedPhotosDataModule", "--data.scale", "2",
            "--trainer.default_root_dir", str(tmp_path), "--threads", "2"]
    train_cli(args, run=False)
    assert torch.get_num_threads() == 2
    with pytest.raises(SystemExit):  # jsonargparse refuses it before anything runs
        train_cli(args[:-1] + ["0"], run=False)
