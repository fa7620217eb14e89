"""``lit-sr data``: prepare sub-images for fast training, or verify a prepared folder.

    lit-sr data prepare --hr_dir /data/DIV2K/DIV2K_train_HR \\
        --lr_dir /data/DIV2K/DIV2K_train_LR_bicubic/X4 --scale 4 \\
        --out_dir /data/DIV2K/prepared/DIV2K_train_x4 --workers 16
    lit-sr data verify --directory /data/DIV2K/prepared/DIV2K_train_x4

Each command parses like every job (:mod:`lit_sr.jobs.parser`): its keys are :class:`Prepare`'s or
:class:`Verify`'s, given as flags or in ``--config`` files; ``--print_config`` prints them.
``prepare`` resumes where an interrupted run stopped (finished images are not redone).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lit_sr.data.prepare import PrepareConfig, SubImageFormat, prepare_subimages, read_prepared
from lit_sr.io import ImageReadError
from lit_sr.jobs.parser import ConfigError, add_flag, job_parser, run_job
from lit_sr.validation import check_int


@dataclass
class Prepare:
    """``lit-sr data prepare``: split HR images (and LR partners) into overlapping sub-images.

    Args:
        hr_dir: folder of HR images.
        out_dir: output folder (``manifest.json``, ``hr/``, ``lr_x<scale>/``).
        lr_dir: folder of LR partners (DIV2K naming ``0001x4.png``); ``None``: MATLAB bicubic of the HR.
        scale: upscaling factor.
        crop_size: HR sub-image side (BasicSR: 480).
        step: distance between sub-image starts (BasicSR: 240).
        thresh_size: an edge strip wider than this gets an extra edge-aligned sub-image (BasicSR: 0).
        format: ``png`` (BasicSR layout) or ``npy`` (raw uint8, memory-mapped by the loader).
        compress_level: PNG compression level (BasicSR: 3).
        workers: processes; ``None``: every core this process may use.
        overwrite: clear a folder prepared with another configuration.
    """

    hr_dir: str
    out_dir: str
    lr_dir: str | None = None
    scale: int = 4
    crop_size: int = 480
    step: int = 240
    thresh_size: int = 0
    format: SubImageFormat = "png"
    compress_level: int = 3
    workers: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        try:  # the same checks as the prepared folder's own configuration, before any work
            PrepareConfig(self.hr_dir, self.lr_dir, self.scale, self.crop_size, self.step, self.thresh_size,
                          self.format, self.compress_level)
            self.workers = len(os.sched_getaffinity(0)) if self.workers is None else check_int(self.workers,
                                                                                               "workers", 1)
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
                               compress_level=cfg.compress_level, workers=cfg.workers, overwrite=cfg.overwrite,
                               progress=not namespace.no_progress)
    print(f"{report.out_dir}: {report.num_subimages} sub-images from {len(report.made) + len(report.skipped)} "
          f"images ({len(report.made)} prepared now, {len(report.skipped)} already finished)")
    return 0


def _verify(cfg: Verify, namespace) -> int:
    pairs = read_prepared(cfg.directory, scale=cfg.scale, verify=True)
    print(f"{cfg.directory}: {len(pairs)} sub-image pairs, every SHA-256 matches")
    return 0


COMMANDS = {"prepare": (Prepare, _prepare), "verify": (Verify, _verify)}


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-sr data <prepare|verify> ...``; returns the exit code (2: a bad argument or input, named)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        usage = "usage: lit-sr data {prepare,verify} [--help] ..."
        lines = [f"  {name:<8} {schema.__doc__.splitlines()[0].split(': ', 1)[1]}" for name, (schema, _) in COMMANDS.items()]
        if argv and argv[0] in ("-h", "--help"):
            print("\n".join([usage, "", __doc__.splitlines()[0], "", "commands:", *lines]))
            raise SystemExit(0)
        print(f"{usage}\nlit-sr data: error: expected a command, prepare or verify", file=sys.stderr)
        return 2
    schema, job = COMMANDS[argv[0]]
    parser = job_parser(schema, f"lit-sr data {argv[0]}", schema.__doc__.splitlines()[0])
    if schema is Prepare:
        add_flag(parser, "--no-progress", "no progress bar")
    return run_job(parser, argv[1:], job, errors=(ValueError, ImageReadError))
