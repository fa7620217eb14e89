"""``lit-sr data``: prepare sub-images for fast training, verify a prepared folder, or export a poisoned training set.

    lit-sr data prepare --hr-dir /data/DIV2K/DIV2K_train_HR \
        --lr-dir /data/DIV2K/DIV2K_train_LR_bicubic/X4 --scale 4 \
        --out-dir /data/DIV2K/prepared/DIV2K_train_x4 --workers 16
    lit-sr data verify /data/DIV2K/prepared/DIV2K_train_x4
    lit-sr data export-poisoned --config badsr_quickstart --out-dir exported/badsr

``prepare`` resumes where an interrupted run stopped (finished images are not redone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ArgumentParser

from lit_sr.data.prepare import SUBIMAGE_FORMATS, prepare_subimages, read_prepared
from lit_sr.io import ImageReadError
from lit_sr.poison.export import export_poisoned


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lit-sr data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="split HR images (and LR partners) into overlapping sub-images")
    p.add_argument("--hr-dir", required=True, help="folder of HR images")
    p.add_argument("--out-dir", required=True, help="output folder (manifest.json, hr/, lr_x<scale>/)")
    p.add_argument("--lr-dir", default=None,
                   help="folder of LR partners (DIV2K naming 0001x4.png); default: MATLAB bicubic of the HR")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--crop-size", type=int, default=480, help="HR sub-image side (BasicSR: 480)")
    p.add_argument("--step", type=int, default=240, help="distance between sub-image starts (BasicSR: 240)")
    p.add_argument("--thresh-size", type=int, default=0,
                   help="an edge strip wider than this gets an extra edge-aligned sub-image (BasicSR: 0)")
    p.add_argument("--format", choices=SUBIMAGE_FORMATS, default="png",
                   help="png (BasicSR layout) or npy (raw uint8, memory-mapped by the loader)")
    p.add_argument("--compress-level", type=int, default=3, help="PNG compression level (BasicSR: 3)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="clear a folder prepared with another configuration")
    p.add_argument("--no-progress", action="store_true")
    v = sub.add_parser("verify", help="check every file of a prepared folder against its manifest's SHA-256")
    v.add_argument("directory")
    v.add_argument("--scale", type=int, default=None)
    e = sub.add_parser("export-poisoned", help="write a training config's poisoned training set as BasicSR-style "
                                               "HR/LR PNG folders with a manifest (lit_sr.poison.export)")
    e.add_argument("--config", action="append", required=True,
                   help="the training config(s) whose data section is a poisoned data module (later ones win)")
    e.add_argument("--out-dir", required=True, help="output folder (hr/, lr_x<scale>/, manifest.json)")
    e.add_argument("--indices", default=None,
                   help="the poisoned records to export: a JSON list, or a run's backdoor_summary.json "
                        "(its config.poisoned_indices, the final active set); default: the initial active set")
    e.add_argument("--overwrite", action="store_true", help="replace a previous export in --out-dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, ImageReadError, FileNotFoundError, FileExistsError) as exc:  # bad input: the message names it
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "prepare":
        report = prepare_subimages(args.hr_dir, args.out_dir, lr_dir=args.lr_dir, scale=args.scale,
                                   crop_size=args.crop_size, step=args.step, thresh_size=args.thresh_size,
                                   format=args.format, compress_level=args.compress_level, workers=args.workers,
                                   overwrite=args.overwrite, progress=not args.no_progress)
        print(f"{report.out_dir}: {report.num_subimages} sub-images from {len(report.made) + len(report.skipped)} "
              f"images ({len(report.made)} prepared now, {len(report.skipped)} already finished)")
    elif args.command == "export-poisoned":
        datamodule = datamodule_from_configs(args.config)
        datamodule.setup("fit")  # makes (or reads) the poison cache, as a training run would
        indices = None if args.indices is None else read_indices(args.indices)
        manifest = export_poisoned(datamodule, args.out_dir, indices, overwrite=args.overwrite)
        info = json.loads(manifest.read_text())
        print(f"{args.out_dir}: {info['num_records']} pairs ({len(info['poisoned_indices'])} poisoned) in "
              f"{info['hr_dir']}/ and {info['lr_dir']}/; manifest {manifest}")
    else:
        pairs = read_prepared(args.directory, scale=args.scale, verify=True)
        print(f"{args.directory}: {len(pairs)} sub-image pairs, every SHA-256 matches")
    return 0


def datamodule_from_configs(configs: Sequence[str]) -> Any:
    """The ``data`` section of training config files (``class_path`` + ``init_args``, later files win),
    instantiated as LightningCLI would (the classes are imported by name, at run time)."""
    data: dict[str, Any] = {}
    for path in configs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = yaml.safe_load(Path(path).read_text()) or {}
        section = raw.get("data")
        if isinstance(section, dict):
            data = _merge(data, section)
    if "class_path" not in data:
        raise ValueError(f"{', '.join(configs)}: no data.class_path: expected a data module "
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
        raise ValueError(f"--indices {path}: cannot read it as JSON ({exc})") from exc
    if isinstance(raw, dict):
        raw = (raw.get("config") or {}).get("poisoned_indices")
    if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ValueError(f"--indices {path}: expected a JSON list of record indices or a backdoor_summary.json "
                         "with config.poisoned_indices")
    return raw

