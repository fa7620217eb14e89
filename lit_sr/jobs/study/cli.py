"""``lit-sr study --config configs/study/<name>.yaml [--dry-run] [--force] [--only RUN ...] [--table-only]``.

Runs what is not finished (:mod:`.runner`), then writes the table (:mod:`.table`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lit_sr.jobs.study import runner
from lit_sr.jobs.study.table import write_outputs


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lit-sr study`` command; returns the exit code (1 when a run failed)."""
    parser = argparse.ArgumentParser(prog="lit-sr study", description=runner.__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the study YAML file (configs/study/*.yaml)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    parser.add_argument("--only", nargs="+", default=(), metavar="RUN", help="run only these runs")
    parser.add_argument("--dry-run", action="store_true", help="print the training commands, run nothing")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from finished runs, run nothing")
    args = parser.parse_args(argv)
    study = runner.load_study(args.config)
    metas = [] if args.table_only else runner.run_study(study, args.force, args.only, args.dry_run)
    if args.dry_run:
        return 0
    written = write_outputs(study)
    print((study.study_dir / "results.md").read_text())
    print("written: " + ", ".join(str(p) for p in written))
    return int(any(m.get("status") != "ok" for m in metas))

