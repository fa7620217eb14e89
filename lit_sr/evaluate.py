"""Robustness report of SR models against adversarial attacks (Choi et al., ICCV 2019).

One command runs every configured attack at every eps against every model on every data set and
writes the tables, plots and a Markdown summary::

    python -m lit_sr.evaluate --config configs/robustness_choi2019.yaml [--out DIR] [--device cuda]

The YAML file (see ``configs/robustness_choi2019.yaml`` for every key, documented)::

    models:                          # name -> network
      EDSR-baseline: {arch: edsr, arch_kwargs: {num_feat: 64, num_block: 16}, weights: zoo/edsr_b.pth}
      bicubic: {arch: bicubic}       # parameter-free: no weights
    datasets: {Set5: /data/benchmark/Set5/HR}   # folders of HR images; LR by MATLAB bicubic
    attacks:                         # label -> parameters of the attack class (``attack:`` picks the
      ifgsm: {steps: 50}             #   kind when the label is not one of the kinds)
      partial: {steps: 50}
      universal: {steps: 50, crop_size: 80}
    eps: [1/255, 2/255, 4/255, 8/255, 16/255, 32/255]
    transfer: true                   # source x target PSNR matrix (Fig. 4) on one data set / eps
    defenses: {attack: ifgsm, eps: [8/255], methods: {resize: {shrink: 1}}}

Outputs (every file written atomically): ``results.csv`` and ``results.json`` (one row per model x
data set x attack x eps with the mean metrics), ``plots/psnr_vs_eps_<dataset>_<attack>.png``,
``plots/transfer_<dataset>.png``, ``defenses.csv`` and ``summary.md``.

The attack helpers here (:func:`parse_attacks`, :class:`AttackRunner`, :func:`eps_label`) are also
used by ``callbacks.AdversarialEvalCallback``, so that a config's ``attacks`` block means the same
in training and in the report.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import numbers
import platform
import re
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.archs import build_arch, count_parameters
from lit_sr.attacks import (
    IFGSM,
    PGD,
    Attack,
    PartialAttack,
    SquareAttack,
    TargetedAttack,
    UniversalAttack,
    attack_metrics,
    transfer_matrix,
)
from lit_sr.attacks.base import check_eps, frozen_eval, model_device
from lit_sr.defenses import (
    BitDepthReduction,
    JPEGDefense,
    RandomResizeDefense,
    ResizeDefense,
    SelfEnsemble,
    evaluate_defense,
)
from lit_sr.io import atomic_write, list_images, load_weights, read_image
from lit_sr.metrics import psnr
from lit_sr.ops import imresize, mod_crop


class ConfigError(ValueError):
    """A robustness config (or a callback's attack settings) is invalid; the message names the key."""


# --------------------------------------------------------------------------- eps


_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


def parse_eps(value: float | str, where: str = "eps") -> float:
    """An eps on the [0, 1] scale from a number or a fraction string such as ``"8/255"``.

    YAML has no fractions, so ``8/255`` arrives as a string; it is parsed exactly here.
    """
    if isinstance(value, str):
        match = _FRACTION.match(value)
        try:
            value = float(match[1]) / float(match[2]) if match else float(value)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"{where}: expected a number in (0, 1] or a fraction like '8/255', got {value!r}"
            ) from None
    try:
        return check_eps(value, where)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def parse_eps_list(values: Sequence[float | str], where: str = "eps") -> list[float]:
    """A non-empty list of eps values, each parsed by :func:`parse_eps`, with distinct labels."""
    if isinstance(values, (str, numbers.Real)):
        values = [values]
    if not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{where}: expected a non-empty list of eps values such as [2/255, 8/255], got {values!r}")
    eps = [parse_eps(v, f"{where}[{i}]") for i, v in enumerate(values)]
    labels = [eps_label(e) for e in eps]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: values {values} give duplicate labels {labels}")
    return eps


def eps_label(eps: float) -> str:
    """``eps<k>`` with ``k = eps * 255`` for the 8-bit levels (8/255 -> ``eps8``); ``eps2.55`` otherwise.

    Non-integer levels keep three significant digits instead of being rounded, so that two
    different budgets can never share a metric name.
    """
    levels = eps * 255
    k = round(levels)
    if abs(levels - k) <= 1e-6 * max(1.0, levels):
        return f"eps{k}"
    return f"eps{levels:.3g}"


