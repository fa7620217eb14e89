"""Robustness report of SR models against adversarial attacks (Choi et al., ICCV 2019): loops and writers.

Every configured attack at every eps against every model on every data set, plus the
transferability matrix and the input defenses, written as tables, plots and a Markdown summary::

    cfg = load_config("configs/robustness_quick.yaml", overrides=["--models.EDSR-quickstart.weights", "w.pth"])
    result = run_report(cfg)          # rows, transfer, defenses, meta, written files

The config's schema is :class:`ReportConfig` and the dataclasses it holds; jsonargparse reads YAML
and command-line overrides into them (:func:`config_parser`), so a typo'd key fails with its dotted
name (``models.EDSR.weigths``) and a bad value is named before anything runs. The command line is
``python -m lit_sr.evaluate`` (see ``configs/robustness_choi2019.yaml`` for every key, documented).

Outputs (every file written atomically): ``results.csv`` and ``results.json`` (one row per model x
data set x attack x eps with the mean metrics), ``plots/psnr_vs_eps_<dataset>_<attack>.png``,
``plots/transfer_<dataset>.png``, ``defenses.csv`` and ``summary.md``.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import platform
import re
import time
import types
import typing
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.archs import build_arch, count_parameters, get_arch_class
from lit_sr.attacks import Attack, transfer_matrix
from lit_sr.attacks.spec import (
    METRIC_KEYS,
    PLAIN_KINDS,
    TARGET_KEYS,
    AttackRunner,
    AttackSpec,
    ConfigError,
    eps_label,
    eps_text,
    init_params,
    parse_attacks,
    parse_eps,
    parse_eps_list,
    shape_batches,
)
from lit_sr.defenses import (
    BitDepthReduction,
    JPEGDefense,
    RandomResizeDefense,
    ResizeDefense,
    SelfEnsemble,
    evaluate_defense,
)
from lit_sr.io import atomic_write, list_images, load_weights, read_image
from lit_sr.ops import make_lr, mod_crop
from lit_sr.plots import psnr_vs_eps_figure, save_figure, transfer_figure
from lit_sr.runtime import AUTOCAST_CHOICES, Autocast
from lit_sr.validation import check_int

# --------------------------------------------------------------------------- config


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


DEFENSES: dict[str, type[nn.Module]] = {
    "resize": ResizeDefense,
    "random_resize": RandomResizeDefense,
    "self_ensemble": SelfEnsemble,
    "jpeg": JPEGDefense,
    "bit_depth": BitDepthReduction,
}


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
        out: output folder.

    ``raw`` (the config as given, for ``results.json``) and ``source`` (where it came from) are
    set by :func:`parse_config` / :func:`load_config`.
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
        plain = [a.label for a in self.attacks if a.kind in PLAIN_KINDS]
        return plain[0] if plain else None

    def _check_plain_attack(self, label, where: str) -> str:
        kinds = {a.label: a.kind for a in self.attacks}
        if label not in kinds:
            raise ConfigError(f"{where}: {label!r} is not an attack label of the attacks block {list(kinds)}")
        if kinds[label] not in PLAIN_KINDS:
            raise ConfigError(f"{where}: {label!r} is a {kinds[label]} attack; expected one of the kinds {list(PLAIN_KINDS)}")
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
            raise ConfigError(f"defenses.methods: expected a mapping label -> parameters with kinds {sorted(DEFENSES)}")
        methods = {label: _parse_defense(label, params) for label, params in study.methods.items()}
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


def _parse_defense(label: str, params: Mapping | None) -> dict[str, Any]:
    where = f"defenses.methods.{label}"
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {params!r}")
    params = dict(params or {})
    kind = params.pop("defense", label)
    if kind not in DEFENSES:
        raise ConfigError(f"{where}: unknown defense {kind!r}; expected one of {sorted(DEFENSES)}")
    allowed = init_params(DEFENSES[kind])
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; expected some of {allowed}")
    try:
        DEFENSES[kind](nn.Identity(), **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return {"defense": kind, **params}


def _middle_eps(eps: Sequence[float]) -> float:
    # 8/255 is the paper's reference budget; otherwise the middle of the grid.
    return min(eps, key=lambda e: abs(e - 8 / 255)) if eps else 8 / 255


# --------------------------------------------------------------------------- reading a config


def check_keys(value: Any, hint: Any = ReportConfig, where: str = "") -> None:
    """Raise :class:`ConfigError` naming the first key of ``value`` the schema ``hint`` rejects, by its dotted path.

    Walks mappings along the dataclasses of the schema (and their ``dict[str, ...]`` fields): an
    unknown key is named ``models.EDSR.weigths``, and each value given for a field is checked
    against the field's type by jsonargparse (``models.EDSR.strict: Expected a bool``). jsonargparse
    checks the same when it parses, but inside a ``dict`` of dataclasses its message loses the
    entry's name. Cross-field checks are :class:`ReportConfig`'s.
    """
    hint = _schema_type(hint, value)
    if is_dataclass(hint) and isinstance(value, Mapping):
        hints = typing.get_type_hints(hint)
        names = [f.name for f in fields(hint) if f.init]
        for key, sub in value.items():
            if key not in names:
                raise ConfigError(f"{where}{key}: unknown key; expected some of {names}")
            field_hint = _schema_type(hints[key], sub)
            if is_dataclass(field_hint) or typing.get_origin(field_hint) in (dict, Mapping):
                check_keys(sub, field_hint, f"{where}{key}.")
            else:
                _check_value(sub, hints[key], f"{where}{key}")
    elif typing.get_origin(hint) in (dict, Mapping) and isinstance(value, Mapping):
        for key, sub in value.items():
            check_keys(sub, typing.get_args(hint)[1], f"{where}{key}.")


def _check_value(value: Any, hint: Any, where: str) -> None:
    from jsonargparse import ArgumentError

    try:
        _value_parser(hint).parse_object({"value": value})
    except ArgumentError as exc:
        raise ConfigError(f"{where}: {str(exc).split(chr(10), 1)[-1].strip()}") from None


@functools.cache
def _value_parser(hint: Any):
    """A one-argument jsonargparse parser that checks a value against ``hint`` (cached per type)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_argument("--value", type=hint, required=True)
    return parser


