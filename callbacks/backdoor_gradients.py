"""Per-sample backdoor gradients of every poisoning candidate, every N epochs (BadSR Sec. IV-D).

Deprecated name, kept for configs and scripts written for it: the scoring half of
:class:`callbacks.PoisonSelectionCallback` (which scores *and* selects). Use that callback with a
:class:`lit_sr.poison.GradientScorer` instead::

    PoisonSelectionCallback(scorer=GradientScorer(sketch_dim=2048), selector=GeneticSelector())

On its own this callback scores the pool and logs the norms; a
:class:`callbacks.GeneticSelectionCallback` next to it hands it a genetic selector at setup, so
that it also selects (one callback scores and selects; neither calls the other during training).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import lightning as L
import torch

from callbacks.poison_selection import PoisonSelectionCallback, is_final_epoch
from lit_sr.poison.scoring import GradientScorer, GradientScores
from lit_sr.poison.selection import Selector

__all__ = ["BackdoorGradientCallback", "is_final_epoch", "to_pool_order"]


def to_pool_order(
    pool: list[int], norms: torch.Tensor, sketches: torch.Tensor | None, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """Reorder gathered rows to the order of ``pool``; every member exactly once
    (:meth:`lit_sr.poison.GradientScores.to_pool_order` on plain tensors)."""
    ordered = GradientScores(norms, sketches, [int(i) for i in indices.tolist()]).to_pool_order(list(pool))
    return ordered.norms, ordered.sketches, ordered.indices


class BackdoorGradientCallback(PoisonSelectionCallback):
    """Scores every poisoning candidate by its backdoor gradient, every ``every_n_epochs`` epochs.

    Deprecated: :class:`callbacks.PoisonSelectionCallback` with a ``GradientScorer`` of these
    arguments. Scoring happens as there (same schedule, same DDP gather, same logs); after a pass
    every rank holds ``norms`` ``(N,)``, ``sketches`` ``(N, sketch_dim)`` and ``indices`` (pool
    indices, in the order of ``candidate_indices``) on the CPU, and ``epoch`` says when.

    Args:
        every_n_epochs: score after every this many training epochs.
        batch_size: candidates requested from ``candidate_batches`` at a time.
        chunk_size: samples per ``vmap`` call (``None``: ``batch_size``).
        sketch_dim: buckets of the gradient sketch (``None``: norms only).
        seed: seed of the sketch's hash.
        loss: ``"mse"`` (this deprecated name's default, as before), ``"l1"``, ``"module"`` (the
            victim's training loss, :class:`PoisonSelectionCallback`'s default) or a callable.
        params: names of the network parameters to differentiate (default: every trainable one).
        autocast: ``"none"`` / ``None`` (fp32) or ``"bf16"``.
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
        warnings.warn("BackdoorGradientCallback is deprecated: use callbacks.PoisonSelectionCallback("
                      "scorer=GradientScorer(...), selector=...)", DeprecationWarning, stacklevel=2)
        scorer = GradientScorer(batch_size=batch_size, chunk_size=chunk_size, sketch_dim=sketch_dim, seed=seed,
                                loss=loss, params=params, autocast="none" if autocast is None else autocast)
        super().__init__(scorer=scorer, selector=None, every_n_epochs=every_n_epochs,
                         on_final_epoch=on_final_epoch, log_histogram=log_histogram)

    def _default_selector(self) -> Selector | None:
        return None  # scoring only, unless a GeneticSelectionCallback hands over a selector

    # the attributes of the old callback, read through to the scores
    @property
    def norms(self) -> torch.Tensor | None:
        return None if self.scores is None else self.scores.norms

    @property
    def sketches(self) -> torch.Tensor | None:
        return None if self.scores is None else self.scores.sketches

    @property
    def indices(self) -> list[int] | None:
        return None if self.scores is None else self.scores.indices

    @property
    def epoch(self) -> int | None:
        return self.scores_epoch

    @property
    def sketch_dim(self) -> int | None:
        return self.scorer.sketch_dim

    def is_due(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's end is a scoring point."""
        return self.is_scoring_epoch(trainer)

    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Score the pool now (no-op when it was scored this epoch)."""
        self.score(trainer, pl_module)