def eps_text(eps: float) -> str:
    """``8/255`` for 8-bit levels, else the decimal value (for tables)."""
    label = eps_label(eps)[3:]
    return f"{label}/255" if "." not in label else f"{eps:.4g}"


# --------------------------------------------------------------------------- attacks


ATTACKS: dict[str, type[Attack]] = {
    "ifgsm": IFGSM,
    "pgd": PGD,
    "partial": PartialAttack,
    "universal": UniversalAttack,
    "targeted": TargetedAttack,
    "square": SquareAttack,
}
# Defaults that differ from the classes': Choi et al.'s official code maximises the distance to the
# HR image (the class default, Eq. 1's clean reference, needs a random start), and a universal
# attack inside a report or a callback has no business drawing its own progress bar.
ATTACK_DEFAULTS: dict[str, dict] = {
    "ifgsm": {"reference": "hr"},
    "partial": {"reference": "hr"},
    "universal": {"reference": "hr", "progress": False},
}
TARGETS = ("vflip", "hflip", "shift")
METRIC_KEYS = ("lr_psnr", "sr_psnr", "sr_ssim", "hr_psnr", "hr_ssim", "clean_hr_psnr")
TARGET_KEYS = ("target_psnr", "clean_target_psnr")
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack.

    Args:
        label: the name in metric keys and file names (``attack/<label>/eps8/sr_psnr``).
        kind: the attack class (a key of :data:`ATTACKS`).
        kwargs: constructor arguments of the class other than ``model`` and ``eps``.
        target: targeted attack only: how the target HR image is made (see :func:`make_target`).
    """

    label: str
    kind: str
    kwargs: dict = field(default_factory=dict)
    target: str = "vflip"

    def metric_keys(self) -> tuple[str, ...]:
        """The per-image metrics this attack produces (all with an HR image available)."""
        return METRIC_KEYS + (TARGET_KEYS if self.kind == "targeted" else ())


def _init_params(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model", "eps")]


def parse_attacks(attacks: Mapping[str, Mapping | None], where: str = "attacks") -> list[AttackSpec]:
    """Validate an ``attacks`` block (label -> parameters) and return its :class:`AttackSpec` list.

    The label is the attack kind (``ifgsm``, ``pgd``, ``partial``, ``universal``, ``targeted``,
    ``square``) unless the parameters hold ``attack: <kind>`` (to run one kind twice, e.g.
    ``ifgsm_clean: {attack: ifgsm, reference: clean, random_start: true}``). The other parameters
    are the constructor arguments of the class except ``model`` and ``eps`` (which come from the
    model and the eps list); ``reference`` defaults to ``"hr"`` for ifgsm/partial/universal (the
    official code). ``targeted`` also takes ``target``: one of :data:`TARGETS`.

    Every attack is built once on a dummy model, so a bad value raises here, before any compute,
    with the key in the message.
    """
    if not isinstance(attacks, Mapping) or not attacks:
        raise ConfigError(f"{where}: expected a non-empty mapping label -> parameters, e.g. {{ifgsm: {{steps: 50}}}}")
    specs = []
    for label, params in attacks.items():
        here = f"{where}.{label}"
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ConfigError(f"{where}: attack label {label!r} must be letters, digits, '_', '.', '+' or '-'")
        params = dict(params or {})
        if not all(isinstance(k, str) for k in params):
            raise ConfigError(f"{here}: parameter names must be strings, got {list(params)}")
        kind = params.pop("attack", label)
        if "target" in params and kind != "targeted":
            raise ConfigError(f"{here}.target: only the targeted attack takes a target")
        if kind not in ATTACKS:
            raise ConfigError(
                f"{here}: unknown attack {kind!r}; expected one of {sorted(ATTACKS)} "
                "(name the label after the kind, or set 'attack: <kind>')"
            )
        target = params.pop("target", "vflip")
        if target not in TARGETS:
            raise ConfigError(f"{here}.target: expected one of {list(TARGETS)}, got {target!r}")
        if "eps" in params:
            raise ConfigError(f"{here}.eps: eps comes from the eps list, not from the attack's parameters")
        allowed = _init_params(ATTACKS[kind])
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"{here}: unknown parameter(s) {unknown} for {kind}; expected some of {allowed}")
        kwargs = {**ATTACK_DEFAULTS.get(kind, {}), **params}
        try:
            ATTACKS[kind](nn.Identity(), eps=8 / 255, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{here}: {exc}") from None
        specs.append(AttackSpec(label=label, kind=kind, kwargs=kwargs, target=target))
    return specs


def make_target(hr: torch.Tensor, how: str) -> torch.Tensor:
    """The target HR batch of the targeted attack, made from the HR batch itself.

    Choi et al. pull the output towards another image; any image of the output's size will do,
    and making it from the HR image keeps every size working. ``vflip``: upside down (default);
    ``hflip``: mirrored; ``shift``: rolled by half the height and width.
    """
    if how == "vflip":
        return hr.flip(-2)
    if how == "hflip":
        return hr.flip(-1)
    if how == "shift":
        return hr.roll((hr.shape[-2] // 2, hr.shape[-1] // 2), dims=(-2, -1))
    raise ValueError(f"target must be one of {list(TARGETS)}, got {how!r}")


class AttackRunner:
    """One configured attack at one eps against one model: build it, fit it (universal), run and measure.

    Args:
        spec: the attack (:func:`parse_attacks`).
        model: the SR network (or a defense wrapping it).
        eps: L_inf budget on the [0, 1] scale.
        seed: the attack's seed unless its parameters set one.
        autocast: ``False`` or ``"bf16"`` for the attack's forward passes unless its parameters
            set ``autocast``; the metrics are always computed in float32.
        crop_border: SR-side border crop of the metrics (the convention is the scale).
        y_channel: measure on BT.601 Y instead of RGB.
        batch_size: images per forward pass of the universal attack's fit.
    """

    def __init__(
        self,
        spec: AttackSpec,
        model: nn.Module,
        eps: float,
        *,
        seed: int | None = 0,
        autocast: bool | str = False,
        crop_border: int = 0,
        y_channel: bool = False,
        batch_size: int = 16,
    ):
        self.spec, self.model, self.eps = spec, model, eps
        self.crop_border, self.y_channel = crop_border, y_channel
        kwargs = dict(spec.kwargs)
        kwargs.setdefault("seed", seed)
        kwargs.setdefault("autocast", autocast or "none")
        if spec.kind == "universal":
            kwargs.setdefault("batch_size", batch_size)
        self.attack = ATTACKS[spec.kind](model, eps=eps, **kwargs)

    def accepts(self, lr: torch.Tensor) -> bool:
        """Whether an LR image (``(C, H, W)`` or batch) can be attacked: the universal perturbation needs
        images at least ``crop_size`` wide."""
        if self.spec.kind != "universal":
            return True
        return min(lr.shape[-2:]) >= self.attack.crop_size

    def fit(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fit the universal perturbation on ``(lr, hr)`` images (``(C, H, W)`` each); a no-op otherwise."""
        if self.spec.kind != "universal":
            return
        if not pairs:
            raise ValueError("the universal attack needs at least one image to fit on")
        self.attack.fit([{"lr": lr, "hr": hr} for lr, hr in pairs])

    def run(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Attack an ``(N, C, H, W)`` batch; return the adversarial LR and per-image float64 metrics.

        The metrics are those of :func:`lit_sr.attacks.attack_metrics`; the partial attack's SR-side
        metrics are taken on the region outside the attacked one (the paper's measure), and the
        targeted attack adds ``target_psnr`` and ``clean_target_psnr`` (output vs target, attacked
        and clean: the attack succeeds when the first exceeds the second).
        """
        mask_hr = None
        if self.spec.kind == "targeted":
            target = make_target(hr, self.spec.target)
            adv = self.attack(lr, target=target)
        else:
            adv = self.attack(lr, hr=hr)
            if self.spec.kind == "partial":
                mask_hr = self.attack.last_outer_hr_mask
        metrics = attack_metrics(
            self.model, lr, adv, hr=hr, crop_border=self.crop_border, y_channel=self.y_channel, mask_hr=mask_hr
        )
        if self.spec.kind == "targeted":
            metrics.update(self._target_metrics(lr, adv, target))
        return adv, metrics

    def _target_metrics(self, lr: torch.Tensor, adv: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        device = model_device(self.model) or lr.device
        with torch.no_grad():
            sr_clean = predict(self.model, lr.to(device))
            sr_adv = predict(self.model, adv.to(device))
        target = target.to(device)
        kw = {"crop_border": self.crop_border, "y_channel": self.y_channel}
        return {
            "target_psnr": psnr(sr_adv, target, **kw).double().cpu(),
            "clean_target_psnr": psnr(sr_clean, target, **kw).double().cpu(),
        }


def predict(model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """``model(lr)`` in eval mode without gradient, clamped to [0, 1]; the model's mode is restored."""
    with torch.no_grad(), frozen_eval(model):
        return model(lr).float().clamp(0, 1)


def shape_batches(shapes: Sequence[tuple[int, ...]], indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by identical image shape (first-seen order), in chunks of ``batch_size``.

    Benchmark images differ in size, so only same-size images can share a batch.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in indices:
        groups[tuple(shapes[i])].append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start : start + batch_size]


# --------------------------------------------------------------------------- plots


def psnr_vs_eps_figure(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], title: str):
    """A matplotlib ``Figure`` with one subplot per panel and one line per series.

    Args:
        panels: panel title -> series name -> ``[(eps * 255, value), ...]``.
        title: the figure's title.

    The x axis is logarithmic (base 2) in 8-bit levels, as the eps grids of the paper double.
    Built on the Agg canvas without pyplot, so it is safe in headless and multi-threaded runs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, series) in zip(axes, panels.items()):
        ticks = set()
        for name, points in series.items():
            points = sorted(p for p in points if p[1] is not None and math.isfinite(p[1]))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
                ticks.update(p[0] for p in points)
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
            ax.minorticks_off()
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(panel, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def transfer_figure(names: Sequence[str], matrix: Sequence[Sequence[float]], title: str):
    """Heat map of a source x target PSNR matrix (lower = the attack transfers better), values written in."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 1.2 + 0.9 * len(names)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    values = torch.tensor(matrix, dtype=torch.float64).numpy()
    image = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (attacked)")
    middle = (values.max() + values.min()) / 2
    for i in range(len(names)):
        for j in range(len(names)):
            colour = "black" if values[i, j] > middle else "white"
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax, label="SR PSNR vs clean output (dB)")
    ax.set_title(title, fontsize=10)
    return fig


