"""Choose the poisoned set by a genetic search over backdoor gradients (BadSR Sec. IV-D), during training.

Deprecated name, kept for configs and scripts written for it. The pair
``BackdoorGradientCallback`` + ``GeneticSelectionCallback`` is one
:class:`callbacks.PoisonSelectionCallback` with a :class:`lit_sr.poison.GeneticSelector`::

    PoisonSelectionCallback(scorer=GradientScorer(...), selector=GeneticSelector(fitness="norm_of_sum"))

This class holds the genetic selector's settings and, at ``setup``, hands them to the
:class:`~callbacks.BackdoorGradientCallback` of the trainer, which then scores *and* selects in
its own ``on_train_epoch_end``; this one does nothing during training and only reads the
results through (``results``, ``runs``, ``history``), so the order of the two in
``trainer.callbacks`` does not matter.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L

from callbacks.backdoor_gradients import BackdoorGradientCallback
from callbacks.poison_selection import SelectionResults, SelectionRun, check_selector, plot_search
from lit_sr.poison.selection import GeneticSelector
from lit_sr.validation import check_number

__all__ = ["GeneticSelectionCallback", "plot_search"]


class GeneticSelectionCallback(L.Callback):
    """After each backdoor-gradient pass, picks the poisoned set with DEAP and hands it to the data module.

    Deprecated: see the module docstring. Behaviour as before: at the epochs where the
    :class:`BackdoorGradientCallback` scores the pool (and, with ``every_n_epochs > 1``, only every
    that many of them), rank 0 runs the genetic search within ``datamodule.budget``, the set is
    broadcast and installed on every rank, and the search is compared with a random subset (seed
    ``seed + epoch``) and the top-``budget`` by norm under the same fitness.

    **Kept.** ``history``: best fitness per generation of the last search; ``results``: a dict of
    the last search (epoch, fitness, lam, pool, budget, size, chosen, topk, fitness_ga / _random /
    _topk, seeded_with_topk, history); ``runs``: every search's dict.

    Args:
        gradients: the gradient callback to hand the selector to; ``None``: the one in ``trainer.callbacks``.
        fitness: ``"norm_of_sum"`` (default) or ``"sum_of_norms"`` (see :mod:`lit_sr.poison.selection`).
        lam: size penalty per selected sample (the paper's lambda).
        population: individuals per generation.
        generations: generations after the initial population.
        cx_prob: crossover probability of an offspring pair.
        mut_prob: mutation probability of an offspring.
        tournament_size: individuals per selection tournament.
        elite: best individuals copied unchanged to the next generation.
        resize_prob: probability that a mutation adds or drops a member instead of swapping.
        guided: probability that a new member is drawn in proportion to its gradient norm.
        seed: seed of the search and of the random baseline (epoch ``E`` uses ``seed + E``).
        seed_with_topk: put the top-k subset into the initial population.
        every_n_epochs: search at every this-many-th gradient pass.
        save_plot: write the PNG plot of the search (matplotlib).
    """

    def __init__(
        self,
        gradients: BackdoorGradientCallback | None = None,
        fitness: str = "norm_of_sum",
        lam: float = 0.0,
        population: int = 50,
        generations: int = 100,
        cx_prob: float = 0.7,
        mut_prob: float = 0.3,
        tournament_size: int = 3,
        elite: int = 1,
        resize_prob: float = 0.2,
        guided: float = 0.5,
        seed: int = 0,
        seed_with_topk: bool = True,
        every_n_epochs: int = 1,
        save_plot: bool = True,
    ):
        super().__init__()
        warnings.warn("GeneticSelectionCallback is deprecated: use callbacks.PoisonSelectionCallback("
                      "scorer=GradientScorer(...), selector=GeneticSelector(...))", DeprecationWarning, stacklevel=2)
        if gradients is not None and not isinstance(gradients, BackdoorGradientCallback):
            raise TypeError(f"gradients must be a BackdoorGradientCallback or None; got {type(gradients).__name__}")
        self.selector = GeneticSelector(fitness=fitness, lam=lam, population=population, generations=generations,
                                        cx_prob=cx_prob, mut_prob=mut_prob, tournament_size=tournament_size,
                                        elite=elite, resize_prob=resize_prob, guided=guided,
                                        seed_with_topk=seed_with_topk)
        check_number(seed, "seed", 0, integer=True)
        check_number(every_n_epochs, "every_n_epochs", 1, integer=True)
        self.gradients = gradients
        self.seed, self.every_n_epochs, self.save_plot = seed, every_n_epochs, bool(save_plot)
        self._pending_runs: list[dict[str, Any]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        grads = self._find_gradients(trainer)
        check_selector(self.selector, grads.scorer)
        grads.selector, grads.select_every = self.selector, self.every_n_epochs
        grads.selection_seed, grads.save_plot = self.seed, self.save_plot
        self.gradients = grads
        if self._pending_runs is not None:
            self._restore(self._pending_runs)

    def _find_gradients(self, trainer: L.Trainer) -> BackdoorGradientCallback:
        if self.gradients is not None:
            return self.gradients
        found = [cb for cb in trainer.callbacks if isinstance(cb, BackdoorGradientCallback)]
        if len(found) != 1:
            raise ValueError(f"GeneticSelectionCallback needs exactly one BackdoorGradientCallback in "
                             f"trainer.callbacks (or passed as gradients=); found {len(found)}")
        return found[0]

    # the selections live in the gradient callback (it made them); a checkpoint of the old pair
    # stored them here, so they are handed over when such a checkpoint is loaded
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        runs = state_dict.get("runs")
        if runs:
            self._pending_runs = list(runs)
            if self.gradients is not None:
                self._restore(self._pending_runs)

    def _restore(self, runs: list[dict[str, Any]]) -> None:
        if not self.gradients.selection_results.runs:
            self.gradients.selection_results = SelectionResults([SelectionRun.from_dict(r) for r in runs])
        self._pending_runs = None

    # ------------------------------------------------------------------ results, read through
    @property
    def runs(self) -> list[dict[str, Any]]:
        """Every search of the run, as dicts (``SelectionRun.as_dict``)."""
        if self.gradients is None:
            return []
        return [run.as_dict() for run in self.gradients.selection_results.runs]

    @property
    def results(self) -> dict[str, Any]:
        """The last search as a dict (empty before the first)."""
        last = None if self.gradients is None else self.gradients.selection_results.last
        return {} if last is None else last.as_dict()

    @property
    def history(self) -> list[float]:
        """Best fitness per generation of the last search."""
        return list(self.results.get("history", []))
