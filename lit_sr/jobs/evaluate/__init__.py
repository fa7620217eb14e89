"""Robustness report of SR models against adversarial attacks (Choi et al., ICCV 2019): loops and writers.

Every configured attack at every eps against every model on every data set, plus the
transferability matrix and the input defenses, written as tables, plots and a Markdown summary::

    cfg = load_config("configs/evaluate/robustness_quick.yaml", overrides=["--models.EDSR-quickstart.weights", "w.pth"])
    result = run_report(cfg)          # rows, transfer, defenses, meta, written files

The config's schema is :class:`ReportConfig` and the dataclasses it holds (:mod:`.config`);
jsonargparse reads YAML and command-line overrides into them (:mod:`lit_sr.jobs.parser`), so a typo'd key fails with its dotted
name (``models.EDSR.weigths``) and a bad value is named before anything runs. The command line is
``lit-sr evaluate`` (see ``configs/evaluate/robustness_choi2019.yaml`` for every key, documented).

Outputs (every file written atomically): ``results.csv`` and ``results.json`` (one row per model x
data set x attack x eps with the mean metrics), ``plots/psnr_vs_eps_<dataset>_<attack>.png``,
``plots/transfer_<dataset>.png``, ``defenses.csv`` and ``summary.md``.
"""

from lit_sr.jobs.evaluate.config import (
    DefenseStudy,
    ModelSpec,
    ReportConfig,
    TransferSpec,
    config_parser,
    load_config,
    parse_config,
)
from lit_sr.jobs.evaluate.runner import (
    ImagePair,
    build_model,
    check_paths,
    evaluate_attack,
    load_pairs,
    run_defense,
    run_report,
    run_transfer,
)
from lit_sr.jobs.evaluate.writers import (
    DEFENSE_FIELDS,
    ROW_FIELDS,
    robustness_ranking,
    summary_markdown,
    write_csv,
    write_json,
    write_report,
)

__all__ = [
    "DEFENSE_FIELDS",
    "ROW_FIELDS",
    "DefenseStudy",
    "ImagePair",
    "ModelSpec",
    "ReportConfig",
    "TransferSpec",
    "build_model",
    "check_paths",
    "config_parser",
    "evaluate_attack",
    "load_config",
    "load_pairs",
    "parse_config",
    "robustness_ranking",
    "run_defense",
    "run_report",
    "run_transfer",
    "summary_markdown",
    "write_csv",
    "write_json",
    "write_report",
]