def figure_to_tensor(fig) -> torch.Tensor:
    """Render a figure to a ``(3, H, W)`` float tensor in [0, 1] (for TensorBoard's ``add_image``)."""
    import numpy as np

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


# --------------------------------------------------------------------------- config


@dataclass
class ModelSpec:
    """One model of the report.

    Args:
        name: its name in the tables.
        arch: registry name (``edsr``, ``rcan``, ``rrdbnet``, ``carn``, ``carn_m``, ``bicubic``, ...).
        arch_kwargs: constructor arguments (BasicSR names); the scale argument is filled in.
        weights: BasicSR ``.pth``, Lightning ``.ckpt`` or ``.safetensors`` file.
        weights_key: ``params`` / ``params_ema`` / ``None`` (EMA when present).
        strict: require an exact key match.
        scale: upscaling factor.
        random_init: allow a network with parameters but no weights (smoke tests only).
    """

    name: str
    arch: str
    arch_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    weights_key: str | None = None
    strict: bool = True
    scale: int = 4
    random_init: bool = False


@dataclass
class TransferSpec:
    """The transferability study: one data set, one eps, one per-image attack, all models (same scale)."""

    dataset: str
    eps: float
    attack: str
    max_images: int | None = None


@dataclass
class DefenseStudy:
    """Naive and adaptive evaluation of input defenses (:func:`lit_sr.defenses.evaluate_defense`).

    Args:
        methods: label -> (defense kind, constructor arguments).
        attack: label of a per-image attack of the ``attacks`` block.
        eps: budgets.
        datasets: data sets to run on.
    """

    methods: dict[str, tuple[str, dict]]
    attack: str
    eps: list[float]
    datasets: list[str]