def check_dotted_key(key: str, hint: Any = ReportConfig) -> Any:
    """Raise :class:`ConfigError` when a dotted command-line key (``models.EDSR.weigths``) is not in the schema.

    Returns the type of the value the key sets (``None`` for ``--<key>.help`` or a free-form part
    such as an architecture's keyword arguments).
    """
    parts = key.split(".")
    inside_entry = False
    for i, part in enumerate(parts):
        hint = _schema_type(hint, {})
        if is_dataclass(hint):
            if part == "help" and i == len(parts) - 1:
                return None
            hints = typing.get_type_hints(hint)
            names = [f.name for f in fields(hint) if f.init]
            if part not in names:
                above = ".".join(parts[:i])
                raise ConfigError(f"--{'.'.join(parts[: i + 1])}: unknown key; expected one of {names}"
                                  + (f" after --{above}" if above else ""))
            hint = hints[part]
        elif typing.get_origin(hint) in (dict, Mapping):
            # jsonargparse sets one entry of a dict, and one field of an entry that is a dataclass.
            # Deeper (a key inside a free-form entry, or inside a dict field of a dataclass entry) it
            # would replace the whole mapping with that one key, or fail: ask for the whole mapping.
            hint = typing.get_args(hint)[1]
            whole = ".".join(parts[:i] if inside_entry else parts[: i + 1])
            if inside_entry or (i + 1 < len(parts) and not is_dataclass(_schema_type(hint, {}))):
                example = parts[len(whole.split("."))]
                raise ConfigError(f"--{key}: give the whole mapping instead, e.g. --{whole} '{{{example}: ...}}'")
            inside_entry = True
        else:
            return None
    return None if hint is Any else hint


