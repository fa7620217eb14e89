"""What every hot path shares about running a model: its device, frozen evaluation, autocast.

One ``autocast`` argument exists in lit-sr, with one spelling everywhere (attacks, triggers,
poisoned labels, backdoor gradients, the report and its callbacks): ``Autocast`` below, ``"none"``
(float32) or ``"bf16"``. Only bf16 is offered: fp16 would need loss scaling to keep small input
gradients from underflowing, and sign steps are exactly where a flushed gradient silently stops
an attack.

bf16 on a device that does not compute it natively (a CPU without ``avx512_bf16`` / AMX, or
without the Armv8.6 ``bf16`` extension) is emulated, and emulated bf16 is far slower than float32
(27-80x for batched I-FGSM on a 2-core AMD EPYC, ``benchmarks/RESULTS.md``), while it also weakens
the attacks. So :func:`autocast_context` asks :func:`native_bf16` first and, where the answer is
no, warns once per device type and runs float32 (the policy: fall back, not refuse, because the
float32 result is the more exact one and a config written for a GPU should still run on a laptop).
``LIT_SR_CPU_BF16=emulate`` in the environment runs the emulated bf16 anyway (to study bf16
numerics on a CPU; the benchmarks use it to measure the slowdown).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from pathlib import Path
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


#: environment setting: ``emulate`` runs bf16 autocast on a CPU without native bf16 (slow) instead of float32
CPU_BF16_ENV = "LIT_SR_CPU_BF16"
_warned_fallback: set[str] = set()


@cache
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: x86 ``avx512_bf16`` or AMX tiles, Arm's ``bf16``.

    torch's own probes (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``, via
    cpuinfo) are asked first; the flags of /proc/cpuinfo are the fallback on builds without them.
    AVX-512 without ``avx512_bf16`` is not enough: oneDNN then converts every operand in software.
    """
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA: compute capability >= 8.0; CPU: :func:`cpu_native_bf16`).

    Other device types (MPS, XPU, ...) are trusted: their autocast backends offer bf16 only where it runs.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_native_bf16()
    return True


def bf16_fallback(device: torch.device | str, what: str = "bf16 autocast") -> bool:
    """True (after one warning per device type) when bf16 on ``device`` must run as float32 instead.

    False where the device computes bf16 natively, or where ``LIT_SR_CPU_BF16=emulate`` asks for the
    emulated bf16 on a CPU anyway.
    """
    device = torch.device(device)
    if native_bf16(device) or (device.type == "cpu" and os.environ.get(CPU_BF16_ENV, "") == "emulate"):
        return False
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        why = ("a CPU without avx512_bf16, AMX or Arm bf16" if device.type == "cpu"
               else "compute capability below 8.0" if device.type == "cuda" else "no bf16 support")
        hint = f" Set {CPU_BF16_ENV}=emulate to run the emulated bf16 anyway." if device.type == "cpu" else ""
        warnings.warn(f"{what} requested on {device.type} ({why}): bf16 there is emulated and many times slower "
                      f"than float32, so lit-sr runs float32 instead (warned once).{hint}",
                      RuntimeWarning, stacklevel=3)
    return True


def autocast_context(autocast: Autocast, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``autocast="bf16"``, a no-op context for ``"none"``.

    On a device without native bf16 (:func:`native_bf16`), ``"bf16"`` warns once and runs float32.
    """
    dtype = autocast_dtype(autocast)
    if dtype is None or bf16_fallback(device):
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def trainer_precision(precision: str | int | None, accelerator: object = "auto") -> str | int | None:
    """A Trainer's ``precision`` with bf16 replaced by ``"32-true"`` where it would run emulated on the CPU.

    Lightning's ``bf16-mixed`` / ``bf16-true`` on a CPU without native bf16 is the same slowdown as
    the attacks' autocast, so the CLI passes the configured precision through here (warned once,
    :func:`bf16_fallback`). ``accelerator`` is the Trainer's: ``"cpu"``, or ``"auto"`` / ``None``
    without CUDA, means the CPU; anything else is left alone.
    """
    if not str(precision).startswith("bf16"):
        return precision
    on_cpu = accelerator == "cpu" or (accelerator in ("auto", None) and not torch.cuda.is_available())
    if on_cpu and bf16_fallback("cpu", f"trainer.precision {precision}"):
        return "32-true"
    return precision


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


#: the environment variable every OpenMP program (and torch, at start-up) reads for its thread count
THREADS_ENV = "OMP_NUM_THREADS"


def default_threads() -> int:
    """Intra-op threads for one process when nothing is set: its cores shared among the node's processes.

    The cores are those this process may run on (``os.sched_getaffinity``: a container's or
    ``taskset``'s limit, which torch's own default ignores), divided among the processes a launcher
    started on this node (``LOCAL_WORLD_SIZE``, set by torchrun and Lightning's DDP launcher), at
    least one. On a machine shared with other jobs one thread per process is usually faster still
    (2-8x under load, ``benchmarks/RESULTS.md``): the Make targets choose it (``THREADS ?= 1``).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, cores // processes)


def configure_threads(threads: int | None = None) -> int:
    """Set this process's torch intra-op threads and return the count.

    Precedence: ``threads`` (``--threads`` of ``lit-sr fit``), else ``OMP_NUM_THREADS`` when set in the
    environment (torch read it at start-up; left as it is), else :func:`default_threads`. The chosen
    count is also written to ``OMP_NUM_THREADS``, so processes started from this one (DDP ranks,
    study runs) inherit it and Lightning does not replace it with its own default.

    Raises:
        ValueError: ``threads`` is not a positive integer, or ``OMP_NUM_THREADS`` is set to one that is not.
    """
    if threads is None:
        given = os.environ.get(THREADS_ENV)
        if given is not None:
            if not given.strip().isdigit() or int(given) < 1:
                raise ValueError(f"{THREADS_ENV}={given!r} in the environment: expected a positive integer")
            threads = int(given)
        else:
            threads = default_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer (torch intra-op threads per process), got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ[THREADS_ENV] = str(threads)
    return threads