@dataclass
class ReportConfig:
    """A parsed, validated robustness config (see the module docstring and :func:`parse_config`)."""

    models: dict[str, ModelSpec]
    datasets: dict[str, str]
    attacks: list[AttackSpec]
    eps: list[float]
    scale: int = 4
    device: str = "auto"
    batch_size: int = 8
    max_images: int | None = None
    crop_size: int | None = None
    seed: int = 0
    y_channel: bool = True
    crop_border: int | None = None
    autocast: bool | str = False
    transfer: TransferSpec | None = None
    defenses: DefenseStudy | None = None
    out: str = "runs/robustness"
    raw: dict = field(default_factory=dict)
    source: str = "<dict>"


DEFENSES: dict[str, type[nn.Module]] = {
    "resize": ResizeDefense,
    "random_resize": RandomResizeDefense,
    "self_ensemble": SelfEnsemble,
    "jpeg": JPEGDefense,
    "bit_depth": BitDepthReduction,
}
_TOP_KEYS = (
    "models", "datasets", "attacks", "eps", "scale", "device", "batch_size", "max_images", "crop_size", "seed",
    "y_channel", "crop_border", "autocast", "transfer", "defenses", "out",
)  # fmt: skip
_MODEL_KEYS = ("arch", "arch_kwargs", "weights", "weights_key", "strict", "scale", "random_init")
_TRANSFER_KEYS = ("dataset", "eps", "attack", "max_images")
_DEFENSE_KEYS = ("methods", "attack", "eps", "datasets")
# Attacks whose call is ``atk(lr, hr=hr)`` on full images: what transfer_matrix and evaluate_defense need.
_PLAIN_KINDS = ("ifgsm", "pgd", "square")


