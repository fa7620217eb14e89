"""Per-sample backdoor gradients (BadSR Sec. IV-D): norms and fixed random sketches.

For each poisoned candidate ``i`` with triggered input ``x_i`` and poisoned label ``y_i`` the
backdoor gradient is ``g_i = d loss(f_theta(x_i), y_i) / d theta``. :func:`per_sample_grad_stats`
computes every ``g_i`` with ``torch.func`` (``functional_call`` + ``vmap(grad)``), a chunk of
samples at a time, and keeps only two summaries per sample: the exact norm ``||g_i||_2`` and a
count sketch ``S g_i`` of ``sketch_dim`` numbers.

**The sketch.** A count sketch (Charikar et al. 2002): coordinate ``j`` of the flattened gradient
(parameters concatenated in ``named_parameters`` order) is added, with a sign ``s(j)``, to bucket
``h(j)``. ``h`` and ``s`` are integer hashes of ``(seed, j)`` computed on the fly with 31-bit
arithmetic, so nothing of size ``D`` (the parameter count) is stored, no ``sketch_dim x D``
matrix is ever drawn, and the projection is bit-identical across calls, devices and DDP ranks
for a given seed and parameter shapes. It is linear (``S(sum g_i) = sum S g_i``, which the
``norm_of_sum`` fitness of :mod:`lit_sr.poison.selection` relies on) and preserves inner products
and norms in expectation (relative error about ``sqrt(2 / sketch_dim)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lit_sr.runtime import Autocast, autocast_context, autocast_dtype, frozen_eval, model_device
from lit_sr.validation import check_images, check_number

GradLoss = Literal["mse", "l1"]
LOSSES: tuple[str, ...] = get_args(GradLoss)
_MASK31 = (1 << 31) - 1
_HASH_MULT = 0x45D9F3B  # < 2**27, so a 31-bit value times it stays far below 2**63: no overflow


def _mix31(x: torch.Tensor) -> torch.Tensor:
    """An integer hash of int64 values in [0, 2**31), exact on every device."""
    x = ((x ^ (x >> 16)) * _HASH_MULT) & _MASK31
    x = ((x ^ (x >> 16)) * _HASH_MULT) & _MASK31
    return x ^ (x >> 16)


def _seed_key(seed: int, salt: int) -> int:
    return int(_mix31(torch.tensor([(2 * seed + salt) & _MASK31], dtype=torch.int64)).item())


def sketch_hashes(
    offset: int, numel: int, sketch_dim: int, seed: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket (int64 in ``[0, sketch_dim)``) and sign (float32 +-1) of coordinates
    ``offset .. offset + numel - 1`` of the flattened parameter vector."""
    coords = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    # fold coordinates beyond 2**31 into 31 bits (only models with > 2e9 parameters need it)
    coords = (coords & _MASK31) ^ _mix31(coords >> 31)
    bucket = _mix31(coords ^ _seed_key(seed, 1)) % sketch_dim
    sign = (_mix31(coords ^ _seed_key(seed, 2)) & 1).to(torch.float32) * 2 - 1
    return bucket, sign


