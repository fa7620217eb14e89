"""``lit-sr refsr-claims --config configs/refsr_claims/cpu.yaml``: RefSR-Adv's claims, one table and plot each.

Trains the configured RefSR models (same budget), attacks them and writes ``claims.md`` (the three
tables with their verdicts), ``claims.json``, ``claim_a.csv`` ... and ``plots/claim_*.png`` into
``out``. Keys: see :class:`lit_sr.jobs.refsr_claims.config.ClaimsConfig`. Flags after ``--config``
override the file, nested keys dotted (``--models.datsr.arch_kwargs.n_blocks 2``); ``--print_config``
shows the merged config (docs/configs.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from lit_sr.jobs.parser import add_flag, job_parser, run_job
from lit_sr.jobs.refsr_claims.config import ClaimsConfig
from lit_sr.jobs.refsr_claims.measure import run_claims
from lit_sr.jobs.refsr_claims.write import write_claims


def build_parser() -> ArgumentParser:
    """The parser of the claims: every key of :class:`ClaimsConfig` (docs/configs.md), plus ``--no-progress``."""
    parser = job_parser(ClaimsConfig, "lit-sr refsr-claims", __doc__.splitlines()[0],
                        "YAML config of the claims (configs/refsr_claims/*.yaml)")
    add_flag(parser, "--no-progress", "no progress bars")
    return parser


def _run(cfg: ClaimsConfig, namespace: Namespace) -> int:
    out = Path(cfg.out)
    figures, meta = run_claims(cfg, out, not namespace.no_progress)
    files = write_claims(out, cfg, figures, meta, cfg.full_reference)
    print(Path(files["summary"]).read_text())
    print(f"written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the claims and print ``claims.md``; return the exit code (2: bad config)."""
    return run_job(build_parser(), argv, _run)
