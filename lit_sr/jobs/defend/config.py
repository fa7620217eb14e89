"""The defense report's config: one YAML file, validated before any work, every error naming its key.

::

    name: defend_quickstart            # the report's title and its folder under output_dir
    output_dir: runs                   # the report goes to <output_dir>/<name>/
    device: cpu                        # cpu | cuda | auto
    seed: 0                            # the clean subset's draw and every defense's seed
    clean_fraction: 0.05               # the defender's clean share of the training set
    patch_size: null                   # HR patch of the clean pairs (null: the run's patch_size)
    max_eval_images: null              # validation images per attack (null: all)
    eval_crop: null                    # HR centre crop of the validation images (null: whole)
    batch_size: 16                     # evaluation batch
    score: {metric: attainment_asr, psnr_tolerance: 1.0}
    reference: {name: D_clean, run_dir: runs/demo/runs/D_clean}    # optional clean model
    attacks:                           # name -> a poisoned train.py run folder
      A_control: runs/demo/runs/A_control
      B_stealthy_label: {run_dir: runs/demo/runs/B_stealthy_label, weights: weights.pth}
    defenses:                          # label -> {defense: ft | fp | nad | ibau, its parameters}
      FT: {defense: ft, steps: 200, lr: 1.0e-3}
    detection:                         # optional: label-free detection of each attack's poisoned pairs
      methods: [spectral, early_loss, activation_clustering]   # run_detection's keyword arguments
      attacks: [A_control]             # default: every attack

A defense entry's parameters are its config object's fields (:mod:`lit_sr.backdoor_defenses`);
``seed`` and ``progress`` default to the report's. :class:`DefenseReportConfig` is the schema
(``lit-sr defend --print_config`` prints it filled in, docs/configs.md): unknown keys, wrong types
and out-of-range values raise :class:`ConfigError` with the dotted key (``defenses.FP.prune_ratio``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from lit_sr.backdoor_defenses import DEFAULT_CLEAN_FRACTION, REPAIRS, build_defense
from lit_sr.errors import ConfigError
from lit_sr.jobs.defend.detection import detection_kwargs
from lit_sr.jobs.parser import job_parser, load_job_config, parse_mapping
from lit_sr.validation import check_fraction, check_int, check_positive

ScoreMetric = Literal["attainment_asr", "asr_pixel"]
Device = Literal["cpu", "cuda", "auto"]


def _checked(where: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class RunRef:
    """A trained run (what ``train.py fit`` leaves): its folder and the weights file inside it.

    Args:
        run_dir: the run's folder (``config.yaml`` and the weights).
        weights: the weights file's name inside ``run_dir``.
    """

    run_dir: str
    weights: str = "weights.pth"


@dataclass
class ReferenceRun(RunRef):
    """The clean reference model: a run (:class:`RunRef`) and its name in the report."""

    name: str = "reference"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("reference.name: must be a non-empty string")


@dataclass
class Score:
    """The one summary score per (attack, defense) pair (:func:`lit_sr.backdoor_defenses.defense_score`).

    Args:
        metric: the success rate the score reads.
        psnr_tolerance: the clean PSNR-Y drop (dB) that costs the whole score.
    """

    metric: ScoreMetric = "attainment_asr"
    psnr_tolerance: float = 1.0

    def __post_init__(self) -> None:
        self.psnr_tolerance = _checked("score.psnr_tolerance", check_positive, self.psnr_tolerance,
                                       "score.psnr_tolerance")


@dataclass
class DefenseReportConfig:
    """The defense report's config (see the module docstring for an example of every key).

    Args:
        attacks: name -> a poisoned run (its folder, or ``{run_dir, weights}``).
        defenses: label -> ``{defense: ft | fp | nad | ibau | anp, its parameters}``.
        name: the report's title and its folder under ``output_dir``.
        output_dir: the report goes to ``<output_dir>/<name>/``.
        device: where the repairs run.
        seed: the clean subset's draw and every defense's seed.
        clean_fraction: the defender's clean share of the training set.
        patch_size: HR patch of the clean pairs (``None``: the run's ``patch_size``).
        max_eval_images: validation images per attack (``None``: all).
        eval_crop: HR centre crop of the validation images (``None``: whole).
        batch_size: evaluation batch.
        score: the summary score.
        reference: an optional clean model, measured under each attack's trigger.
        detection: optional label-free detection of each attack's poisoned pairs
            (:func:`lit_sr.backdoor_defenses.detection.run_detection`'s keyword arguments, plus
            ``attacks``: the attacks to score, default all).
    """

    attacks: dict[str, RunRef | str]
    defenses: dict[str, dict[str, Any]]
    name: str = "defend"
    output_dir: str = "runs"
    device: Device = "cpu"
    seed: int = 0
    clean_fraction: float = DEFAULT_CLEAN_FRACTION
    patch_size: int | None = None
    max_eval_images: int | None = None
    eval_crop: int | None = None
    batch_size: int = 16
    score: Score = field(default_factory=Score)
    reference: ReferenceRun | None = None
    detection: dict[str, Any] | None = None
    source: str = field(default="<dict>", init=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, init=False)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a folder name (no '/'); got {self.name!r}")
        self.seed = _checked("seed", check_int, self.seed, "seed", 0)
        self.attacks = {str(k): RunRef(v) if isinstance(v, str) else v for k, v in self.attacks.items()}
        if not self.attacks:
            raise ConfigError("attacks must name at least one poisoned run")
        self.defenses = _defenses(self.defenses, self.seed)
        self.clean_fraction = _checked("clean_fraction", check_fraction, self.clean_fraction, "clean_fraction",
                                       allow_zero=False)
        for key, minimum in (("patch_size", 2), ("max_eval_images", 1), ("eval_crop", 2), ("batch_size", 1)):
            if getattr(self, key) is not None:
                setattr(self, key, _checked(key, check_int, getattr(self, key), key, minimum))
        if self.detection is not None:
            detection_kwargs(self.detection, list(self.attacks))  # named errors now, before any work

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _defenses(raw: Mapping[str, Mapping[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    if not raw:
        raise ConfigError("defenses must name at least one defense")
    out = {}
    for label, entry in raw.items():
        where = f"defenses.{label}"
        entry = dict(entry)
        kind = entry.pop("defense", None)
        if kind not in REPAIRS:
            raise ConfigError(f"{where}.defense must be one of {sorted(REPAIRS)}; got {kind!r}")
        entry.setdefault("seed", seed)
        try:
            build_defense(kind, entry)  # validates every parameter now, before any work
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        out[str(label)] = {"defense": kind, **entry}
    return out


def config_parser(prog: str = "lit-sr defend", description: str | None = None) -> ArgumentParser:
    """The parser of :class:`DefenseReportConfig` (the one dialect of every job, :mod:`lit_sr.jobs.parser`)."""
    return job_parser(DefenseReportConfig, prog, description or "The defense report of backdoored SR models.",
                      "the report's YAML file (configs/defend/*.yaml)")


def parse_config(raw: Any, source: str = "<dict>") -> DefenseReportConfig:
    """Validate a loaded YAML mapping into a :class:`DefenseReportConfig` (``source`` names the file)."""
    return parse_mapping(config_parser(), raw, source)


def load_config(path: str | Path, overrides: tuple[str, ...] = ()) -> DefenseReportConfig:
    """Read and validate the YAML file ``path``, then apply command-line style ``overrides``."""
    return load_job_config(config_parser(), path, overrides)
