"""``lit-sr data``: prepare sub-images for fast training, or verify a prepared folder.

    lit-sr data prepare --hr-dir /data/DIV2K/DIV2K_train_HR \
        --lr-dir /data/DIV2K/DIV2K_train_LR_bicubic/X4 --scale 4 \
        --out-dir /data/DIV2K/prepared/DIV2K_train_x4 --workers 16
    lit-sr data verify /data/DIV2K/prepared/DIV2K_train_x4

``prepare`` resumes where an interrupted run stopped (finished images are not redone).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lit_sr.data.prepare import SUBIMAGE_FORMATS, prepare_subimages, read_prepared
from lit_sr.io import ImageReadError


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, ImageReadError, FileNotFoundError) as exc:  # bad input: the message names it
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
    else:
        pairs = read_prepared(args.directory, scale=args.scale, verify=True)
        print(f"{args.directory}: {len(pairs)} sub-image pairs, every SHA-256 matches")
    return 0