def _check_keys(block: Mapping, allowed: Sequence[str], where: str) -> None:
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(block).__name__} {block!r}")
    unknown = [k for k in block if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(allowed)}")


def _int(value, where: str, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}{' or null' if optional else ''}, got {value!r}")
    return int(value)


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _parse_model(name: str, block: Mapping | None, scale: int) -> ModelSpec:
    where = f"models.{name}"
    block = dict(block or {})
    _check_keys(block, _MODEL_KEYS, where)
    if "arch" not in block:
        raise ConfigError(f"{where}.arch is required (a registry name such as edsr, rcan, rrdbnet, carn, bicubic)")
    from lit_sr.archs import get_arch_class

    try:
        get_arch_class(block["arch"])
    except KeyError as exc:
        raise ConfigError(f"{where}.arch: {exc.args[0]}") from None
    spec = ModelSpec(
        name=name,
        arch=block["arch"],
        arch_kwargs=dict(block.get("arch_kwargs") or {}),
        weights=None if block.get("weights") is None else str(block["weights"]),
        weights_key=block.get("weights_key"),
        strict=_bool(block.get("strict", True), f"{where}.strict"),
        scale=_int(block.get("scale", scale), f"{where}.scale", 1),
        random_init=_bool(block.get("random_init", False), f"{where}.random_init"),
    )
    return spec


def _parse_transfer(block, cfg: ReportConfig) -> TransferSpec | None:
    if block is None or block is False:
        return None
    block = {} if block is True else block
    _check_keys(block, _TRANSFER_KEYS, "transfer")
    dataset = block.get("dataset", next(iter(cfg.datasets)))
    if dataset not in cfg.datasets:
        raise ConfigError(f"transfer.dataset: {dataset!r} is not one of the datasets {list(cfg.datasets)}")
    plain = [a.label for a in cfg.attacks if a.kind in _PLAIN_KINDS]
    attack = block.get("attack", plain[0] if plain else None)
    _check_plain_attack(attack, cfg, "transfer.attack")
    eps = parse_eps(block["eps"], "transfer.eps") if "eps" in block else _middle_eps(cfg.eps)
    scales = {m.scale for m in cfg.models.values()}
    if len(scales) > 1:
        raise ConfigError(f"transfer: all models must share one scale to swap inputs between them, got {sorted(scales)}")
    if len(cfg.models) < 2:
        raise ConfigError("transfer: needs at least two models")
    return TransferSpec(dataset=dataset, eps=eps, attack=attack,
                        max_images=_int(block.get("max_images"), "transfer.max_images", 1, optional=True))


