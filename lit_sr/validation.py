"""The one set of argument validators every part of lit-sr uses.

Each validator takes the value and the name to show (a dotted config path where there is one,
``trigger.steps``) and raises ``TypeError`` for a wrong type or ``ValueError`` for a wrong value,
naming the argument and saying what was expected, as ART does for its attacks. Each returns the
value converted to its canonical Python type, so ``x = check_int(x, "steps", 1)`` reads as an
assignment. Bools are never accepted as numbers: ``steps: true`` in a YAML file is a mistake.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

# Relative slack on the [0, 1] range check of images: bicubic LR images overshoot by ~1e-7.
RANGE_TOLERANCE = 1e-5


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> float | int:
    """A finite real number (an integer when ``integer``) in the given range; returns it typed."""
    kind = "an integer" if integer else "a real number"
    allowed = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise TypeError(f"{name} must be {kind}; got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite; got {value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}; got {value!r}")
    return int(value) if integer else float(value)


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]`` (either bound optional)."""
    return check_number(value, name, low=minimum, high=maximum, integer=True)


def check_positive(value: Any, name: str) -> float:
    """A finite real number ``> 0``."""
    return check_number(value, name, low=0, low_inclusive=False)


def check_fraction(value: Any, name: str, allow_zero: bool = True, allow_one: bool = True) -> float:
    """A real number in [0, 1] (the ends included as asked): a rate, a probability, a share."""
    return check_number(value, name, low=0, high=1, low_inclusive=allow_zero, high_inclusive=allow_one)


def check_eps(value: Any, name: str = "eps") -> float:
    """A perturbation budget in (0, 1] on the [0, 1] pixel scale (8/255 is 0.0314)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1], got {value!r}")
    if math.isnan(float(value)) or not (0 < float(value) <= 1):
        raise ValueError(f"{name} must be in (0, 1] on the [0, 1] pixel scale (8/255 = 0.0314), got {value!r}")
    return float(value)


def check_patch_size(value: Any, scale: int, name: str = "patch_size") -> int:
    """A training patch size: a positive integer multiple of ``scale`` (0 or -8 would fail later as a tensor shape)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0 or value % scale:
        raise ValueError(f"{name} must be a positive multiple of the scale {scale}; got {value!r}")
    return int(value)


@runtime_checkable
class HasScale(Protocol):
    """What :func:`check_same_scale` reads of a data module: its upscaling factor."""

    scale: int


def check_same_scale(model_scale: int, datamodule: Any, model_name: str = "model") -> None:
    """Raise unless a data module that states a ``scale`` serves pairs of ``model_scale``.

    A x2 network trained on x4 pairs fails deep inside the loss with a tensor-shape error (or,
    with tiling, not at all); this names both settings first.
    """
    if isinstance(datamodule, HasScale) and datamodule.scale != model_scale:
        raise ValueError(f"{model_name} upscales x{model_scale} but the data module {type(datamodule).__name__} "
                         f"serves x{datamodule.scale} pairs: set model.init_args.scale {datamodule.scale} or "
                         f"data.init_args.scale {model_scale}")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (for arguments not typed ``Literal[...]``, or called from Python)."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_names(values: Any, name: str, what: str, example: str) -> list[str]:
    """A non-empty list of non-empty strings (module names, ...), as a new list; ``what`` and ``example`` word the error."""
    if isinstance(values, str) or not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{name} must be a non-empty list of {what} (e.g. {example}); got {values!r}")
    return list(values)


def check_bool(value: Any, name: str) -> bool:
    """A real ``bool`` (guards against ``random_start="no"`` being truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_module(value: Any, name: str, example: str = "") -> nn.Module:
    """A ``torch.nn.Module`` (a network, a defense, a feature extractor); ``example`` says which kind."""
    if not isinstance(value, nn.Module):
        hint = f" ({example})" if example else ""
        raise TypeError(f"{name} must be a torch.nn.Module{hint}, got {type(value).__name__}")
    return value


def check_images(x: Any, name: str, value_range: bool = False) -> None:
    """Raise unless ``x`` is a non-empty floating (N, C, H, W) tensor, in [0, 1] when ``value_range``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if value_range:
        lo, hi = torch.aminmax(x.detach())
        if lo.item() < -RANGE_TOLERANCE or hi.item() > 1 + RANGE_TOLERANCE:
            raise ValueError(f"{name} must hold values in [0, 1], got range [{lo.item():.4g}, {hi.item():.4g}]")
