"""Robustness report of SR models against adversarial attacks (Choi et al., ICCV 2019): the command line.

::

    lit-sr evaluate --config configs/evaluate/robustness_choi2019.yaml [--out DIR] [--device cuda]
    lit-sr evaluate --config configs/evaluate/robustness_quick.yaml \\
        --models.EDSR-quickstart.weights runs/quickstart/quickstart/weights.pth --max_images 1

Every key of the config is also a flag, nested keys dotted (``--transfer.eps 4/255``,
``--attacks.ifgsm.steps 20``, ``--defenses.datasets '[Set5]'``); flags after ``--config``
override the file. ``--print_config`` shows the merged config, ``--help`` every key
(docs/configs.md). The config's schema and the report itself live in :mod:`lit_sr.jobs.evaluate`;
nothing imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lit_sr.jobs.evaluate import ReportConfig, config_parser, run_report
from lit_sr.jobs.parser import add_flag, run_job


def _run(cfg: ReportConfig, namespace) -> int:
    result = run_report(cfg, progress=not namespace.no_progress)
    print(Path(result["files"]["summary"]).read_text())
    print(f"written to {Path(result['files']['summary']).parent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the report, print its summary; return the exit code (2: bad config)."""
    parser = config_parser(description=__doc__.splitlines()[0])
    add_flag(parser, "--no-progress", "no progress bars")
    return run_job(parser, argv, _run)
