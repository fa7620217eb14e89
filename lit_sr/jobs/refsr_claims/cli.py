"""``lit-sr refsr-claims --config configs/refsr_claims/cpu.yaml``: RefSR-Adv's claims, one table and plot each.

Trains the configured RefSR models (same budget), attacks them and writes ``claims.md`` (the three
tables with their verdicts), ``claims.json``, ``claim_a.csv`` ... and ``plots/claim_*.png`` into
``out``. Keys: see :class:`lit_sr.jobs.refsr_claims.config.ClaimsConfig`, plus ``full_reference``
(the labels of the models that transfer from the full-resolution reference; default ``[datsr]``).
Flags after ``--config`` override the file; ``--print_config`` shows the merged config.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from lit_sr.errors import ConfigError
from lit_sr.jobs.refsr_claims.config import DEFAULT_FULL, ClaimsConfig
from lit_sr.jobs.refsr_claims.measure import run_claims
from lit_sr.jobs.refsr_claims.write import write_claims


def build_parser() -> ArgumentParser:
    """The jsonargparse parser of the claims (every key of :class:`ClaimsConfig`)."""
    parser = ArgumentParser(prog="lit-sr refsr-claims", description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--models", type=dict[str, dict[str, Any]], required=True)
    parser.add_argument("--data", type=L.LightningDataModule, required=True)
    parser.add_argument("--test_data", type=L.LightningDataModule | None, default=None)
    parser.add_argument("--full_reference", type=list[str], default=["datsr"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss_model", type=str, default="datsr")
    parser.add_argument("--finetune_steps", type=int, default=30)
    parser.add_argument("--full_losses", type=dict[str, Any], default=DEFAULT_FULL)
    parser.add_argument("--ensemble", type=list[str] | None, default=None)
    parser.add_argument("--eps", type=float | str, default="8/255")
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--max_images", type=int | None, default=None)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--min_effect", type=float, default=0.05)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--device", type=str, default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights_dir", type=str | None, default=None)
    parser.add_argument("--out", type=str, default="runs/refsr_claims")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    return parser


def build_config(argv: Sequence[str]) -> tuple[ClaimsConfig, list[str], bool]:
    """The validated config, the full-reference labels and whether to show progress."""
    parser = build_parser()
    namespace = parser.parse_args(list(argv))
    init = parser.instantiate(namespace)
    keys = [k for k in ClaimsConfig.__dataclass_fields__ if k != "source"]
    cfg = ClaimsConfig(**{k: init[k] for k in keys})
    cfg.source = ", ".join(str(p) for p in namespace.get("config") or []) or "<command line>"
    unknown = [label for label in init["full_reference"] if label not in cfg.models]
    if unknown:
        raise ConfigError(f"full_reference: {unknown} are not labels of models ({sorted(cfg.models)})")
    return cfg, list(init["full_reference"]), not namespace.no_progress


def main(argv: Sequence[str] | None = None) -> int:
    """Run the claims and print ``claims.md``; return the exit code (2: bad config)."""
    try:
        cfg, full_reference, progress = build_config(sys.argv[1:] if argv is None else argv)
        out = Path(cfg.out)
        figures, meta = run_claims(cfg, out, progress)
        files = write_claims(out, cfg, figures, meta, full_reference)
    except (ArgumentError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(files["summary"]).read_text())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
