"""``lit-sr study --config configs/study/<name>.yaml [--dry-run] [--force] [--only RUN ...] [--table-only]``.

Runs what is not finished (:mod:`.runner`), then writes the table (:mod:`.table`). The study file's
keys are :class:`lit_sr.jobs.study.config.StudyConfig`'s; flags after ``--config`` override them
(``--output_dir /tmp/study``, ``--overrides.trainer.max_epochs 2``), ``--print_config`` prints the
merged study (docs/configs.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from lit_sr.jobs.parser import add_flag, run_job
from lit_sr.jobs.study import runner
from lit_sr.jobs.study.config import StudyConfig, config_parser, to_study
from lit_sr.jobs.study.table import write_outputs


def _run(cfg: StudyConfig, namespace) -> int:
    study = to_study(cfg)
    metas = [] if namespace.table_only else runner.run_study(study, namespace.force, namespace.only or (),
                                                             namespace.dry_run)
    if namespace.dry_run:
        return 0
    written = write_outputs(study)
    print((study.study_dir / "results.md").read_text())
    print("written: " + ", ".join(str(p) for p in written))
    return int(any(m.get("status") != "ok" for m in metas))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lit-sr study`` command; returns the exit code (1 when a run failed, 2 for a bad study file)."""
    parser = config_parser(description=runner.__doc__.split("\n\n")[0])
    add_flag(parser, "--force", "rerun finished runs too")
    add_flag(parser, "--only", "run only these runs", nargs="+", default=[], metavar="RUN")
    add_flag(parser, "--dry-run", "print the training commands, run nothing")
    add_flag(parser, "--table-only", "rebuild the table from finished runs, run nothing")
    return run_job(parser, argv, _run, errors=(ValueError,))