def _middle_eps(eps: Sequence[float]) -> float:
    # 8/255 is the paper's reference budget; otherwise the middle of the grid.
    return min(eps, key=lambda e: abs(e - 8 / 255)) if eps else 8 / 255


def _check_plain_attack(label, cfg: ReportConfig, where: str) -> None:
    kinds = {a.label: a.kind for a in cfg.attacks}
    if label not in kinds:
        raise ConfigError(f"{where}: {label!r} is not an attack label of the attacks block {list(kinds)}")
    if kinds[label] not in _PLAIN_KINDS:
        raise ConfigError(f"{where}: {label!r} is a {kinds[label]} attack; expected one of the kinds {list(_PLAIN_KINDS)}")


def _parse_defenses(block, cfg: ReportConfig) -> DefenseStudy | None:
    if not block:
        return None
    _check_keys(block, _DEFENSE_KEYS, "defenses")
    methods_block = block.get("methods")
    if not isinstance(methods_block, Mapping) or not methods_block:
        raise ConfigError(f"defenses.methods: expected a mapping label -> parameters with kinds {sorted(DEFENSES)}")
    methods = {}
    for label, params in methods_block.items():
        params = dict(params or {})
        kind = params.pop("defense", label)
        if kind not in DEFENSES:
            raise ConfigError(f"defenses.methods.{label}: unknown defense {kind!r}; expected one of {sorted(DEFENSES)}")
        allowed = _init_params(DEFENSES[kind])
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"defenses.methods.{label}: unknown parameter(s) {unknown}; expected some of {allowed}")
        try:
            DEFENSES[kind](nn.Identity(), **params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"defenses.methods.{label}: {exc}") from None
        methods[label] = (kind, params)
    plain = [a.label for a in cfg.attacks if a.kind in _PLAIN_KINDS]
    attack = block.get("attack", plain[0] if plain else None)
    _check_plain_attack(attack, cfg, "defenses.attack")
    eps = parse_eps_list(block["eps"], "defenses.eps") if "eps" in block else [_middle_eps(cfg.eps)]
    datasets = block.get("datasets", [next(iter(cfg.datasets))])
    if isinstance(datasets, str):
        datasets = [datasets]
    for d in datasets:
        if d not in cfg.datasets:
            raise ConfigError(f"defenses.datasets: {d!r} is not one of the datasets {list(cfg.datasets)}")
    return DefenseStudy(methods=methods, attack=attack, eps=eps, datasets=list(datasets))


