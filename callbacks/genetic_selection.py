"""Choose the poisoned set by a genetic search over backdoor gradients (BadSR Sec. IV-D), during training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from callbacks.backdoor_gradients import BackdoorGradientCallback, check_datamodule
from lit_sr.io import atomic_write
from lit_sr.poison.selection import FITNESSES, genetic_select, random_select, selection_fitness, topk_select
from lit_sr.poison.triggers import check_choice, check_number

DATAMODULE_MEMBERS = ("candidate_indices", "budget", "set_poisoned_indices")


class GeneticSelectionCallback(L.Callback):
    """After each backdoor-gradient pass, picks the poisoned set with DEAP and hands it to the data module.

    At the epochs where the :class:`BackdoorGradientCallback` scores the pool (and, with
    ``every_n_epochs > 1``, only every that many of them), rank 0 runs
    :func:`lit_sr.poison.selection.genetic_select` over the pool within ``datamodule.budget``
    (the pool's size when that is smaller), the chosen set is broadcast
    (``trainer.strategy.broadcast``) and every rank calls
    ``datamodule.set_poisoned_indices(chosen)``, so the next epoch trains on it. The order of the
    two callbacks in ``trainer.callbacks`` does not matter: when this one runs first it makes the
    gradient callback score the pool (once per epoch) before searching.

    In the same run it scores, with the same fitness, a random subset of the budget
    (``random_select`` with ``seed``) and the top-``budget`` by gradient norm (``topk_select``),
    so the three can be compared. With ``seed_with_topk`` the top-k subset is placed in the initial
    population: with elitism the GA's result is then at least as fit as top-k *by construction*
    (the logs and ``results`` say so); without it the comparison is an independent one.

    **Logged.** ``selection/fitness_ga``, ``selection/fitness_random``, ``selection/fitness_topk``,
    ``selection/size``; the best fitness of every generation as the TensorBoard scalar series
    ``selection/best_fitness/epoch<E>`` (step = generation); and on rank 0
    ``<log_dir>/selection/epoch<E>.json`` (history, chosen pool indices, the three fitnesses) and,
    with ``save_plot``, ``<log_dir>/selection/epoch<E>.png`` (best fitness per generation against
    the random and top-k levels).

    **Kept.** ``history``: best fitness per generation of the last search; ``results``: a dict of
    the last search (epoch, fitness name, lam, pool, budget, size, chosen, fitness_ga / _random /
    _topk, seeded_with_topk); ``runs``: every search's ``results`` (saved in checkpoints).

    Args:
        gradients: the gradient callback to read; ``None``: the one in ``trainer.callbacks``.
        fitness: ``"norm_of_sum"`` (default; ``||sum of sketches|| - lam |S|``: samples that push
            the weights the same way) or ``"sum_of_norms"`` (``sum ||g_i|| - lam |S|``, the paper's
            reading, whose optimum is top-k).
        lam: size penalty per selected sample (the paper's lambda).
        population: individuals per generation.
        generations: generations after the initial population.
        cx_prob: crossover probability of an offspring pair.
        mut_prob: mutation probability of an offspring.
        tournament_size: individuals per selection tournament.
        elite: best individuals copied unchanged to the next generation.
        resize_prob: probability that a mutation adds or drops a member instead of swapping.
        guided: probability that a new member is drawn in proportion to its gradient norm.
        seed: seed of the search and of the random baseline (the search of epoch ``E`` uses
            ``seed + E`` so successive searches differ while the run stays reproducible).
        seed_with_topk: put the top-k subset into the initial population.
        every_n_epochs: search at every this-many-th gradient pass epoch (see above).
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
        if gradients is not None and not isinstance(gradients, BackdoorGradientCallback):
            raise TypeError(f"gradients must be a BackdoorGradientCallback or None; got {type(gradients).__name__}")
        check_choice(fitness, "fitness", FITNESSES)
        check_number(lam, "lam", 0.0)
        check_number(population, "population", 2, integer=True)
        check_number(generations, "generations", 0, integer=True)
        check_number(cx_prob, "cx_prob", 0.0, 1.0)
        check_number(mut_prob, "mut_prob", 0.0, 1.0)
        check_number(tournament_size, "tournament_size", 1, population, integer=True)
        check_number(elite, "elite", 0, population - 1, integer=True)
        check_number(resize_prob, "resize_prob", 0.0, 1.0)
        check_number(guided, "guided", 0.0, 1.0)
        check_number(seed, "seed", 0, integer=True)
        check_number(every_n_epochs, "every_n_epochs", 1, integer=True)
        self.gradients = gradients
        self.fitness, self.lam, self.seed = fitness, float(lam), seed
        self.ga_kwargs = dict(population=population, generations=generations, cx_prob=cx_prob, mut_prob=mut_prob,
                              tournament_size=tournament_size, elite=elite, resize_prob=resize_prob, guided=guided)
        self.seed_with_topk, self.every_n_epochs, self.save_plot = bool(seed_with_topk), every_n_epochs, save_plot
        self.history: list[float] = []
        self.results: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self._passes_seen = 0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.gradients = self._find_gradients(trainer)
        check_datamodule(trainer.datamodule, DATAMODULE_MEMBERS, type(self).__name__)
        if self.fitness == "norm_of_sum" and self.gradients.sketch_dim is None:
            raise ValueError("fitness='norm_of_sum' needs gradient sketches, but the BackdoorGradientCallback has "
                             "sketch_dim=None; give it a sketch_dim or use fitness='sum_of_norms'")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.gradients.is_due(trainer):
            return
        self._passes_seen += 1
        if (self._passes_seen - 1) % self.every_n_epochs:
            return
        self.gradients.compute(trainer, pl_module)  # no-op when it already ran this epoch
        self.select(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "passes_seen": self._passes_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.runs = list(state_dict.get("runs", []))
        self._passes_seen = int(state_dict.get("passes_seen", 0))
        if self.runs:
            self.results = self.runs[-1]
            self.history = list(self.results.get("history", []))

    # ------------------------------------------------------------------ work
    def _find_gradients(self, trainer: L.Trainer) -> BackdoorGradientCallback:
        if self.gradients is not None:
            return self.gradients
        found = [cb for cb in trainer.callbacks if isinstance(cb, BackdoorGradientCallback)]
        if len(found) != 1:
            raise ValueError(f"GeneticSelectionCallback needs exactly one BackdoorGradientCallback in "
                             f"trainer.callbacks (or passed as gradients=); found {len(found)}")
        return found[0]

    def select(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[int]:
        """Search on rank 0, broadcast, install the set on every rank's data module; returns the set.

        Args:
            trainer: the running trainer.
            pl_module: the module being trained (for logging).
        """
        grads = self.gradients
        if grads.norms is None:
            raise RuntimeError("the BackdoorGradientCallback has not scored the pool yet")
        log_dir = trainer.log_dir  # a collective (Lightning broadcasts it): every rank must ask
        decision = self._search(trainer) if trainer.is_global_zero else None
        decision = trainer.strategy.broadcast(decision, src=0)
        trainer.datamodule.set_poisoned_indices(decision["chosen"])
        self.results, self.history = decision, decision["history"]
        self.runs.append(decision)
        for key in ("fitness_ga", "fitness_random", "fitness_topk", "size"):
            pl_module.log(f"selection/{key}", float(decision[key]), on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            self._write_outputs(trainer, decision, log_dir)
        seeded = " (GA seeded with top-k, so GA >= top-k by construction)" if decision["seeded_with_topk"] else ""
        rank_zero_info(f"genetic selection (epoch {decision['epoch']}, {self.fitness}, lam={self.lam}): "
                       f"{decision['size']}/{decision['budget']} of {decision['pool']} candidates; fitness GA "
                       f"{decision['fitness_ga']:.4g}, random {decision['fitness_random']:.4g}, top-k "
                       f"{decision['fitness_topk']:.4g}{seeded}")
        return decision["chosen"]

    def _search(self, trainer: L.Trainer) -> dict[str, Any]:
        grads = self.gradients
        pool = grads.indices
        budget = int(trainer.datamodule.budget)
        check_number(budget, "datamodule.budget", 1, integer=True)
        budget = min(budget, len(pool))
        scores = (grads.sketches if self.fitness == "norm_of_sum" else grads.norms).numpy()
        norms = grads.norms.numpy()
        epoch = int(trainer.current_epoch)
        topk = topk_select(norms, budget)
        rand = random_select(len(pool), budget, seed=self.seed + epoch)
        initial = [topk.tolist()] if self.seed_with_topk else None
        chosen, history = genetic_select(scores, budget, fitness=self.fitness, lam=self.lam, seed=self.seed + epoch,
                                         initial=initial, **self.ga_kwargs)

        def fit(positions: np.ndarray) -> float:
            return selection_fitness(positions.tolist(), scores, self.fitness, self.lam)

        return {
            "epoch": epoch, "fitness": self.fitness, "lam": self.lam, "pool": len(pool), "budget": budget,
            "size": int(len(chosen)), "chosen": sorted(pool[p] for p in chosen.tolist()),
            "topk": sorted(pool[p] for p in topk.tolist()),
            "fitness_ga": fit(chosen), "fitness_random": fit(rand), "fitness_topk": fit(topk),
            "seeded_with_topk": self.seed_with_topk, "history": history,
        }

    def _write_outputs(self, trainer: L.Trainer, decision: dict[str, Any], log_dir: str | None) -> None:
        epoch = decision["epoch"]
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_scalar"):
                for generation, value in enumerate(decision["history"]):
                    experiment.add_scalar(f"selection/best_fitness/epoch{epoch:03d}", value, global_step=generation)
        if not log_dir:
            return
        folder = Path(log_dir) / "selection"
        with atomic_write(folder / f"epoch{epoch:04d}.json") as tmp:
            tmp.write_text(json.dumps(decision, indent=1))
        if self.save_plot:
            with atomic_write(folder / f"epoch{epoch:04d}.png") as tmp:
                plot_search(decision, tmp)


def plot_search(decision: dict[str, Any], path: Path) -> None:
    """Best fitness per generation of one search, with the random and top-k levels, as a PNG."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend switch

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.subplots()
    ax.plot(decision["history"], label="GA best")
    ax.axhline(decision["fitness_topk"], color="tab:green", linestyle="--", label="top-k by norm")
    ax.axhline(decision["fitness_random"], color="tab:red", linestyle=":", label="random")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"fitness ({decision['fitness']})")
    ax.set_title(f"selection, epoch {decision['epoch']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
