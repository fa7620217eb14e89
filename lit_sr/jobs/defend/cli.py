"""The defense report of backdoored SR models: the command line.

::

    lit-sr defend --config configs/defend/quickstart.yaml [--output_dir DIR] [--defenses.FT.steps 50] [--no-progress]

Attacks (poisoned ``train.py`` runs, e.g. the arms of ``make demo``) x repair defenses (FT,
fine-pruning, NAD, adversarial unlearning), each measured before and after, with one summary score
per pair: CSV, JSON, Markdown and PNG in ``<output_dir>/<name>/``. Every key of the config
(:class:`lit_sr.jobs.defend.config.DefenseReportConfig`) is also a flag, nested keys dotted;
``--print_config`` shows the merged config (docs/configs.md). The report is in
:mod:`lit_sr.jobs.defend.report`. Exit code 2 for a bad config (the message names the key), 0 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lit_sr.jobs.defend.config import DefenseReportConfig, config_parser
from lit_sr.jobs.defend.report import run_report
from lit_sr.jobs.parser import add_flag, run_job


def _run(cfg: DefenseReportConfig, namespace) -> int:
    result = run_report(cfg, progress=not namespace.no_progress)
    print(Path(result["files"]["markdown"]).read_text())
    print(f"written to {cfg.out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the report, print its Markdown; return the exit code."""
    parser = config_parser(description=__doc__.splitlines()[0])
    add_flag(parser, "--no-progress", "no progress bars")
    return run_job(parser, argv, _run)
