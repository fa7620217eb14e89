"""The defense report of backdoored SR models: the command line.

::

    lit-sr defend --config configs/defend/quickstart.yaml [--output-dir DIR] [--no-progress]

Attacks (poisoned ``train.py`` runs, e.g. the arms of ``make demo``) x repair defenses (FT,
fine-pruning, NAD, adversarial unlearning), each measured before and after, with one summary score
per pair: CSV, JSON, Markdown and PNG in ``<output_dir>/<name>/``. The config's keys are listed in
:mod:`lit_sr.jobs.defend.config`, the report in :mod:`lit_sr.jobs.defend.report`.
Exit code 2 for a bad config (the message names the key), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lit_sr.errors import ConfigError
from lit_sr.jobs.defend.config import load_config
from lit_sr.jobs.defend.report import run_report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the report, print its Markdown; return the exit code."""
    parser = argparse.ArgumentParser(prog="lit-sr defend", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the report's YAML file")
    parser.add_argument("--output-dir", default=None, help="replaces the config's output_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_config(args.config)
        if args.output_dir is not None:
            cfg.output_dir = args.output_dir
        result = run_report(cfg, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(result["files"]["markdown"]).read_text())
    print(f"written to {cfg.out_dir}")
    return 0
