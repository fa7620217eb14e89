"""Robustness report of SR models against adversarial attacks (Choi et al., ICCV 2019): the command line.

::

    lit-sr evaluate --config configs/evaluate/robustness_choi2019.yaml [--out DIR] [--device cuda]
    lit-sr evaluate --config configs/evaluate/robustness_quick.yaml \\
        --models.EDSR-quickstart.weights runs/quickstart/quickstart/weights.pth --max_images 1

Every key of the config is also a flag, nested keys dotted (``--transfer.eps 4/255``,
``--defenses.datasets '[Set5]'``); flags after ``--config`` override the file. ``--print_config``
shows the merged config, ``--help`` every key. The config's schema and the report itself live in
:mod:`lit_sr.jobs.evaluate`; nothing imports this module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate import config_from_namespace, config_parser, parse_args, run_report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the report, print its summary; return the exit code (2: bad config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = config_parser(prog="lit-sr evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    try:
        namespace = parse_args(parser, argv)
        source = ", ".join(str(p) for p in namespace.get("config") or []) or "<command line>"
        cfg = config_from_namespace(parser, namespace, source)
        result = run_report(cfg, progress=not namespace.no_progress)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(result["files"]["summary"]).read_text())
    print(f"written to {Path(result['files']['summary']).parent}")
    return 0
