"""``lit-sr <command> ...`` (or ``python -m lit_sr <command> ...``): one entry point for every job.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's subcommands (``train.py`` is an alias
of them); the other commands are the reports and tools of :mod:`lit_sr.jobs`. ``lit-sr --help``
lists the commands, ``lit-sr <command> --help`` shows the command's own options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # holds ``main(argv) -> int``
    summary: str
    keeps_name: bool = False  # LightningCLI parses its own subcommand: it gets the name too


_TRAIN = "lit_sr.jobs.train.cli"
COMMANDS: dict[str, Command] = {
    "fit": Command(_TRAIN, "train a model (LightningCLI fit) from configs/train/<recipe>.yaml", True),
    "validate": Command(_TRAIN, "run the validation loop of a model (LightningCLI validate)", True),
    "test": Command(_TRAIN, "run the test loop of a model, e.g. a checkpoint (LightningCLI test)", True),
    "predict": Command(_TRAIN, "write the SR images of a model as PNG files (LightningCLI predict)", True),
    "evaluate": Command("lit_sr.jobs.evaluate.cli", "robustness report: attacks x eps x models, transfer, input defenses"),
    "evaluate-refsr": Command("lit_sr.jobs.evaluate_refsr.cli", "RefSR robustness report: attacks on the reference by similarity level"),
    "refsr-claims": Command("lit_sr.jobs.refsr_claims.cli", "RefSR-Adv's claims measured: architectures, losses, transfer"),
    "robust": Command("lit_sr.jobs.robust.cli", "worst-case PSNR of (robustly fine-tuned) models over attacks and restarts"),
    "defend": Command("lit_sr.jobs.defend.cli", "defense report: backdoored runs x repair defenses, before and after"),
    "study": Command("lit_sr.jobs.study.cli", "run many training runs from one study file and write one table"),
    "data": Command("lit_sr.jobs.data.cli", "prepare sub-images for fast training, or verify a prepared folder"),
}


def _overview() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-sr", description="The security of image super-resolution: train, attack, evaluate, defend.",
        epilog="`lit-sr <command> --help` shows the options of a command.",
        # wide enough that every command's summary stays on one line
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=20, width=120))
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``argv[0]``'s job with the rest of ``argv``; return its exit code (2: no or unknown command)."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        overview = _overview()
        if not argv:
            overview.print_usage(sys.stderr)
            print("lit-sr: error: a command is required (see lit-sr --help)", file=sys.stderr)
            return 2
        overview.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"lit-sr: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # Imported only when its command runs: a job pulls in Lightning, torchvision, its data modules
    # and callbacks (seconds of start-up); `lit-sr --help` and every other command skip them.
    job = importlib.import_module(command.module)
    if command.keeps_name:
        # LightningCLI reads sys.argv itself when given None (and warns when given both)
        return int(job.main(None if from_command_line else argv) or 0)
    return int(job.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