def _schema_type(hint: Any, value: Any) -> Any:
    """The member of a union that a mapping ``value`` fills: its dataclass or dict type, else ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if isinstance(value, Mapping):
            for member in members:
                if is_dataclass(member) or typing.get_origin(member) in (dict, Mapping):
                    return member
    return hint


def _config_file_action():
    from jsonargparse import ActionConfigFile

    class ReportConfigFile(ActionConfigFile):
        """``--config FILE``: the YAML's keys are checked with their dotted names (:func:`check_keys`) first."""

        def __call__(self, parser, cfg, values, option_string=None):
            if Path(values).is_file():
                _check_file_keys(Path(values))
            elif not str(values).lstrip().startswith("{"):  # jsonargparse also takes an inline YAML mapping
                raise FileNotFoundError(f"robustness config not found: {values}")
            super().__call__(parser, cfg, values, option_string)

    return ReportConfigFile


def _check_file_keys(path: Path) -> None:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    try:
        check_keys(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_parser(prog: str | None = None, description: str | None = None):
    """The jsonargparse parser of :class:`ReportConfig`: ``--config FILE`` (repeatable) and one flag per key.

    Nested keys are dotted: ``--models.EDSR.weights PATH``, ``--transfer.eps 4/255``,
    ``--attacks.ifgsm '{steps: 5}'`` (a dict entry given on the command line replaces that entry).
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, env_prefix=None,
                            default_env=False)
    parser.add_argument("--config", action=_config_file_action(),
                        help="YAML robustness config (configs/robustness_*.yaml); later flags override it")
    parser.add_class_arguments(ReportConfig, fail_untyped=True)
    return parser


def config_from_namespace(parser, namespace, source: str) -> ReportConfig:
    """Build the validated :class:`ReportConfig` of a parsed namespace (errors prefixed with ``source``)."""
    names = [f.name for f in fields(ReportConfig) if f.init]
    raw = {k: v for k, v in namespace.clone().as_dict().items() if k in names}
    init = parser.instantiate(namespace)
    try:
        cfg = ReportConfig(**{k: init[k] for k in names})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    cfg.raw = json.loads(json.dumps(raw, default=str))
    cfg.source = source
    return cfg


def parse_args(parser, argv: Sequence[str]):
    """``parser.parse_args(argv)`` with dotted flags checked first and jsonargparse's errors as :class:`ConfigError`.

    A dotted flag (``--models.EDSR.weights PATH``) is checked against the schema, its value against
    the key's type, so that an error names the whole key (:func:`check_dotted_key`).
    """
    from jsonargparse import ArgumentError

    for i, arg in enumerate(argv):
        key, equals, value = arg[2:].partition("=")
        if not arg.startswith("--") or "." not in key:
            continue
        hint = check_dotted_key(key)
        if not equals and i + 1 < len(argv):
            value = argv[i + 1]
        if hint is not None and (equals or i + 1 < len(argv)):
            try:
                _value_parser(hint).parse_args(["--value", value])
            except ArgumentError as exc:
                raise ConfigError(f"--{key}: {str(exc).split(chr(10), 1)[-1].strip()}") from None
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None


def parse_config(raw: Mapping, source: str = "<dict>") -> ReportConfig:
    """Validate a robustness config (a mapping, e.g. loaded YAML) and return a :class:`ReportConfig`.

    Every key is checked before anything runs: an unknown or ill-typed key raises
    :class:`ConfigError` naming it (``models.EDSR.wieghts``, ``attacks.ifgsm.stepz``, ...). Paths
    are checked when the report starts (:func:`check_paths`), so a config can be parsed anywhere.
    """
    from jsonargparse import ArgumentError

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        check_keys(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    parser = config_parser()
    try:
        namespace = parser.parse_object(copy.deepcopy(dict(raw)))  # jsonargparse converts it in place
    except ArgumentError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config_from_namespace(parser, namespace, source)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ReportConfig:
    """Read and validate a YAML robustness config, then apply command-line style ``overrides``.

    ``overrides`` are flags as :func:`config_parser` takes them, e.g.
    ``["--models.EDSR-quickstart.weights", "runs/quickstart/quickstart/weights.pth", "--max_images", "2"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robustness config not found: {path}")
    parser = config_parser()
    try:
        namespace = parse_args(parser, ["--config", str(path), *overrides])
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return config_from_namespace(parser, namespace, str(path))


def check_paths(cfg: ReportConfig) -> None:
    """Raise ``FileNotFoundError`` naming the first missing data folder or weights file, before any compute."""
    for name, folder in cfg.datasets.items():
        try:
            list_images(folder)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"datasets.{name}: {exc}") from None
    for name, spec in cfg.models.items():
        if spec.weights is not None and not Path(spec.weights).is_file():
            raise FileNotFoundError(
                f"models.{name}.weights: file not found: {spec.weights} (model-zoo weights are never "
                f"downloaded; put the file there, change the path or pass --models.{name}.weights PATH)"
            )


# --------------------------------------------------------------------------- models and data


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or any ``torch.device`` string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was requested but CUDA is not available")
    return resolved


def build_model(spec: ModelSpec, device: torch.device, name: str = "model") -> nn.Module:
    """Build a model of the report, load its weights and put it on ``device`` in eval mode.

    ``name`` is its key in ``models``, for the error messages.
    """
    from lit_sr.modules.sr_module import arch_kwargs_with_scale

    scale = 4 if spec.scale is None else spec.scale
    try:
        net = build_arch(spec.arch, **arch_kwargs_with_scale(spec.arch, spec.arch_kwargs, scale))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"models.{name}: {exc}") from None
    if spec.weights is not None:
        load_weights(net, spec.weights, key=spec.weights_key, strict=spec.strict)
    elif count_parameters(net) and not spec.random_init:
        raise ConfigError(
            f"models.{name}.weights is required: {spec.arch} has {count_parameters(net):,} parameters and a "
            f"report on random weights measures nothing (pass --models.{name}.weights PATH, or set "
            "random_init: true to do it deliberately)"
        )
    return net.to(device).eval()


