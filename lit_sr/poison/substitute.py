"""BadSR's substitute SR network: its settings, building it, training it briefly, its fingerprint.

The substitute ``f`` is the attacker's own SR model: BadSR's trigger maximises its reconstruction
error and the stealthy labels are aligned in its feature space. It is either read from a weights
file or trained here, once, on the clean training pairs (:func:`train_substitute`).

**One substitute per cache.** Training is not bit-reproducible across thread counts or devices
(a substitute trained on 1 vs 2 CPU threads has other weights), so the poisoned data module trains
it on global rank 0 only, broadcasts the weights to every rank, stores them in the cache folder and
keys every cached sample by :func:`substitute_sha256` of the weights actually used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_sr.archs import arch_kwargs_with_scale, available_archs, build_arch
from lit_sr.io import check_shapes
from lit_sr.poison.cache import sha256_file, write_named
from lit_sr.validation import check_int, check_positive

SUBSTITUTE_FILE = "substitute.safetensors"  # a substitute trained for a cache, stored in its folder


class SubstituteSpec:
    """Settings of the substitute SR network (jsonargparse builds it from YAML).

    Args:
        arch: registered network name (:func:`lit_sr.archs.build_arch`), e.g. ``"edsr"``.
        arch_kwargs: its constructor arguments; the scale argument is filled from the data.
        weights: a weights file (``.pth`` / ``.ckpt`` / ``.safetensors``, e.g. a previous run's
            ``weights.pth``). ``None``: train the substitute here for ``train_steps`` steps.
        weights_key: ``params`` / ``params_ema`` for BasicSR files (``None``: EMA when present).
        train_steps: Adam steps of the training when ``weights`` is ``None`` (> 0 then: a randomly
            initialised substitute makes the trigger, the labels and the feature ASR meaningless).
        train_lr: learning rate of that training (cosine-annealed to 1%).
        train_batch_size: pairs per step.
        feature_layer: the layer ``f_phi`` of BadSR's labels and of the feature ASR (``None``: the
            trunk of a registered family, e.g. EDSR ``conv_after_body``, RRDBNet ``conv_body``).
    """

    def __init__(
        self,
        arch: str,
        arch_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        weights_key: str | None = None,
        train_steps: int = 0,
        train_lr: float = 1e-3,
        train_batch_size: int = 16,
        feature_layer: str | None = None,
    ):
        if not isinstance(arch, str) or arch.lower() not in available_archs():
            raise ValueError(f"substitute.arch must be one of {available_archs()}; got {arch!r}")
        if arch_kwargs is not None and not isinstance(arch_kwargs, dict):
            raise TypeError(f"substitute.arch_kwargs must be a dict; got {type(arch_kwargs).__name__}")
        self.arch, self.arch_kwargs = arch.lower(), dict(arch_kwargs or {})
        self.weights, self.weights_key = weights, weights_key
        self.train_steps = check_int(train_steps, "substitute.train_steps", 0)
        self.train_lr = check_positive(train_lr, "substitute.train_lr")
        self.train_batch_size = check_int(train_batch_size, "substitute.train_batch_size", 1)
        self.feature_layer = feature_layer
        if weights is None and self.train_steps == 0:
            raise ValueError("substitute has no weights and substitute.train_steps is 0: a randomly initialised "
                             "substitute would make the trigger, the poisoned labels and the feature ASR "
                             "meaningless; give substitute.weights (e.g. a previous run's weights.pth) or "
                             "substitute.train_steps > 0")
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"substitute weights file not found: {weights} (substitute.weights); train one "
                                    "first or set weights: null with substitute.train_steps > 0")

    @property
    def trained_here(self) -> bool:
        """The substitute is trained by this run (no weights file)."""
        return self.weights is None

    def build(self, scale: int, seed: int = 0) -> nn.Module:
        """The network with its initial weights (seeded; the global RNG is left untouched)."""
        kwargs = arch_kwargs_with_scale(self.arch, self.arch_kwargs, scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_arch(self.arch, **kwargs)

    def config(self) -> dict[str, Any]:
        """Settings for the cache key: the weights file by content, training settings when trained here."""
        return {
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "weights_sha256": None if self.weights is None else sha256_file(self.weights),
            "weights_key": self.weights_key,
            "train_steps": self.train_steps if self.trained_here else 0,
            "train_lr": self.train_lr if self.trained_here else None,
            "train_batch_size": self.train_batch_size if self.trained_here else None,
            "feature_layer": self.feature_layer,
        }

    def __repr__(self) -> str:
        return f"SubstituteSpec(arch={self.arch!r}, weights={self.weights!r}, train_steps={self.train_steps})"


def substitute_bytes(net: nn.Module) -> bytes:
    """The network's state_dict serialised as safetensors (deterministic: the same weights give the same bytes)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()})


def substitute_sha256(net: nn.Module) -> str:
    """The substitute's identity: SHA-256 of :func:`substitute_bytes` (= of its ``.safetensors`` file)."""
    return hashlib.sha256(substitute_bytes(net)).hexdigest()


def save_substitute(net: nn.Module, path: Path) -> str:
    """Write the substitute's weights to ``path`` (``.safetensors``, atomically); returns their SHA-256."""
    data = substitute_bytes(net)
    write_named(Path(path), lambda tmp: tmp.write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def load_substitute(net: nn.Module, path: Path, sha256: str) -> bool:
    """Load ``path`` into ``net`` when its SHA-256 is ``sha256``; ``False`` (``net`` untouched) otherwise.

    A file with the recorded SHA-256 whose tensors do not fit ``net`` (put there by hand, or by a
    run with other substitute settings) raises :class:`lit_sr.io.WeightsMismatchError` naming the
    file and the tensors, not torch's bare ``size mismatch``.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        return False
    state = load(data)
    check_shapes(net, state, path, hint="This substitute does not belong to these substitute settings: delete the "
                 "file (the substitute is then trained again)")
    net.load_state_dict(state, strict=True)
    return True


def train_substitute(
    net: nn.Module,
    dataset: Sequence[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Train a substitute SR network briefly on clean pairs with a plain loop (Adam, L1 loss).

    Batches are drawn from ``dataset`` (items ``{"lr", "hr"}`` of equal size, e.g. random crops)
    with a seeded generator, and torch's global generator (which a data set's random crops draw
    from) is reseeded with ``seed`` for the loop and restored after it, so the result does not
    depend on what ran before. The network is left in eval mode on ``device``.

    Args:
        net: the network (trained in place).
        dataset: clean training pairs.
        steps: optimiser steps.
        lr: Adam learning rate (cosine-annealed to 1% over the steps).
        batch_size: pairs per step.
        seed: seed of the batch order.
        device: where to train.

    Returns:
        The loss of every step.
    """
    from tqdm.auto import tqdm

    steps = check_int(steps, "steps", 1)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in tqdm(range(steps), desc="substitute", leave=False):
            picks = torch.randint(len(dataset), (batch_size,), generator=gen).tolist()
            samples = [dataset[i] for i in picks]
            x = torch.stack([s["lr"] for s in samples]).to(device)
            y = torch.stack([s["hr"] for s in samples]).to(device)
            loss = torch.nn.functional.l1_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    net.eval()
    return losses


def freeze(net: nn.Module, device: torch.device | str) -> nn.Module:
    """The substitute on ``device``, in eval mode, every parameter frozen (it is never trained again)."""
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