def sketch_vectors(vectors: torch.Tensor, sketch_dim: int = 2048, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Count sketch of the rows of ``vectors`` ``(B, D)`` (coordinates start at ``offset``) -> ``(B, sketch_dim)``.

    Args:
        vectors: ``(B, D)`` float tensor.
        sketch_dim: number of buckets.
        seed: hash seed.
        offset: global index of the first column (for sketching a long vector block by block).
    """
    check_number(sketch_dim, "sketch_dim", 1, integer=True)
    bucket, sign = sketch_hashes(offset, vectors.shape[1], sketch_dim, seed, vectors.device)
    out = torch.zeros(vectors.shape[0], sketch_dim, dtype=torch.float32, device=vectors.device)
    return out.index_add_(1, bucket, vectors.float() * sign)


def _loss_fn(loss: GradLoss | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(loss) and not isinstance(loss, str):
        return loss
    if loss == "mse":
        return F.mse_loss
    if loss == "l1":
        return F.l1_loss
    raise ValueError(f"loss must be one of {list(LOSSES)} or a callable (output, target) -> scalar; got {loss!r}")


def _param_names(model: nn.Module, params: Iterable[str] | None) -> list[str]:
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    else:
        if isinstance(params, str):
            raise TypeError(f"params must be an iterable of parameter names, not a string; got {params!r}")
        names = list(params)
        unknown = [n for n in names if n not in named]
        if unknown:
            raise ValueError(f"params {unknown} are not parameters of {type(model).__name__}")
        order = {n: i for i, n in enumerate(named)}
        names = sorted(set(names), key=order.__getitem__)  # fixed order: the sketch depends on it
    if not names:
        raise ValueError("params selects no parameter (none requires grad, or an empty list was given)")
    return names


def _check_inputs(lr, target, chunk_size, sketch_dim, seed, autocast) -> None:
    check_images(lr, "lr")
    check_images(target, "target")
    if lr.shape[0] != target.shape[0]:
        raise ValueError(f"lr has {lr.shape[0]} samples but target has {target.shape[0]}")
    check_number(chunk_size, "chunk_size", 1, integer=True)
    if sketch_dim is not None:
        check_number(sketch_dim, "sketch_dim", 1, integer=True)
    check_number(seed, "seed", 0, integer=True)
    autocast_dtype(autocast)  # raises on anything but "none" / "bf16"


def _forward(model, x, autocast: Autocast):
    with autocast_context(autocast, x.device):
        return model(x)


def _check_output_shape(model, lr, target, autocast: Autocast) -> None:
    with torch.no_grad():
        out = _forward(model, lr[:1], autocast)
    if out.shape[1:] != target.shape[1:]:
        raise ValueError(f"the model maps lr {tuple(lr.shape[1:])} to {tuple(out.shape[1:])} but target is "
                         f"{tuple(target.shape[1:])} per sample")


@contextmanager
def _gradient_pass(
    model: nn.Module, lr: torch.Tensor, target: torch.Tensor, loss, params, autocast: Autocast
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Callable, list[str]]]:
    """The setting both gradient passes share: the model frozen in eval mode, autograd on (also
    inside ``torch.inference_mode``); yields the inputs and targets copied to the model's device,
    the loss function and the names of the parameters to differentiate."""
    loss_fn = _loss_fn(loss)
    names = _param_names(model, params)
    device = model_device(model, lr.device)
    with torch.inference_mode(False), torch.enable_grad(), frozen_eval(model):
        x_all = lr.detach().to(device).clone()
        y_all = target.detach().to(device).clone()
        _check_output_shape(model, x_all, y_all, autocast)
        yield x_all, y_all, loss_fn, names


def _summarise(grads: Sequence[torch.Tensor], sketch_dim: int | None, seed: int):
    """Norms ``(B,)`` and sketches ``(B, sketch_dim)`` of per-sample gradient blocks ``(B, *shape)``."""
    batch = grads[0].shape[0]
    sq = torch.zeros(batch, dtype=torch.float32, device=grads[0].device)
    sketch = None if sketch_dim is None else torch.zeros(batch, sketch_dim, device=grads[0].device)
    offset = 0
    for g in grads:
        flat = g.reshape(batch, -1).float()
        sq += flat.pow(2).sum(dim=1)
        if sketch is not None:
            bucket, sign = sketch_hashes(offset, flat.shape[1], sketch_dim, seed, flat.device)
            sketch.index_add_(1, bucket, flat * sign)
        offset += flat.shape[1]
    return sq.sqrt(), sketch


def per_sample_grad_stats(
    model: nn.Module,
    lr: torch.Tensor,
    target: torch.Tensor,
    loss: GradLoss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
    chunk_size: int = 16,
    sketch_dim: int | None = 2048,
    seed: int = 0,
    params: Iterable[str] | None = None,
    autocast: Autocast = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Norms and sketches of per-sample backdoor gradients, vectorised with ``torch.func``.

    ``g_i`` is the gradient of ``loss(model(lr[i:i+1]), target[i:i+1])`` (the per-sample loss, not
    divided by the batch size) with respect to the selected parameters. Samples are processed
    ``chunk_size`` at a time with ``vmap(grad(functional_call(...)))``: memory grows with
    ``chunk_size x (parameters + one sample's activations)``, and there is no Python loop over
    samples inside a chunk. Parameters that are not selected and all buffers are passed to
    ``functional_call`` unchanged. The model runs in eval mode for the call (dropout off; vmap
    cannot vectorise batch statistics) and its modes and ``requires_grad`` flags are restored.
    Works under ``torch.inference_mode`` (e.g. inside Lightning validation).

    Args:
        model: the network being trained (any ``nn.Module``).
        lr: triggered LR inputs ``(N, C, h, w)``.
        target: poisoned HR labels ``(N, C, H, W)``, the shape of the model's output.
        loss: ``"mse"`` (default), ``"l1"`` or a callable ``(output, target) -> scalar`` applied to
            one-sample batches.
        chunk_size: samples per ``vmap`` call.
        sketch_dim: buckets of the count sketch (see the module docstring); ``None`` skips it.
        seed: hash seed of the sketch.
        params: names of the parameters to differentiate (default: all with ``requires_grad``).
        autocast: ``"none"`` (float32, default) or ``"bf16"``: the forward under bf16 autocast;
            the loss and the summaries stay float32 (:data:`lit_sr.runtime.Autocast`).

    Returns:
        ``(norms, sketches)``: ``(N,)`` float32 and ``(N, sketch_dim)`` float32 (or ``None``), on
        the model's device.
    """
    _check_inputs(lr, target, chunk_size, sketch_dim, seed, autocast)
    norms, sketches = [], []
    with _gradient_pass(model, lr, target, loss, params, autocast) as (x_all, y_all, loss_fn, names):
        named = dict(model.named_parameters())
        chosen = {n: named[n].detach() for n in names}
        fixed = {n: p.detach() for n, p in named.items() if n not in chosen}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def sample_loss(p, x, y):
            with autocast_context(autocast, x.device):
                out = functional_call(model, (p, fixed, buffers), (x.unsqueeze(0),))
            return loss_fn(out.float(), y.unsqueeze(0).float())

        per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        for start in range(0, x_all.shape[0], chunk_size):
            grads = per_sample_grad(chosen, x_all[start : start + chunk_size], y_all[start : start + chunk_size])
            n, s = _summarise([grads[k] for k in names], sketch_dim, seed)
            norms.append(n)
            sketches.append(s)
    return torch.cat(norms), (None if sketch_dim is None else torch.cat(sketches))


def naive_per_sample_grad_stats(
    model: nn.Module,
    lr: torch.Tensor,
    target: torch.Tensor,
    loss: GradLoss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
    sketch_dim: int | None = 2048,
    seed: int = 0,
    params: Iterable[str] | None = None,
    autocast: Autocast = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference for :func:`per_sample_grad_stats`: one forward and backward per sample.

    Same arguments (no ``chunk_size``) and the same outputs; used by tests and benchmarks.
    """
    _check_inputs(lr, target, 1, sketch_dim, seed, autocast)
    norms, sketches = [], []
    with _gradient_pass(model, lr, target, loss, params, autocast) as (x_all, y_all, loss_fn, names):
        named = dict(model.named_parameters())
        chosen = [named[n] for n in names]
        for p in chosen:  # frozen_eval froze them; these are the ones we differentiate
            p.requires_grad_(True)
        for i in range(x_all.shape[0]):
            out = _forward(model, x_all[i : i + 1], autocast)
            grads = torch.autograd.grad(loss_fn(out.float(), y_all[i : i + 1].float()), chosen)
            n, s = _summarise([g.unsqueeze(0) for g in grads], sketch_dim, seed)
            norms.append(n)
            sketches.append(s)
    return torch.cat(norms), (None if sketch_dim is None else torch.cat(sketches))


def naive_per_sample_grad_norms(
    model: nn.Module,
    lr: torch.Tensor,
    target: torch.Tensor,
    loss: GradLoss | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
    params: Iterable[str] | None = None,
) -> torch.Tensor:
    """Per-sample gradient norms ``(N,)`` with one backward per sample (the naive baseline).

    Args:
        model, lr, target, loss, params: as in :func:`per_sample_grad_stats`.
    """
    return naive_per_sample_grad_stats(model, lr, target, loss, sketch_dim=None, params=params)[0]
