"""What every hot path shares about running a model: its device, frozen evaluation, autocast.

One ``autocast`` argument exists in lit-sr, with one spelling everywhere (attacks, triggers,
poisoned labels, backdoor gradients, the report and its callbacks): ``Autocast`` below, ``"none"``
(float32) or ``"bf16"``. Only bf16 is offered: fp16 would need loss scaling to keep small input
gradients from underflowing, and sign steps are exactly where a flushed gradient silently stops
an attack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal, get_args

import torch
from torch import nn

from lit_sr.errors import ConfigError

Autocast = Literal["none", "bf16"]
AUTOCAST_CHOICES: tuple[str, ...] = get_args(Autocast)
_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16}


def autocast_dtype(autocast: Autocast, name: str = "autocast") -> torch.dtype | None:
    """The dtype ``autocast`` stands for (``None`` for float32); a clear error for anything else."""
    if not isinstance(autocast, str) or autocast not in _AUTOCAST_DTYPES:
        raise ValueError(f"{name} must be one of {list(AUTOCAST_CHOICES)}, got {autocast!r}")
    return _AUTOCAST_DTYPES[autocast]


def autocast_context(autocast: Autocast, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``autocast="bf16"``, a no-op context for ``"none"``."""
    dtype = autocast_dtype(autocast)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_device(device: str | torch.device, key: str = "device") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or any ``torch.device`` string, checked before a job starts.

    A string torch cannot read, or a CUDA device on a machine without CUDA, raises
    :class:`~lit_sr.errors.ConfigError` naming ``key`` (the config key the value came from).
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {str(device)!r} was requested but CUDA is not available")
    return resolved


def model_device(model: nn.Module, default: torch.device | None = None) -> torch.device | None:
    """The device of the model's first parameter or buffer; ``default`` for stateless models (bicubic)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return default


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored exactly on exit.

    Each submodule's ``training`` flag and each parameter's ``requires_grad`` are recorded one by
    one, so a model with mixed modes (a frozen BatchNorm inside a training network) or partly
    frozen parameters gets back exactly what it had, also when the caller raises.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


@contextmanager
def grad_enabled_outside_inference() -> Iterator[None]:
    """Leave ``torch.inference_mode`` and enable autograd (Lightning validates in inference mode)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def close_process_group() -> None:
    """Close the default ``torch.distributed`` process group on every rank, after a barrier.

    Lightning leaves the group of a DDP run open; with gloo, a process that exits with it open can
    abort in C++ teardown ("terminate called without an active exception", SIGABRT) although the
    run itself finished. Call this once at the end of a script that ran a distributed fit.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
