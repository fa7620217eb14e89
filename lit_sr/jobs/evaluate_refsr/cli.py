"""The robustness report's RefSR mode from the command line: attacks on the reference by similarity level.

::

    lit-sr evaluate-refsr --config configs/evaluate_refsr/quick.yaml \\
        [--model.weights runs/refsr_quickstart/version_0/weights.pth] [--out DIR] [--device cuda]

Keys (see :class:`lit_sr.jobs.evaluate_refsr.report.RefSRReportConfig`): ``model`` (arch, arch_kwargs,
weights ...), ``data`` (a RefSR data module by ``class_path`` / ``init_args``, as in the training
recipes), ``attacks``, ``eps``, ``noise``, ``defenses``, ``defense_steps``, ``max_images``,
``device``, ``seed``, ``y_channel``, ``crop_border``, ``autocast``, ``out``. Flags after
``--config`` override the file; ``--print_config`` shows the merged config. Nothing imports
this module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.config import ModelSpec
from lit_sr.jobs.evaluate_refsr.report import DEFAULT_REFSR_ATTACKS, RefSRReportConfig, run_refsr_report
from lit_sr.runtime import Autocast


def build_parser():
    """The jsonargparse parser of the RefSR report (every key of :class:`RefSRReportConfig`)."""


    parser = ArgumentParser(prog="lit-sr evaluate-refsr", description=__doc__.splitlines()[0],
                            exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--model", type=ModelSpec, required=True)
    parser.add_argument("--data", type=L.LightningDataModule, required=True)
    parser.add_argument("--attacks", type=dict[str, dict[str, Any] | None], default=DEFAULT_REFSR_ATTACKS)
    parser.add_argument("--eps", type=list[float | str], default=["8/255"])
    parser.add_argument("--noise", type=bool, default=True)
    parser.add_argument("--defenses", type=dict[str, dict[str, Any]] | None, default=None)
    parser.add_argument("--defense_steps", type=int | None, default=None)
    parser.add_argument("--max_images", type=int | None, default=None)
    parser.add_argument("--device", type=str, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--y_channel", type=bool, default=True)
    parser.add_argument("--crop_border", type=int | None, default=None)
    parser.add_argument("--autocast", type=Autocast, default="none")
    parser.add_argument("--out", type=str, default="runs/refsr_report")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the RefSR report, print its summary; return the exit code (2: bad config)."""


    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        namespace = parser.parse_args(argv)
        source = ", ".join(str(p) for p in namespace.get("config") or []) or "<command line>"
        init = parser.instantiate(namespace)
        keys = [k for k in RefSRReportConfig.__dataclass_fields__ if k != "source"]
        cfg = RefSRReportConfig(**{k: init[k] for k in keys})
        cfg.source = source
        result = run_refsr_report(cfg, progress=not namespace.no_progress)
    except (ArgumentError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(result["files"]["summary"]).read_text())
    print(f"written to {Path(result['files']['summary']).parent}")
    return 0
