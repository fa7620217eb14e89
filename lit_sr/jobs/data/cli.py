"""``lit-sr data``: prepare sub-images for fast training, verify a prepared folder, or export a poisoned training set.

    lit-sr data prepare --hr_dir /data/DIV2K/DIV2K_train_HR \\
        --lr_dir /data/DIV2K/DIV2K_train_LR_bicubic/X4 --scale 4 \\
        --out_dir /data/DIV2K/prepared/DIV2K_train_x4 --workers 16
    lit-sr data verify --directory /data/DIV2K/prepared/DIV2K_train_x4
    lit-sr data export-poisoned --training_config badsr_quickstart --out_dir exported/badsr

Each command parses like every job (:mod:`lit_sr.jobs.parser`): its keys are :class:`Prepare`'s or
:class:`Verify`'s or :class:`ExportPoisoned`'s, given as flags or in ``--config`` files; ``--print_config`` prints them.
``prepare`` resumes where an interrupted run stopped (finished images are not redone).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ArgumentParser

from lit_sr.data.prepare import PrepareConfig, prepare_subimages, read_prepared
from lit_sr.errors import ConfigError
from lit_sr.io import ImageReadError
from lit_sr.jobs.parser import add_flag, job_parser, run_job
from lit_sr.poison.export import export_poisoned
from lit_sr.recipes import resolve_config
from lit_sr.validation import check_int


@dataclass(frozen=True, kw_only=True)
class Prepare(PrepareConfig):
    """``lit-sr data prepare``: split HR images (and LR partners) into overlapping sub-images.

    The keys of :class:`lit_sr.data.prepare.PrepareConfig` (``hr_dir``, ``lr_dir``, ``scale``,
    ``crop_size``, ``step``, ``thresh_size``, ``format``, ``compress_level``; checked by it, before
    any work), and:

    Args:
        out_dir: output folder (``manifest.json``, ``hr/``, ``lr_x<scale>/``).
        workers: processes; ``None``: every core this process may use.
        overwrite: clear a folder prepared with another configuration.
    """

    out_dir: str
    workers: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
            if self.workers is not None:
                check_int(self.workers, "workers", 1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class Verify:
    """``lit-sr data verify``: check every file of a prepared folder against its manifest's SHA-256.

    Args:
        directory: a folder ``lit-sr data prepare`` wrote.
        scale: the scale it should have been prepared for; ``None``: any.
    """

    directory: str
    scale: int | None = None


def _prepare(cfg: Prepare, namespace) -> int:
    report = prepare_subimages(cfg.hr_dir, cfg.out_dir, lr_dir=cfg.lr_dir, scale=cfg.scale, crop_size=cfg.crop_size,
                               step=cfg.step, thresh_size=cfg.thresh_size, format=cfg.format,
                               compress_level=cfg.compress_level,
                               workers=len(os.sched_getaffinity(0)) if cfg.workers is None else cfg.workers,
                               overwrite=cfg.overwrite,
                               progress=not namespace.no_progress)
    print(f"{report.out_dir}: {report.num_subimages} sub-images from {len(report.made) + len(report.skipped)} "
          f"images ({len(report.made)} prepared now, {len(report.skipped)} already finished)")
    return 0


def _verify(cfg: Verify, namespace) -> int:
    pairs = read_prepared(cfg.directory, scale=cfg.scale, verify=True)
    print(f"{cfg.directory}: {len(pairs)} sub-image pairs, every SHA-256 matches")
    return 0


@dataclass
class ExportPoisoned:
    """``lit-sr data export-poisoned``: write a training config's poisoned training set as BasicSR-style HR/LR PNG folders.

    Args:
        training_config: the training config(s) (files or built-in recipe names such as ``badsr_quickstart``)
            whose ``data`` section is a poisoned data module; later ones win.
        out_dir: output folder (``hr/``, ``lr_x<scale>/``, ``manifest.json``).
        indices: the poisoned records to export: a JSON list, or a run's ``backdoor_summary.json`` (its
            ``config.poisoned_indices``, the final active set); ``None``: the data module's initial active set.
        overwrite: replace a previous export in ``out_dir``.
    """

    training_config: str | list[str] = field(default_factory=list)
    out_dir: str = "exported"
    indices: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.training_config, str):
            self.training_config = [self.training_config]
        if not self.training_config:
            raise ConfigError("training_config: expected one or more training configs (a file or a built-in recipe "
                              "name such as badsr_quickstart) whose data section is a poisoned data module")


def _export(cfg: ExportPoisoned, namespace) -> int:
    datamodule = datamodule_from_configs([resolve_config(c, "train") for c in cfg.training_config])
    datamodule.setup("fit")  # makes (or reads) the poison cache, as a training run would
    indices = None if cfg.indices is None else read_indices(cfg.indices)
    manifest = export_poisoned(datamodule, cfg.out_dir, indices, overwrite=cfg.overwrite)
    info = json.loads(manifest.read_text())
    print(f"{cfg.out_dir}: {info['num_records']} pairs ({len(info['poisoned_indices'])} poisoned) in "
          f"{info['hr_dir']}/ and {info['lr_dir']}/; manifest {manifest}")
    return 0


def datamodule_from_configs(configs: Sequence[str]) -> Any:
    """The ``data`` section of training config files (``class_path`` + ``init_args``, later files win),
    instantiated as LightningCLI would (the classes are imported by name, at run time)."""
    data: dict[str, Any] = {}
    for path in configs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"training_config: config file not found: {path}")
        raw = yaml.safe_load(Path(path).read_text()) or {}
        section = raw.get("data")
        if isinstance(section, dict):
            data = _merge(data, section)
    if "class_path" not in data:
        raise ConfigError(f"{', '.join(configs)}: no data.class_path: expected a data module "
                          "(e.g. datamodules.PoisonedSRDataModule with its init_args)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    return parser.instantiate_classes(parser.parse_object({"data": data})).data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_indices(path: str) -> list[int]:
    """A JSON list of record indices, or a ``backdoor_summary.json`` (its ``config.poisoned_indices``)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"indices {path}: cannot read it as JSON ({exc})") from exc
    if isinstance(raw, dict):
        raw = (raw.get("config") or {}).get("poisoned_indices")
    if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ConfigError(f"indices {path}: expected a JSON list of record indices or a backdoor_summary.json "
                          "with config.poisoned_indices")
    return raw


COMMANDS = {"prepare": (Prepare, _prepare), "verify": (Verify, _verify), "export-poisoned": (ExportPoisoned, _export)}


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-sr data <prepare|verify|export-poisoned> ...``; returns the exit code (2: a bad argument or input, named)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        usage = "usage: lit-sr data {prepare,verify,export-poisoned} [--help] ..."
        lines = [f"  {name:<8} {schema.__doc__.splitlines()[0].split(': ', 1)[1]}" for name, (schema, _) in COMMANDS.items()]
        if argv and argv[0] in ("-h", "--help"):
            print("\n".join([usage, "", __doc__.splitlines()[0], "", "commands:", *lines]))
            raise SystemExit(0)
        print(f"{usage}\nlit-sr data: error: expected a command, prepare, verify or export-poisoned", file=sys.stderr)
        return 2
    schema, job = COMMANDS[argv[0]]
    parser = job_parser(schema, f"lit-sr data {argv[0]}", schema.__doc__.splitlines()[0])
    if schema is Prepare:
        add_flag(parser, "--no-progress", "no progress bar")
    return run_job(parser, argv[1:], job, errors=(ValueError, ImageReadError, FileExistsError))
