"""The robustness report's schema: :class:`ReportConfig` and the dataclasses it holds, validated on construction.

jsonargparse reads YAML and command-line flags into these dataclasses (:func:`config_parser`, the
dialect of every job: :mod:`lit_sr.jobs.parser`);
:class:`ReportConfig` then checks what types cannot say (ranges, the attack and defense blocks,
cross-field references such as the transfer study's attack) and fills the defaults that depend
on other keys. A bad value raises :class:`~lit_sr.errors.ConfigError` naming its dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from lit_sr.archs import get_arch_class
from lit_sr.attacks.registry import plain_kinds
from lit_sr.attacks.spec import (
    AttackSpec,
    parse_attacks,
    parse_eps,
    parse_eps_list,
)
from lit_sr.defenses import INPUT_DEFENSES
from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.downstream import DownstreamSpec, check_downstream
from lit_sr.jobs.evaluate.input_defenses import parse_defense
from lit_sr.jobs.evaluate.robust import RobustStudy, resolve_robust_study
from lit_sr.jobs.evaluate.robustness_index import IndexStudy, resolve_index_study
from lit_sr.jobs.parser import job_parser, load_job_config, parse_mapping
from lit_sr.runtime import AUTOCAST_CHOICES, Autocast
from lit_sr.validation import check_int


@dataclass
class ModelSpec:
    """One model of the report (its name is its key in ``models``).

    Args:
        arch: registry name (``edsr``, ``rcan``, ``rrdbnet``, ``carn``, ``carn_m``, ``bicubic``, ...).
        arch_kwargs: constructor arguments (BasicSR names); the scale argument is filled in.
        weights: BasicSR ``.pth``, Lightning ``.ckpt`` or ``.safetensors`` file.
        weights_key: ``params`` / ``params_ema`` / ``None`` (EMA when present).
        strict: require an exact key match.
        scale: upscaling factor; ``None`` means the report's ``scale``.
        random_init: allow a network with parameters but no weights (smoke tests only).
    """

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    weights_key: str | None = None
    strict: bool = True
    scale: int | None = None
    random_init: bool = False


@dataclass
class TransferSpec:
    """The transferability study (Fig. 4): one data set, one eps, one per-image attack, all models (same scale).

    Args:
        dataset: a key of ``datasets``; ``None`` means the first.
        eps: the budget, a number or a string like ``"8/255"``; ``None`` means the eps of the grid
            closest to 8/255 (the paper's reference budget).
        attack: a label of ``attacks`` whose kind is ifgsm, pgd or square; ``None`` means the first such.
        max_images: use only the first N images of the data set.
    """

    dataset: str | None = None
    eps: float | str | None = None
    attack: str | None = None
    max_images: int | None = None


@dataclass
class DefenseStudy:
    """Naive and adaptive evaluation of input defenses (:func:`lit_sr.defenses.evaluate_defense`).

    Args:
        methods: label -> constructor arguments of the defense; the label is the kind (``resize``,
            ``random_resize``, ``self_ensemble``, ``jpeg``, ``bit_depth``) unless the arguments hold
            ``defense: <kind>``. Once validated, every entry holds its ``defense`` key.
        attack: label of a per-image attack (ifgsm, pgd, square) of ``attacks``; ``None``: the first.
        eps: budgets; ``None``: the eps of the grid closest to 8/255.
        datasets: data sets to run on; ``None``: the first.
    """

    methods: dict[str, dict[str, Any] | None]
    attack: str | None = None
    eps: list[float | str] | None = None
    datasets: list[str] | None = None


@dataclass
class ReportConfig:
    """A robustness report: what to attack, with what, and where to write (validated on construction).

    Args:
        models: name -> :class:`ModelSpec`.
        datasets: name -> folder of HR images (LR made by MATLAB bicubic, :func:`lit_sr.ops.make_lr`).
        attacks: label -> attack parameters (:func:`lit_sr.attacks.spec.parse_attacks`); held as
            the parsed :class:`AttackSpec` list once constructed.
        eps: budgets on the [0, 1] scale, numbers or strings like ``"8/255"`` (floats once constructed).
        scale: upscaling factor of the models that do not set their own.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:<n>``.
        batch_size: same-size images attacked together.
        max_images: the first N images of each data set (quick runs); ``None``: all.
        crop_size: centre-crop every image pair to this many LR pixels first (equal sizes batch).
        seed: seed of the attacks' random choices.
        y_channel: metrics on BT.601 Y (the SR convention) instead of RGB.
        crop_border: SR-side border crop of the metrics; ``None`` means each model's scale.
        autocast: ``"none"`` (float32) or ``"bf16"`` for the attacks' forward passes.
        transfer: the transferability study; ``true`` for its defaults, ``null``/``false`` for none.
        defenses: the defense study, or ``None``.
        downstream: downstream models and labels (:class:`lit_sr.jobs.evaluate.downstream.DownstreamSpec`), or ``None``.
        robust: base vs fine-tuned vs defended models at their worst case, with the trade-off plot
            (:class:`lit_sr.jobs.evaluate.robust.RobustStudy`), or ``None``.
        robustness_index: Choi's robustness index per image with its PSNR scatter
            (:class:`lit_sr.jobs.evaluate.robustness_index.IndexStudy`), or ``None``.
        out: output folder.

    ``raw`` (the config as given, for ``results.json``) and ``source`` (where it came from) are
    set by the parser (:func:`parse_config`, :func:`load_config`, ``lit-sr evaluate``).
    """

    models: dict[str, ModelSpec]
    datasets: dict[str, str]
    attacks: dict[str, dict[str, Any] | None] | list[AttackSpec]
    eps: list[float | str]
    scale: int = 4
    device: str = "auto"
    batch_size: int = 8
    max_images: int | None = None
    crop_size: int | None = None
    seed: int = 0
    y_channel: bool = True
    crop_border: int | None = None
    autocast: Autocast = "none"
    transfer: TransferSpec | bool | None = None
    defenses: DefenseStudy | None = None
    downstream: DownstreamSpec | None = None
    robust: RobustStudy | None = None
    robustness_index: IndexStudy | None = None
    out: str = "runs/robustness"
    raw: dict = field(default_factory=dict, init=False)
    source: str = field(default="<dict>", init=False)

    def __post_init__(self) -> None:
        self.scale = _int(self.scale, "scale", 1)
        self.batch_size = _int(self.batch_size, "batch_size", 1)
        self.max_images = _int(self.max_images, "max_images", 1, optional=True)
        self.crop_size = _int(self.crop_size, "crop_size", 1, optional=True)
        self.seed = _int(self.seed, "seed", 0)
        self.crop_border = _int(self.crop_border, "crop_border", 0, optional=True)
        if self.autocast not in AUTOCAST_CHOICES:
            raise ConfigError(f"autocast: expected one of {list(AUTOCAST_CHOICES)}, got {self.autocast!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {self.device!r}")
        self._check_models()
        if not isinstance(self.datasets, Mapping) or not self.datasets or not all(
            isinstance(v, str) for v in self.datasets.values()
        ):
            raise ConfigError("datasets: expected a non-empty mapping name -> folder of HR images")
        self.attacks = parse_attacks(_attack_block(self.attacks))
        self.eps = parse_eps_list(self.eps)
        self.transfer = self._resolve_transfer(self.transfer)
        self.defenses = self._resolve_defenses(self.defenses)
        self.downstream = check_downstream(self.downstream, self.datasets, self.crop_size)
        self.robust = resolve_robust_study(self, self.robust)
        self.robustness_index = resolve_index_study(self, self.robustness_index)

    def _check_models(self) -> None:
        if not isinstance(self.models, Mapping) or not self.models:
            raise ConfigError("models: expected a non-empty mapping name -> {arch, arch_kwargs, weights, ...}")
        for name, spec in self.models.items():
            where = f"models.{name}"
            if not isinstance(spec, ModelSpec):
                raise ConfigError(f"{where}: expected a ModelSpec, got {type(spec).__name__}")
            try:
                get_arch_class(spec.arch)
            except KeyError as exc:
                raise ConfigError(f"{where}.arch: {exc.args[0]}") from None
            spec.scale = _int(self.scale if spec.scale is None else spec.scale, f"{where}.scale", 1)

    def _default_attack(self) -> str | None:
        plain = [a.label for a in self.attacks if a.kind in plain_kinds()]
        return plain[0] if plain else None

    def _check_plain_attack(self, label, where: str) -> str:
        kinds = {a.label: a.kind for a in self.attacks}
        if label not in kinds:
            raise ConfigError(f"{where}: {label!r} is not an attack label of the attacks block {list(kinds)}")
        if kinds[label] not in plain_kinds():
            raise ConfigError(f"{where}: {label!r} is a {kinds[label]} attack; expected one of the kinds {list(plain_kinds())}")
        return label

    def _check_dataset(self, name, where: str) -> str:
        if name not in self.datasets:
            raise ConfigError(f"{where}: {name!r} is not one of the datasets {list(self.datasets)}")
        return name

    def _resolve_transfer(self, spec: TransferSpec | bool | None) -> TransferSpec | None:
        if spec is None or spec is False:
            return None
        spec = TransferSpec() if spec is True else spec
        if not isinstance(spec, TransferSpec):
            raise ConfigError(f"transfer: expected true, false, null or a mapping, got {spec!r}")
        dataset = self._check_dataset(next(iter(self.datasets)) if spec.dataset is None else spec.dataset,
                                      "transfer.dataset")
        attack = self._check_plain_attack(self._default_attack() if spec.attack is None else spec.attack,
                                          "transfer.attack")
        eps = _middle_eps(self.eps) if spec.eps is None else parse_eps(spec.eps, "transfer.eps")
        scales = {m.scale for m in self.models.values()}
        if len(scales) > 1:
            raise ConfigError(f"transfer: all models must share one scale to swap inputs between them, got {sorted(scales)}")
        if len(self.models) < 2:
            raise ConfigError("transfer: needs at least two models")
        return TransferSpec(dataset=dataset, eps=eps, attack=attack,
                            max_images=_int(spec.max_images, "transfer.max_images", 1, optional=True))

    def _resolve_defenses(self, study: DefenseStudy | None) -> DefenseStudy | None:
        if study is None:
            return None
        if not isinstance(study, DefenseStudy):
            raise ConfigError(f"defenses: expected a mapping with methods, attack, eps, datasets, got {study!r}")
        if not isinstance(study.methods, Mapping) or not study.methods:
            raise ConfigError(f"defenses.methods: expected a mapping label -> parameters with kinds {sorted(INPUT_DEFENSES)}")
        methods = {label: parse_defense(label, params) for label, params in study.methods.items()}
        attack = self._check_plain_attack(self._default_attack() if study.attack is None else study.attack,
                                          "defenses.attack")
        eps = [_middle_eps(self.eps)] if study.eps is None else parse_eps_list(study.eps, "defenses.eps")
        datasets = [next(iter(self.datasets))] if study.datasets is None else study.datasets
        datasets = [datasets] if isinstance(datasets, str) else list(datasets)
        for name in datasets:
            self._check_dataset(name, "defenses.datasets")
        return DefenseStudy(methods=methods, attack=attack, eps=eps, datasets=datasets)


def _int(value, where: str, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    try:
        return check_int(value, where, minimum)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{exc}{' (or null)' if optional else ''}") from None


def _attack_block(attacks) -> Mapping:
    """The ``attacks`` mapping, also from an already parsed :class:`AttackSpec` list (parsed again)."""
    if isinstance(attacks, Sequence) and not isinstance(attacks, str) and all(isinstance(a, AttackSpec) for a in attacks):
        return {a.label: {"attack": a.kind, **a.kwargs, **({"target": a.target} if a.kind == "targeted" else {})}
                for a in attacks}
    return attacks


def _middle_eps(eps: Sequence[float]) -> float:
    # 8/255 is the paper's reference budget; otherwise the middle of the grid.
    return min(eps, key=lambda e: abs(e - 8 / 255)) if eps else 8 / 255


def config_parser(prog: str = "lit-sr evaluate", description: str | None = None) -> ArgumentParser:
    """The parser of :class:`ReportConfig`: ``--config FILE`` (repeatable) and one flag per key, nested keys dotted."""
    return job_parser(ReportConfig, prog, description or "Robustness report of SR models against adversarial attacks.",
                      "YAML robustness config (configs/evaluate/*.yaml)")


def parse_config(raw: Mapping, source: str = "<dict>") -> ReportConfig:
    """Validate a robustness config given as a mapping (e.g. loaded YAML); errors name ``source`` and the dotted key.

    Paths are checked when the report starts (:func:`lit_sr.jobs.evaluate.runner.check_paths`), so
    a config can be parsed anywhere.
    """
    return parse_mapping(config_parser(), raw, source)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ReportConfig:
    """Read and validate a YAML robustness config, then apply command-line style ``overrides``.

    ``overrides`` are flags as ``lit-sr evaluate`` takes them, e.g.
    ``["--models.EDSR-quickstart.weights", "runs/quickstart/quickstart/weights.pth", "--max_images", "2"]``.
    """
    return load_job_config(config_parser(), path, overrides)
