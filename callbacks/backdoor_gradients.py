"""Per-sample backdoor gradients of every poisoning candidate, every N epochs (BadSR Sec. IV-D).

BadSR ranks poisoning candidates by the norm of their *backdoor gradient*
``g_i = d loss(f_theta(trigger(x_i)), y_p,i) / d theta`` for the model being trained. This
callback computes, for every sample of the data module's candidate pool, ``||g_i||`` and a count
sketch of ``g_i`` (:func:`lit_sr.poison.gradients.per_sample_grad_stats`: ``torch.func``
``functional_call`` + ``vmap(grad)``, chunked, on the model's device), gathers them across DDP
ranks, keeps them in pool order and logs them. :class:`~callbacks.GeneticSelectionCallback` turns
them into a new poisoned set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_sr.poison.gradients import LOSSES, per_sample_grad_stats
from lit_sr.poison.triggers import check_number

AUTOCAST = {None: None, "bf16": torch.bfloat16}
DATAMODULE_MEMBERS = ("candidate_indices", "candidate_batches")


def check_datamodule(datamodule: Any, members: Iterable[str], who: str) -> None:
    """Raise ``TypeError`` unless ``datamodule`` has the poisoned-data members ``who`` needs."""
    missing = [m for m in members if not hasattr(datamodule, m)]
    if datamodule is None or missing:
        name = type(datamodule).__name__
        raise TypeError(f"{who} needs a poisoned data module (e.g. datamodules.PoisonedSRDataModule) with "
                        f"{list(members)}; trainer.datamodule is {name}, missing {missing or list(members)}")


def is_final_epoch(trainer: L.Trainer) -> bool:
    """True when no training epoch follows the current one (max_epochs reached or a stop requested)."""
    max_epochs = trainer.max_epochs
    last = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
    return bool(last or trainer.should_stop)


def scored_network(pl_module: L.LightningModule) -> nn.Module:
    """The network whose parameters are trained: ``pl_module.net`` (SRModule) or the module itself."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def gather_across_ranks(
    strategy: Any, norms: torch.Tensor, sketches: torch.Tensor | None, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Concatenate every rank's ``(norms, sketches, indices)`` shard, rank 0's first.

    Shards may differ in length (the pool is dealt ``indices[rank::world_size]``), while
    ``strategy.all_gather`` needs equal shapes: the counts are gathered first, every shard is
    padded to the longest, and the padding is cut off again after the gather.

    Args:
        strategy: a Lightning strategy (``world_size``, ``root_device``, ``all_gather``).
        norms: ``(n,)`` this rank's gradient norms.
        sketches: ``(n, d)`` this rank's sketches, or ``None``.
        indices: ``(n,)`` int64 pool indices of this rank's samples.

    Returns:
        the gathered ``(norms, sketches, indices)`` on the CPU.
    """
    if getattr(strategy, "world_size", 1) == 1:
        return norms.cpu(), (None if sketches is None else sketches.cpu()), indices.cpu()
    device = strategy.root_device
    count = torch.tensor([norms.shape[0]], dtype=torch.int64, device=device)
    counts = strategy.all_gather(count).reshape(-1).tolist()
    longest = max(counts)

    def padded_gather(t: torch.Tensor, fill: float) -> list[torch.Tensor]:
        pad = t.new_full((longest - t.shape[0], *t.shape[1:]), fill)
        stacked = strategy.all_gather(torch.cat([t.to(device), pad.to(device)]))  # (world, longest, ...)
        return [stacked[r, :c].cpu() for r, c in enumerate(counts)]

    all_norms = torch.cat(padded_gather(norms.float(), 0.0))
    all_indices = torch.cat(padded_gather(indices.long(), -1))
    all_sketches = None if sketches is None else torch.cat(padded_gather(sketches.float(), 0.0))
    return all_norms, all_sketches, all_indices


def to_pool_order(
    pool: list[int], norms: torch.Tensor, sketches: torch.Tensor | None, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """Reorder gathered rows to the order of ``pool`` (``candidate_indices``); every member exactly once."""
    got = indices.tolist()
    if sorted(got) != sorted(pool) or len(set(pool)) != len(pool):
        missing = sorted(set(pool) - set(got))[:10]
        extra = sorted(set(got) - set(pool))[:10]
        raise ValueError(f"candidate_batches yielded {len(got)} samples for a pool of {len(pool)} candidates "
                         f"(missing e.g. {missing}, unexpected or repeated e.g. {extra}); it must yield every "
                         f"candidate exactly once over all ranks")
    row_of = {idx: row for row, idx in enumerate(got)}
    order = torch.tensor([row_of[idx] for idx in pool], dtype=torch.int64)
    return norms[order], (None if sketches is None else sketches[order]), list(pool)


class BackdoorGradientCallback(L.Callback):
    """Scores every poisoning candidate by its backdoor gradient, every ``every_n_epochs`` epochs.

    **When.** At ``on_train_epoch_end`` of epochs ``E`` with ``(E + 1) % every_n_epochs == 0``, so
    that a set chosen from these gradients is in place when the *next* epoch's data loaders are
    built (``reload_dataloaders_every_n_epochs=1``) or read (a data set that reads the set live).
    ``on_train_epoch_start`` would be too late for reloaded loaders: Lightning rebuilds them just
    before that hook. The gradients are those of the weights after epoch ``E``; the final epoch is
    skipped unless ``on_final_epoch`` (no epoch is left to use a new set), so ``max_epochs`` must be
    at least 2 for anything to happen. Lightning calls ``ModelCheckpoint`` last, so the checkpoint
    of epoch ``E`` already holds the set chosen at its end.

    **What.** For each candidate ``i`` of ``trainer.datamodule`` (a poisoned data module with
    ``candidate_indices`` and ``candidate_batches(batch_size, rank, world_size)`` yielding
    ``{"lr": triggered LR, "hr": poisoned HR, "index"}``), the gradient of the per-sample loss
    ``loss(net(lr_i), hr_i)`` with respect to the network's parameters
    (:func:`lit_sr.poison.gradients.per_sample_grad_stats`): its norm and a count sketch. ``net``
    is ``pl_module.net`` when the module has one (SRModule; the trained weights, not the EMA copy),
    else the module. The pass runs in eval mode (restored after), without touching ``.grad``, the
    optimiser or the modes. Each rank scores its shard; the results are gathered, so every rank
    holds ``norms`` ``(N,)``, ``sketches`` ``(N, sketch_dim)`` and ``indices`` (pool indices), in
    the order of ``candidate_indices``, on the CPU.

    **Logged.** ``backdoor_grad/norm_mean``, ``backdoor_grad/norm_max`` (and ``norm_min``), and a
    TensorBoard histogram ``backdoor_grad/norms`` at the current global step.

    Args:
        every_n_epochs: score after every this many training epochs.
        batch_size: candidates requested from ``candidate_batches`` at a time.
        chunk_size: samples per ``vmap`` call (bounds memory: chunk x (parameters + activations));
            ``None``: ``batch_size``.
        sketch_dim: buckets of the gradient sketch (``None``: norms only; the ``norm_of_sum``
            selection fitness needs sketches).
        seed: seed of the sketch's hash (identical on every rank).
        loss: ``"mse"`` (default; the paper's backdoor loss is an L2 reconstruction loss),
            ``"l1"`` or a callable ``(output, target) -> scalar``.
        params: names of the network parameters to differentiate (default: every trainable one).
        autocast: ``None`` (fp32) or ``"bf16"`` (the forward under bfloat16 autocast).
        log_histogram: log the TensorBoard histogram of the norms.
        on_final_epoch: also score after the last epoch (for analysis; nothing uses the set).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        batch_size: int = 16,
        chunk_size: int | None = None,
        sketch_dim: int | None = 2048,
        seed: int = 0,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
        params: list[str] | None = None,
        autocast: str | None = None,
        log_histogram: bool = True,
        on_final_epoch: bool = False,
    ):
        super().__init__()
        check_number(every_n_epochs, "every_n_epochs", 1, integer=True)
        check_number(batch_size, "batch_size", 1, integer=True)
        if chunk_size is not None:
            check_number(chunk_size, "chunk_size", 1, integer=True)
        if sketch_dim is not None:
            check_number(sketch_dim, "sketch_dim", 1, integer=True)
        check_number(seed, "seed", 0, integer=True)
        if not callable(loss) and loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)} or a callable (output, target) -> scalar; "
                             f"got {loss!r}")
        if isinstance(params, str):
            raise TypeError(f"params must be a list of parameter names, not a string; got {params!r}")
        if autocast not in AUTOCAST:
            raise ValueError(f"autocast must be None or 'bf16'; got {autocast!r}")
        self.every_n_epochs, self.batch_size = every_n_epochs, batch_size
        self.chunk_size = chunk_size or batch_size
        self.sketch_dim, self.seed, self.loss = sketch_dim, seed, loss
        self.params = None if params is None else list(params)
        self.autocast, self.log_histogram, self.on_final_epoch = autocast, bool(log_histogram), bool(on_final_epoch)
        self.norms: torch.Tensor | None = None
        self.sketches: torch.Tensor | None = None
        self.indices: list[int] | None = None
        self.epoch: int | None = None  # epoch of the last pass
        self.seconds: float | None = None  # wall time of the last pass (this rank's shard + gather)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_datamodule(trainer.datamodule, DATAMODULE_MEMBERS, type(self).__name__)
        if self.params is not None:
            names = dict(scored_network(pl_module).named_parameters())
            unknown = [n for n in self.params if n not in names]
            if unknown:
                raise ValueError(f"params {unknown} are not parameters of {type(scored_network(pl_module)).__name__}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_due(trainer):
            self.compute(trainer, pl_module)

    # ------------------------------------------------------------------ work
    def is_due(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's end is a scoring point (see the class docstring)."""
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return False
        return self.on_final_epoch or not is_final_epoch(trainer)

    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule, force: bool = False) -> None:
        """Score the whole pool now (on every rank: it gathers), unless already done this epoch.

        Args:
            trainer: the running trainer (its ``datamodule`` provides the candidates).
            pl_module: the module being trained.
            force: score again even if this epoch was already scored.
        """
        if not force and self.epoch == trainer.current_epoch and self.norms is not None:
            return
        datamodule = trainer.datamodule
        check_datamodule(datamodule, DATAMODULE_MEMBERS, type(self).__name__)
        pool = [int(i) for i in datamodule.candidate_indices]
        if not pool:
            raise ValueError("the data module's candidate pool (candidate_indices) is empty")
        start = time.perf_counter()
        norms, sketches, indices = self._score_shard(trainer, scored_network(pl_module))
        gathered = gather_across_ranks(trainer.strategy, norms, sketches, indices)
        self.norms, self.sketches, self.indices = to_pool_order(pool, *gathered)
        self.epoch, self.seconds = trainer.current_epoch, time.perf_counter() - start
        self._log(trainer, pl_module)

    def _score_shard(self, trainer: L.Trainer, net: nn.Module):
        batches = trainer.datamodule.candidate_batches(self.batch_size, rank=trainer.global_rank,
                                                      world_size=trainer.world_size)
        device = next(net.parameters()).device
        norms, sketches, indices = [], [], []
        for batch in batches:
            n, s = per_sample_grad_stats(net, batch["lr"], batch["hr"], loss=self.loss, chunk_size=self.chunk_size,
                                         sketch_dim=self.sketch_dim, seed=self.seed, params=self.params,
                                         autocast=self.autocast or "none")
            norms.append(n)
            sketches.append(s)
            indices.append(torch.as_tensor(batch["index"], dtype=torch.int64).reshape(-1))
        if not norms:  # a rank whose shard is empty (pool smaller than the world) still joins the gather
            empty_sketches = None if self.sketch_dim is None else torch.zeros(0, self.sketch_dim, device=device)
            return torch.zeros(0, device=device), empty_sketches, torch.zeros(0, dtype=torch.int64)
        return torch.cat(norms), (None if self.sketch_dim is None else torch.cat(sketches)), torch.cat(indices)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        norms = self.norms
        stats = {"norm_mean": norms.mean(), "norm_max": norms.max(), "norm_min": norms.min()}
        for name, value in stats.items():
            # identical on every rank (gathered); sync_dist only keeps Lightning's DDP bookkeeping quiet
            pl_module.log(f"backdoor_grad/{name}", float(value), on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero and self.log_histogram:
            for logger in trainer.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_histogram"):
                    experiment.add_histogram("backdoor_grad/norms", norms.numpy(), global_step=trainer.global_step)
        rate = len(norms) / self.seconds if self.seconds else math.inf
        rank_zero_info(f"backdoor gradients (epoch {self.epoch}): {len(norms)} candidates in {self.seconds:.2f} s "
                       f"({rate:.1f}/s); norm mean {float(norms.mean()):.4g}, max {float(norms.max()):.4g}")