def parse_config(raw: Mapping, source: str = "<dict>") -> ReportConfig:
    """Validate a robustness config (a mapping, e.g. loaded YAML) and return a :class:`ReportConfig`.

    Every key is checked before anything runs: an unknown or ill-typed key raises
    :class:`ConfigError` naming it (``models.EDSR.wieghts``, ``attacks.ifgsm.stepz``, ...). Paths
    are checked when the report starts (:func:`check_paths`), so a config can be parsed anywhere.
    """
    try:
        return _parse_config(raw, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse_config(raw: Mapping, source: str) -> ReportConfig:
    _check_keys(raw, _TOP_KEYS, "top level")
    for key in ("models", "datasets", "attacks", "eps"):
        if key not in raw:
            raise ConfigError(f"the required key {key!r} is missing")
    scale = _int(raw.get("scale", 4), "scale", 1)
    models_block = raw["models"]
    if not isinstance(models_block, Mapping) or not models_block:
        raise ConfigError("models: expected a non-empty mapping name -> {arch, arch_kwargs, weights, ...}")
    datasets = raw["datasets"]
    if not isinstance(datasets, Mapping) or not datasets or not all(isinstance(v, str) for v in datasets.values()):
        raise ConfigError("datasets: expected a non-empty mapping name -> folder of HR images")
    autocast = raw.get("autocast", False)
    if autocast not in (False, "bf16"):
        raise ConfigError(f"autocast: expected false or 'bf16', got {autocast!r}")
    device = raw.get("device", "auto")
    if not isinstance(device, str):
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:<n>', got {device!r}")
    cfg = ReportConfig(
        models={name: _parse_model(name, block, scale) for name, block in models_block.items()},
        datasets={str(k): v for k, v in datasets.items()},
        attacks=parse_attacks(raw["attacks"]),
        eps=parse_eps_list(raw["eps"]),
        scale=scale,
        device=device,
        batch_size=_int(raw.get("batch_size", 8), "batch_size", 1),
        max_images=_int(raw.get("max_images"), "max_images", 1, optional=True),
        crop_size=_int(raw.get("crop_size"), "crop_size", 1, optional=True),
        seed=_int(raw.get("seed", 0), "seed", 0),
        y_channel=_bool(raw.get("y_channel", True), "y_channel"),
        crop_border=_int(raw.get("crop_border"), "crop_border", 0, optional=True),
        autocast=autocast,
        out=str(raw.get("out", "runs/robustness")),
        raw=json.loads(json.dumps(raw, default=str)),
        source=source,
    )
    cfg.transfer = _parse_transfer(raw.get("transfer"), cfg)
    cfg.defenses = _parse_defenses(raw.get("defenses"), cfg)
    return cfg


def load_config(path: str | Path) -> ReportConfig:
    """Read and validate a YAML robustness config (:func:`parse_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robustness config not found: {path}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    return parse_config(raw, source=str(path))


def check_paths(cfg: ReportConfig) -> None:
    """Raise ``FileNotFoundError`` naming the first missing data folder or weights file, before any compute."""
    for name, folder in cfg.datasets.items():
        try:
            list_images(folder)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"datasets.{name}: {exc}") from None
    for spec in cfg.models.values():
        if spec.weights is not None and not Path(spec.weights).is_file():
            raise FileNotFoundError(
                f"models.{spec.name}.weights: file not found: {spec.weights} (model-zoo weights are never "
                "downloaded; put the file there or change the path)"
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


def build_model(spec: ModelSpec, device: torch.device) -> nn.Module:
    """Build a model of the report, load its weights and put it on ``device`` in eval mode."""
    from lit_sr.modules.sr_module import arch_kwargs_with_scale

    try:
        net = build_arch(spec.arch, **arch_kwargs_with_scale(spec.arch, spec.arch_kwargs, spec.scale))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"models.{spec.name}: {exc}") from None
    if spec.weights is not None:
        load_weights(net, spec.weights, key=spec.weights_key, strict=spec.strict)
    elif count_parameters(net) and not spec.random_init:
        raise ConfigError(
            f"models.{spec.name}.weights is required: {spec.arch} has {count_parameters(net):,} parameters and a "
            "report on random weights measures nothing (set random_init: true to do it deliberately)"
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

    HR images are mod-cropped to the scale; LR images are made by MATLAB bicubic and rounded to
    8 bits, as the benchmark's LR PNG files are. ``crop_size`` (LR pixels) centre-crops every
    image pair first (images smaller than that are kept whole), so that equal sizes can be batched.
    """
    pairs = []
    for path in list_images(folder)[:max_images]:
        hr = mod_crop(read_image(path), scale)
        if crop_size is not None:
            size = crop_size * scale
            h, w = hr.shape[-2:]
            top, left = max(0, (h - size) // 2) // scale * scale, max(0, (w - size) // 2) // scale * scale
            hr = hr[:, top : top + size, left : left + size]
        lr = (imresize(hr, 1 / scale).clamp(0, 1) * 255).round() / 255
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
    autocast: bool | str = False,
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
                *, device: torch.device, batch_size: int, seed: int, autocast, crop_border: int,
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
        cfg: a :class:`ReportConfig` (:func:`load_config`).
        out_dir: output folder (default ``cfg.out``).
        progress: show tqdm progress bars.
    """
    started = time.perf_counter()
    out = Path(out_dir if out_dir is not None else cfg.out)
    check_paths(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    models = {name: build_model(spec, device) for name, spec in cfg.models.items()}
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
            kind, params = study.methods[label]
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


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lit_sr.evaluate --config X.yaml [--out DIR] [--device D] [--max-images N]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m lit_sr.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML robustness config (configs/robustness_*.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: the config's 'out')")
    parser.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:1)")
    parser.add_argument("--max-images", type=int, default=None, help="override max_images (quick runs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.device is not None:
            cfg.device = args.device
        if args.max_images is not None:
            cfg.max_images = _int(args.max_images, "--max-images", 1)
        result = run_report(cfg, args.out, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(Path(result["files"]["summary"]).read_text())
    print(f"written to {Path(result['files']['summary']).parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