@dataclass
class ImagePair:
    """One evaluation image: its name, the LR ``(C, h, w)`` and HR ``(C, H, W)`` tensors (CPU)."""

    name: str
    lr: torch.Tensor
    hr: torch.Tensor


def load_pairs(folder: str | Path, scale: int, max_images: int | None = None, crop_size: int | None = None) -> list[ImagePair]:
    """The HR images of a folder (sorted, the first ``max_images``) with their LR counterparts.

    HR images are mod-cropped to the scale and their LR images made by :func:`lit_sr.ops.make_lr`
    (MATLAB bicubic, rounded to 8 bits, as the benchmark's LR PNG files are), the data modules'
    protocol. ``crop_size`` (LR pixels) centre-crops every image pair first (images smaller than
    that are kept whole), so that equal sizes can be batched.
    """
    pairs = []
    for path in list_images(folder)[:max_images]:
        hr = mod_crop(read_image(path), scale)
        if crop_size is not None:
            size = crop_size * scale
            h, w = hr.shape[-2:]
            top, left = max(0, (h - size) // 2) // scale * scale, max(0, (w - size) // 2) // scale * scale
            hr = hr[:, top : top + size, left : left + size]
        try:
            lr, hr = make_lr(hr, scale)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        pairs.append(ImagePair(name=path.stem, lr=lr, hr=hr))
    return pairs


# --------------------------------------------------------------------------- running


ROW_FIELDS = (
    "model", "dataset", "attack", "kind", "eps", "eps_255", "n_images", "skipped",
    *METRIC_KEYS, *TARGET_KEYS, "seconds",
)  # fmt: skip
DEFENSE_FIELDS = (
    "model", "dataset", "defense", "kind", "attack", "eps", "eps_255", "n_images", "undefended_sr_psnr",
    "naive_sr_psnr", "adaptive_sr_psnr", "worst_sr_psnr", "clean_hr_psnr", "naive_hr_psnr", "adaptive_hr_psnr",
    "worst_hr_psnr",
)  # fmt: skip


def _batch(pairs: Sequence[ImagePair], idx: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lr = torch.stack([pairs[i].lr for i in idx]).to(device)
    hr = torch.stack([pairs[i].hr for i in idx]).to(device)
    return lr, hr


def evaluate_attack(
    model: nn.Module,
    pairs: Sequence[ImagePair],
    spec: AttackSpec,
    eps: float,
    *,
    device: torch.device,
    batch_size: int = 8,
    seed: int = 0,
    autocast: Autocast = "none",
    crop_border: int = 0,
    y_channel: bool = True,
) -> dict:
    """Mean metrics of one attack at one eps over a data set (one row of the report).

    The universal attack is fitted on every image wide enough for its crop, then applied to
    them; narrower images are skipped and counted in ``skipped``. All arguments as in
    :class:`AttackRunner`; ``pairs`` from :func:`load_pairs`.
    """
    start = time.perf_counter()
    runner = AttackRunner(spec, model, eps, seed=seed, autocast=autocast, crop_border=crop_border,
                          y_channel=y_channel, batch_size=batch_size)
    usable = [i for i, p in enumerate(pairs) if runner.accepts(p.lr)]
    values: dict[str, list[torch.Tensor]] = defaultdict(list)
    if usable:
        runner.fit([(pairs[i].lr, pairs[i].hr) for i in usable])
        for idx in shape_batches([p.lr.shape for p in pairs], usable, batch_size):
            _, metrics = runner.run(*_batch(pairs, idx, device))
            for key, value in metrics.items():
                values[key].append(value)
    row = {"attack": spec.label, "kind": spec.kind, "eps": eps, "eps_255": round(eps * 255, 4),
           "n_images": len(usable), "skipped": len(pairs) - len(usable)}
    for key in spec.metric_keys():
        row[key] = float(torch.cat(values[key]).mean()) if values.get(key) else float("nan")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def run_transfer(cfg: ReportConfig, models: Mapping[str, nn.Module], pairs: Sequence[ImagePair],
                 device: torch.device) -> dict:
    """The transferability matrix (:func:`lit_sr.attacks.transfer_matrix`) over a data set, image-weighted.

    ``transfer_matrix`` takes one batch of equal-size images, so it runs once per image size and
    the matrices are averaged with the number of images of each size as weights.
    """
    ts = cfg.transfer
    spec = next(a for a in cfg.attacks if a.label == ts.attack)
    pairs = list(pairs)[: ts.max_images]
    scale = next(iter(cfg.models.values())).scale
    crop_border = scale if cfg.crop_border is None else cfg.crop_border

    def factory(model: nn.Module) -> Attack:
        return AttackRunner(spec, model, ts.eps, seed=cfg.seed, autocast=cfg.autocast).attack

    sr_sum = hr_sum = None
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[tuple(p.lr.shape)].append(i)
    for idx in groups.values():
        lr, hr = _batch(pairs, idx, device)
        res = transfer_matrix(dict(models), lr, hr, attack_factory=factory, batch_size=cfg.batch_size,
                              crop_border=crop_border, y_channel=cfg.y_channel)
        weight = len(idx) / len(pairs)
        sr_sum = res["sr_psnr"] * weight if sr_sum is None else sr_sum + res["sr_psnr"] * weight
        hr_sum = res["hr_psnr"] * weight if hr_sum is None else hr_sum + res["hr_psnr"] * weight
    return {"dataset": ts.dataset, "attack": ts.attack, "eps": ts.eps, "eps_255": round(ts.eps * 255, 4),
            "n_images": len(pairs), "names": list(models), "sr_psnr": sr_sum.tolist(), "hr_psnr": hr_sum.tolist()}


def run_defense(model: nn.Module, pairs: Sequence[ImagePair], kind: str, params: dict, spec: AttackSpec, eps: float,
                *, device: torch.device, batch_size: int, seed: int, autocast: Autocast, crop_border: int,
                y_channel: bool) -> dict:
    """Mean naive / adaptive / worst-case metrics of one defense (:func:`lit_sr.defenses.evaluate_defense`)."""
    defense = DEFENSES[kind](model, **params).to(device)

    def factory(target: nn.Module) -> Attack:
        return AttackRunner(spec, target, eps, seed=seed, autocast=autocast).attack

    values: dict[str, list[torch.Tensor]] = defaultdict(list)
    for idx in shape_batches([p.lr.shape for p in pairs], range(len(pairs)), batch_size):
        lr, hr = _batch(pairs, idx, device)
        res = evaluate_defense(model, defense, lr, factory, hr=hr, crop_border=crop_border, y_channel=y_channel)
        for key, value in res.items():
            values[key].append(value.double().cpu())
    return {key: float(torch.cat(v).mean()) for key, v in values.items()}


def run_report(cfg: ReportConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run the whole report of a config and write its files; return rows, transfer, defenses and file paths.

    Args:
        cfg: a :class:`ReportConfig` (:func:`load_config`, :func:`parse_config`).
        out_dir: output folder (default ``cfg.out``).
        progress: show tqdm progress bars.
    """
    started = time.perf_counter()
    out = Path(out_dir if out_dir is not None else cfg.out)
    check_paths(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    models = {name: build_model(spec, device, name) for name, spec in cfg.models.items()}
    cache: dict[tuple[str, int], list[ImagePair]] = {}

    def pairs_of(dataset: str, scale: int) -> list[ImagePair]:
        if (dataset, scale) not in cache:
            cache[dataset, scale] = load_pairs(cfg.datasets[dataset], scale, cfg.max_images, cfg.crop_size)
        return cache[dataset, scale]

    rows = []
    total = len(models) * len(cfg.datasets) * len(cfg.attacks) * len(cfg.eps)
    with tqdm(total=total, desc="robustness", disable=not progress) as bar:
        for name, model in models.items():
            scale = cfg.models[name].scale
            crop_border = scale if cfg.crop_border is None else cfg.crop_border
            for dataset in cfg.datasets:
                pairs = pairs_of(dataset, scale)
                for spec in cfg.attacks:
                    for eps in cfg.eps:
                        bar.set_postfix_str(f"{name} {dataset} {spec.label} {eps_label(eps)}")
                        row = evaluate_attack(model, pairs, spec, eps, device=device, batch_size=cfg.batch_size,
                                              seed=cfg.seed, autocast=cfg.autocast, crop_border=crop_border,
                                              y_channel=cfg.y_channel)
                        if row["skipped"]:
                            warnings.warn(f"{spec.label} on {dataset}: {row['skipped']} image(s) narrower than the "
                                          f"universal crop were skipped", stacklevel=2)
                        rows.append({"model": name, "dataset": dataset, **row})
                        bar.update(1)
    transfer = None
    if cfg.transfer is not None:
        scale = next(iter(cfg.models.values())).scale
        transfer = run_transfer(cfg, models, pairs_of(cfg.transfer.dataset, scale), device)
    defense_rows = []
    if cfg.defenses is not None:
        study = cfg.defenses
        spec = next(a for a in cfg.attacks if a.label == study.attack)
        jobs = [(n, d, label, e) for n in models for d in study.datasets for label in study.methods for e in study.eps]
        for name, dataset, label, eps in tqdm(jobs, desc="defenses", disable=not progress):
            scale = cfg.models[name].scale
            params = dict(study.methods[label])
            kind = params.pop("defense")
            pairs = pairs_of(dataset, scale)
            res = run_defense(models[name], pairs, kind, params, spec, eps, device=device,
                              batch_size=cfg.batch_size, seed=cfg.seed, autocast=cfg.autocast,
                              crop_border=scale if cfg.crop_border is None else cfg.crop_border,
                              y_channel=cfg.y_channel)
            defense_rows.append({"model": name, "dataset": dataset, "defense": label, "kind": kind,
                                 "attack": study.attack, "eps": eps, "eps_255": round(eps * 255, 4),
                                 "n_images": len(pairs), **res})
    meta = {
        "config": cfg.source,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "metric_convention": f"{'Y (BT.601)' if cfg.y_channel else 'RGB'}, 8-bit, crop_border="
                             f"{'scale' if cfg.crop_border is None else cfg.crop_border}",
    }
    files = write_report(out, cfg, rows, transfer, defense_rows, meta)
    return {"rows": rows, "transfer": transfer, "defenses": defense_rows, "meta": meta, "files": files}


# --------------------------------------------------------------------------- outputs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _write_csv(path: Path, rows: Sequence[Mapping], fields: Sequence[str]) -> Path:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return path


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(out: Path, cfg: ReportConfig, rows: list[dict], transfer: dict | None, defense_rows: list[dict],
                 meta: dict) -> dict[str, str]:
    """Write ``results.csv``, ``results.json``, the plots, ``defenses.csv`` and ``summary.md`` into ``out``."""
    files = {"csv": _write_csv(out / "results.csv", rows, ROW_FIELDS)}
    payload = {"meta": meta, "config": cfg.raw, "rows": rows, "transfer": transfer, "defenses": defense_rows}
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(_json_safe(payload), indent=2))
    files["json"] = out / "results.json"
    plots = {}
    for dataset in cfg.datasets:
        for spec in cfg.attacks:
            sel = [r for r in rows if r["dataset"] == dataset and r["attack"] == spec.label]
            panels = {
                "SR PSNR, attacked vs clean output (higher = more robust)":
                    {m: [(r["eps_255"], r["sr_psnr"]) for r in sel if r["model"] == m] for m in cfg.models},
                "PSNR, attacked output vs HR":
                    {m: [(r["eps_255"], r["hr_psnr"]) for r in sel if r["model"] == m] for m in cfg.models},
            }
            fig = psnr_vs_eps_figure(panels, f"{spec.label} ({spec.kind}) on {dataset}")
            path = save_figure(fig, out / "plots" / f"psnr_vs_eps_{_slug(dataset)}_{_slug(spec.label)}.png")
            plots[dataset, spec.label] = path
            files[f"plot:{dataset}:{spec.label}"] = path
    if transfer is not None:
        fig = transfer_figure(transfer["names"], transfer["sr_psnr"],
                              f"{transfer['attack']} at {eps_text(transfer['eps'])} on {transfer['dataset']}")
        files["transfer_plot"] = save_figure(fig, out / "plots" / f"transfer_{_slug(transfer['dataset'])}.png")
    if defense_rows:
        files["defenses_csv"] = _write_csv(out / "defenses.csv", defense_rows, DEFENSE_FIELDS)
    text = summary_markdown(cfg, rows, transfer, defense_rows, meta, plots, out)
    with atomic_write(out / "summary.md") as tmp:
        tmp.write_text(text)
    files["summary"] = out / "summary.md"
    return {k: str(v) for k, v in files.items()}


def robustness_ranking(rows: Sequence[Mapping], dataset: str, attack: str) -> list[tuple[str, float]]:
    """Models ordered from most to least robust: mean SR PSNR (attacked vs clean output) over the eps grid."""
    means = defaultdict(list)
    for r in rows:
        if r["dataset"] == dataset and r["attack"] == attack and math.isfinite(r["sr_psnr"]):
            means[r["model"]].append(r["sr_psnr"])
    return sorted(((m, sum(v) / len(v)) for m, v in means.items()), key=lambda mv: -mv[1])


def summary_markdown(cfg: ReportConfig, rows, transfer, defense_rows, meta, plots, out: Path) -> str:
    """The Markdown summary: one table per data set x attack (models x eps), transfer and defenses."""
    lines = [
        "# Robustness report",
        "",
        f"Config `{meta['config']}`; {meta['date']}; device {meta['device']} ({meta['machine']}); "
        f"torch {meta['torch']}; {meta['seconds']} s.",
        "",
        f"Metrics on {meta['metric_convention']}. Each cell is **SR PSNR** (attacked output vs clean "
        "output: higher = more robust) / **HR PSNR** (attacked output vs ground truth), in dB, averaged "
        "over the images; LR PSNR (attacked vs clean input) is in `results.csv`. For the partial "
        "attack the SR side is measured outside the attacked region.",
        "",
    ]
    for dataset in cfg.datasets:
        for spec in cfg.attacks:
            sel = [r for r in rows if r["dataset"] == dataset and r["attack"] == spec.label]
            if not sel:
                continue
            params = ", ".join(f"{k}={v}" for k, v in spec.kwargs.items())
            lines += [f"## {dataset}: {spec.label} ({spec.kind}; {params})", ""]
            header = ["model", "clean HR PSNR", *[f"eps {eps_text(e)}" for e in cfg.eps]]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for model in cfg.models:
                cells = {eps_label(r["eps"]): r for r in sel if r["model"] == model}
                clean = next((r["clean_hr_psnr"] for r in cells.values()), None)
                row = [model, _fmt(clean)]
                for e in cfg.eps:
                    r = cells.get(eps_label(e))
                    row.append("-" if r is None else f"{_fmt(r['sr_psnr'])} / {_fmt(r['hr_psnr'])}")
                lines.append("| " + " | ".join(row) + " |")
            n = {r["n_images"] for r in sel}
            lines += ["", f"Images: {', '.join(map(str, sorted(n)))}."]
            if spec.kind == "targeted":
                lines.append("Targeted: `target_psnr` (attacked output vs target) and `clean_target_psnr` are in the CSV.")
            ranking = robustness_ranking(rows, dataset, spec.label)
            if ranking:
                lines.append("Most to least robust (mean SR PSNR over eps): "
                             + ", ".join(f"{m} ({v:.2f})" for m, v in ranking) + ".")
            if (dataset, spec.label) in plots:
                lines += ["", f"![{dataset} {spec.label}]({Path(plots[dataset, spec.label]).relative_to(out).as_posix()})"]
            lines.append("")
    if transfer is not None:
        names = transfer["names"]
        lines += [f"## Transferability: {transfer['attack']} at {eps_text(transfer['eps'])} on "
                  f"{transfer['dataset']} ({transfer['n_images']} images)", "",
                  "SR PSNR of each target model on inputs attacked on each source model (rows: source, "
                  "columns: target; the diagonal is white-box; lower = the attack transfers).", "",
                  "| source \\ target | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for name, values in zip(names, transfer["sr_psnr"]):
            lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |")
        lines += ["", f"![transfer](plots/transfer_{_slug(transfer['dataset'])}.png)", ""]
    if defense_rows:
        lines += ["## Defenses (naive: attack computed on the bare model; adaptive: through the defense)", "",
                  "| model | dataset | defense | eps | undefended | naive | adaptive | worst | clean HR PSNR |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in defense_rows:
            lines.append(f"| {r['model']} | {r['dataset']} | {r['defense']} | {eps_text(r['eps'])} | "
                         f"{_fmt(r['undefended_sr_psnr'])} | {_fmt(r['naive_sr_psnr'])} | "
                         f"{_fmt(r['adaptive_sr_psnr'])} | {_fmt(r['worst_sr_psnr'])} | {_fmt(r.get('clean_hr_psnr'))} |")
        lines += ["", "Values are SR PSNR vs the defended model's clean output (dB); report the worst case.", ""]
    return "\n".join(lines)
