"""Configured attacks: an ``attacks`` block of a config, parsed into specs and run with metrics.

The same block means the same thing in the robustness report (:mod:`lit_sr.jobs.evaluate`) and in
``callbacks.AdversarialEvalCallback`` during training::

    specs = parse_attacks({"ifgsm": {"steps": 50}, "universal": {"steps": 50, "crop_size": 80}})
    runner = AttackRunner(specs[0], model, eps=parse_eps("8/255"), crop_border=4, y_channel=True)
    lr_adv, metrics = runner.run(lr, hr)          # per-image float64 metrics

ε values are on the [0, 1] scale; YAML has no fractions, so ``"8/255"`` strings are parsed here.
"""

from __future__ import annotations

import inspect
import numbers
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn

from lit_sr.attacks.evaluation import attack_metrics
from lit_sr.attacks.partial import infer_scale
from lit_sr.attacks.registry import ATTACKS
from lit_sr.errors import ConfigError
from lit_sr.metrics import psnr
from lit_sr.runtime import Autocast, autocast_dtype, frozen_eval, model_device
from lit_sr.validation import check_eps

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


TargetKind = Literal["vflip", "hflip", "shift"]
# Defaults that differ from the classes': Choi et al.'s official code maximises the distance to the
# HR image (the class default, Eq. 1's clean reference, needs a random start), and a universal
# attack inside a report or a callback has no business drawing its own progress bar.
ATTACK_DEFAULTS: dict[str, dict] = {
    "ifgsm": {"reference": "hr"},
    "partial": {"reference": "hr"},
    "universal": {"reference": "hr", "progress": False},
}
TARGETS: tuple[str, ...] = get_args(TargetKind)
METRIC_KEYS = ("lr_psnr", "sr_psnr", "sr_ssim", "hr_psnr", "hr_ssim", "clean_hr_psnr")
TARGET_KEYS = ("target_psnr", "clean_target_psnr")
# The universal attack's SR-side metrics are taken on the attacked centre window (Choi et al.'s
# measure); these two are the same PSNRs over the whole image, labelled, for comparison.
UNIVERSAL_KEYS = ("full_sr_psnr", "full_hr_psnr")
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack.

    Args:
        label: the name in metric keys and file names (``attack/<label>/eps8/sr_psnr``).
        kind: the attack class (a key of the registry :data:`lit_sr.attacks.registry.ATTACKS`).
        kwargs: constructor arguments of the class other than ``model`` and ``eps``.
        target: targeted attack only: how the target HR image is made (see :func:`make_target`).
    """

    label: str
    kind: str
    kwargs: dict = field(default_factory=dict)
    target: TargetKind = "vflip"

    def metric_keys(self) -> tuple[str, ...]:
        """The per-image metrics this attack produces (all with an HR image available)."""
        extra = {"targeted": TARGET_KEYS, "universal": UNIVERSAL_KEYS}.get(self.kind, ())
        return METRIC_KEYS + extra


def init_params(cls: type) -> list[str]:
    """The constructor arguments of an attack or defense class other than ``model`` and ``eps``."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model", "eps")]


def parse_attacks(attacks: Mapping[str, Mapping | None], where: str = "attacks") -> list[AttackSpec]:
    """Validate an ``attacks`` block (label -> parameters) and return its :class:`AttackSpec` list.

    The label is the attack kind (a name of the registry :data:`~lit_sr.attacks.registry.ATTACKS`:
    ``ifgsm``, ``pgd``, ``fast``, ``partial``, ``universal``, ``targeted``, ``square``, ...) unless the parameters hold ``attack: <kind>`` (to run one kind twice, e.g.
    ``ifgsm_clean: {attack: ifgsm, reference: clean, random_start: true}``). The other parameters
    are the constructor arguments of the class except ``model`` and ``eps`` (which come from the
    model and the eps list); ``reference`` defaults to ``"hr"`` for ifgsm/partial/universal (the
    official code). ``targeted`` also takes ``target``: one of :data:`TARGETS`.

    Every attack is built once on a dummy model, so a bad value raises here, before any compute,
    with the key in the message.
    """
    if not isinstance(attacks, Mapping) or not attacks:
        raise ConfigError(f"{where}: expected a non-empty mapping label -> parameters, e.g. {{ifgsm: {{steps: 50}}}}")
    return [_parse_attack(label, params, f"{where}.{label}", where) for label, params in attacks.items()]


def _parse_attack(label, params: Mapping | None, here: str, where: str) -> AttackSpec:
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ConfigError(f"{where}: attack label {label!r} must be letters, digits, '_', '.', '+' or '-'")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{here}: expected a mapping of parameters, got {params!r}")
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
    allowed = init_params(ATTACKS[kind])
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{here}: unknown parameter(s) {unknown} for {kind}; expected some of {allowed}")
    kwargs = {**ATTACK_DEFAULTS.get(kind, {}), **params}
    try:
        ATTACKS[kind](nn.Identity(), eps=8 / 255, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{here}: {exc}") from None
    return AttackSpec(label=label, kind=kind, kwargs=kwargs, target=target)


def make_target(hr: torch.Tensor, how: TargetKind) -> torch.Tensor:
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
        autocast: ``"none"`` (float32) or ``"bf16"`` for the attack's forward passes unless its
            parameters set ``autocast``; the metrics are always computed in float32.
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
        autocast: Autocast = "none",
        crop_border: int = 0,
        y_channel: bool = False,
        batch_size: int = 16,
    ):
        autocast_dtype(autocast, "AttackRunner.autocast")  # the one spelling: "none" or "bf16"
        self.spec, self.model, self.eps = spec, model, eps
        self.crop_border, self.y_channel = crop_border, y_channel
        kwargs = dict(spec.kwargs)
        kwargs.setdefault("seed", seed)
        kwargs.setdefault("autocast", autocast)
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
        metrics are taken on the region outside the attacked one (the paper's measure), the
        universal attack's on the attacked centre window (:meth:`UniversalAttack.region_hr_mask`,
        the paper's measure too) with the whole-image PSNRs added as ``full_sr_psnr`` and
        ``full_hr_psnr``, and the targeted attack adds ``target_psnr`` and ``clean_target_psnr``
        (output vs target, attacked and clean: the attack succeeds when the first exceeds the second).
        """
        mask_hr = None
        if self.spec.kind == "targeted":
            target = make_target(hr, self.spec.target)
            adv = self.attack(lr, target=target)
        else:
            adv = self.attack(lr, hr=hr)
            if self.spec.kind == "partial":
                mask_hr = self.attack.last_outer_hr_mask
            elif self.spec.kind == "universal":
                mask_hr = self.attack.region_hr_mask(lr, infer_scale(lr.shape, hr.shape))
        kw = {"hr": hr, "crop_border": self.crop_border, "y_channel": self.y_channel}
        metrics = attack_metrics(self.model, lr, adv, mask_hr=mask_hr, **kw)
        if self.spec.kind == "targeted":
            metrics.update(self._target_metrics(lr, adv, target))
        if self.spec.kind == "universal":
            whole = attack_metrics(self.model, lr, adv, **kw)
            metrics.update(full_sr_psnr=whole["sr_psnr"], full_hr_psnr=whole["hr_psnr"])
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
