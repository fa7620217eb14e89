"""The robustness report's RefSR mode from the command line: attacks on the reference by similarity level.

::

    lit-sr evaluate-refsr --config configs/evaluate_refsr/quick.yaml \\
        [--model.weights runs/refsr_quickstart/version_0/weights.pth] [--out DIR] [--device cuda]

The schema is :class:`lit_sr.jobs.evaluate_refsr.report.RefSRReportConfig`: ``model`` (arch,
arch_kwargs, weights ...), ``data`` (a RefSR data module by ``class_path`` / ``init_args``, as in
the training recipes), ``attacks``, ``eps``, ``noise``, ``defenses``, ``defense_steps``,
``max_images``, ``device``, ``seed``, ``y_channel``, ``crop_border``, ``autocast``, ``out``. Flags
after ``--config`` override the file, nested keys dotted (``--attacks.refsr_adv.steps 5``);
``--print_config`` shows the merged config (docs/configs.md). Nothing imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lit_sr.jobs.evaluate_refsr.report import RefSRReportConfig, run_refsr_report
from lit_sr.jobs.parser import add_flag, job_parser, run_job


def _run(cfg: RefSRReportConfig, namespace) -> int:
    result = run_refsr_report(cfg, progress=not namespace.no_progress)
    print(Path(result["files"]["summary"]).read_text())
    print(f"written to {Path(result['files']['summary']).parent}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the RefSR report, print its summary; return the exit code (2: bad config)."""
    parser = job_parser(RefSRReportConfig, "lit-sr evaluate-refsr", __doc__.splitlines()[0],
                        "YAML config of the RefSR report (configs/evaluate_refsr/*.yaml)")
    add_flag(parser, "--no-progress", "no progress bars")
    return run_job(parser, argv, _run)
