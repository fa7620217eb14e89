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
``seed`` and ``progress`` default to the report's. Unknown keys, wrong types and out-of-range
values raise :class:`ConfigError` with the dotted key (``defenses.FP.prune_ratio``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from lit_sr.backdoor_defenses import DEFAULT_CLEAN_FRACTION, REPAIRS, build_defense
from lit_sr.errors import ConfigError
from lit_sr.jobs.defend.detection import detection_kwargs
from lit_sr.validation import check_choice, check_fraction, check_int, check_positive

ScoreMetric = Literal["attainment_asr", "asr_pixel"]
SCORE_METRICS: tuple[str, ...] = get_args(ScoreMetric)
Device = Literal["cpu", "cuda", "auto"]
DEVICES: tuple[str, ...] = get_args(Device)


@dataclass
class RunRef:
    """A trained run: its folder and the weights file inside it."""

    run_dir: str
    weights: str = "weights.pth"


@dataclass
class DefenseReportConfig:
    """The validated config (see the module docstring for every key)."""

    attacks: dict[str, RunRef]
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
    score_metric: ScoreMetric = "attainment_asr"
    psnr_tolerance: float = 1.0
    reference: tuple[str, RunRef] | None = None
    detection: dict[str, Any] | None = None
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) / self.name


TOP_KEYS = ("name", "output_dir", "device", "seed", "clean_fraction", "patch_size", "max_eval_images", "eval_crop",
            "batch_size", "score", "reference", "attacks", "defenses", "detection")


def _checked(where: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping; got {value!r:.80}")
    return value


def _unknown(value: Mapping, allowed, where: str) -> None:
    extra = sorted(set(value) - set(allowed))
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; expected some of {list(allowed)}")


def _optional_int(raw: Mapping, key: str, minimum: int) -> int | None:
    value = raw.get(key)
    return None if value is None else _checked(key, check_int, value, key, minimum)


def _run_ref(value: Any, where: str) -> RunRef:
    if isinstance(value, str):
        return RunRef(value)
    value = _mapping(value, where)
    _unknown(value, ("run_dir", "weights"), where)
    if not isinstance(value.get("run_dir"), str):
        raise ConfigError(f"{where}.run_dir must be the folder of a train.py run (a string); got {value.get('run_dir')!r}")
    weights = value.get("weights", "weights.pth")
    if not isinstance(weights, str):
        raise ConfigError(f"{where}.weights must be a file name; got {weights!r}")
    return RunRef(value["run_dir"], weights)


def _defenses(raw: Any, seed: int) -> dict[str, dict[str, Any]]:
    raw = _mapping(raw, "defenses")
    if not raw:
        raise ConfigError("defenses must name at least one defense")
    out = {}
    for label, entry in raw.items():
        where = f"defenses.{label}"
        entry = dict(_mapping(entry, where))
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


def parse_config(raw: Any, source: str = "<dict>") -> DefenseReportConfig:
    """Validate a loaded YAML mapping into a :class:`DefenseReportConfig` (``source`` names the file)."""
    raw = dict(_mapping(raw, source))
    _unknown(raw, TOP_KEYS, source)
    for key in ("attacks", "defenses"):
        if key not in raw:
            raise ConfigError(f"{source}: the key '{key}' is required")
    seed = _checked("seed", check_int, raw.get("seed", 0), "seed", 0)
    attacks = {str(k): _run_ref(v, f"attacks.{k}") for k, v in _mapping(raw["attacks"], "attacks").items()}
    if not attacks:
        raise ConfigError("attacks must name at least one poisoned run")
    score = _mapping(raw.get("score") or {}, "score")
    _unknown(score, ("metric", "psnr_tolerance"), "score")
    reference = None
    if raw.get("reference") is not None:
        ref = dict(_mapping(raw["reference"], "reference"))
        name = ref.pop("name", "reference")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"reference.name must be a non-empty string; got {name!r}")
        reference = (name, _run_ref(ref, "reference"))
    detection = raw.get("detection")
    if detection is not None:
        detection = dict(_mapping(detection, "detection"))
        detection_kwargs(detection, list(attacks))  # named errors now, before any work
    name = raw.get("name", "defend")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"name must be a folder name (no '/'); got {name!r}")
    output_dir = raw.get("output_dir", "runs")
    if not isinstance(output_dir, str):
        raise ConfigError(f"output_dir must be a path string; got {output_dir!r}")
    return DefenseReportConfig(
        attacks=attacks,
        defenses=_defenses(raw["defenses"], seed),
        name=name,
        output_dir=output_dir,
        device=_checked("device", check_choice, raw.get("device", "cpu"), "device", DEVICES),
        seed=seed,
        clean_fraction=_checked("clean_fraction", check_fraction, raw.get("clean_fraction", DEFAULT_CLEAN_FRACTION),
                                "clean_fraction", allow_zero=False),
        patch_size=_optional_int(raw, "patch_size", 2),
        max_eval_images=_optional_int(raw, "max_eval_images", 1),
        eval_crop=_optional_int(raw, "eval_crop", 2),
        batch_size=_checked("batch_size", check_int, raw.get("batch_size", 16), "batch_size", 1),
        score_metric=_checked("score.metric", check_choice, score.get("metric", "attainment_asr"), "score.metric",
                              SCORE_METRICS),
        psnr_tolerance=_checked("score.psnr_tolerance", check_positive, score.get("psnr_tolerance", 1.0),
                                "score.psnr_tolerance"),
        reference=reference,
        detection=detection,
        source=source,
        raw=raw,
    )


def load_config(path: str | Path) -> DefenseReportConfig:
    """Read and validate the YAML file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, str(path))
