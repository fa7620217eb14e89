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

from lit_sr.data.prepare import PrepareConfig, prepare_subimages, read_prepared
from lit_sr.errors import ConfigError
from lit_sr.io import ImageReadError
from lit_sr.jobs.parser import add_flag, job_parser, run_job
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
