"""Choose the poisoned set during training: score the pool by backdoor gradients, select, install.

One callback owns the whole step of BadSR's effective poisoning (Sec. IV-D): when it is due it
scores every candidate of the poisoned data module with a :class:`lit_sr.poison.GradientScorer`
(each rank its shard, then gathered), lets a selector (:class:`lit_sr.poison.GeneticSelector`,
``RandomSelector`` or ``TopKSelector``) choose on global rank 0, broadcasts the choice and
installs it on every rank's data module. Scoring and selection are plain objects of
``lit_sr.poison``; this file holds only the schedule, the communication, the logs and the
results (:class:`SelectionResults`, which :class:`callbacks.BackdoorSummary` reads).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.protocols import PixelLossModel, PoisonedData, SRModel, ThreatModelData, require
from lit_sr.io import atomic_write
from lit_sr.poison.scoring import GradientScorer, GradientScores
from lit_sr.poison.selection import GeneticSelector, Selector, random_select, topk_select
from lit_sr.poison.threat_model import VICTIM_ACCESS
from lit_sr.validation import check_bool, check_number


@dataclass
class SelectionRun:
    """One selection: what was chosen at the end of ``epoch`` and how it compares.

    ``chosen`` / ``topk`` are pool (dataset) indices, sorted. ``fitness_selected``,
    ``fitness_random`` and ``fitness_topk`` score the selector's choice, a random subset of the
    same budget (seed ``seed + epoch``) and the top-``budget`` by gradient norm with the selector's
    fitness; ``history`` is the search's best fitness per generation (one value for the
    baselines); ``seconds`` the selection's wall time on rank 0.
    """

    epoch: int
    selector: str
    fitness: str
    lam: float
    pool: int
    budget: int
    size: int
    chosen: list[int]
    topk: list[int]
    fitness_selected: float
    fitness_random: float
    fitness_topk: float
    seeded_with_topk: bool
    history: list[float]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON); a genetic run also carries ``fitness_ga`` (the name the logs use)."""
        out = asdict(self)
        if self.selector == GeneticSelector.name:
            out["fitness_ga"] = self.fitness_selected
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SelectionRun:
        """The inverse of :meth:`as_dict` (checkpoints); the keys of older checkpoints are mapped."""
        values = dict(values)
        if "fitness_selected" not in values and "fitness_ga" in values:
            values.update(fitness_selected=values["fitness_ga"], selector=GeneticSelector.name,
                          seconds=values.get("seconds", math.nan))
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class SelectionResults:
    """Every selection of a run, in order (checkpointed with the callback)."""

    runs: list[SelectionRun] = field(default_factory=list)

    @property
    def last(self) -> SelectionRun | None:
        """The most recent selection, or ``None`` before the first."""
        return self.runs[-1] if self.runs else None


@runtime_checkable
class ReportsSelection(Protocol):
    """A callback that exposes its selections (what :class:`callbacks.BackdoorSummary` looks up)."""

    selection_results: SelectionResults


def is_final_epoch(trainer: L.Trainer) -> bool:
    """True when no training epoch follows the current one (max_epochs reached or a stop requested)."""
    max_epochs = trainer.max_epochs
    last = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
    return bool(last or trainer.should_stop)


def gather_scores(strategy: Any, scores: GradientScores) -> GradientScores:
    """Concatenate every rank's scores, rank 0's first, on the CPU.

    Shards may differ in length (the pool is dealt ``indices[rank::world_size]``), while
    ``strategy.all_gather`` needs equal shapes: the counts are gathered first, every shard is
    padded to the longest, and the padding is cut off again after the gather.
    """
    indices = torch.tensor(scores.indices, dtype=torch.int64)
    if getattr(strategy, "world_size", 1) == 1:
        sketches = None if scores.sketches is None else scores.sketches.cpu()
        return GradientScores(scores.norms.cpu(), sketches, scores.indices)
    device = strategy.root_device
    count = torch.tensor([len(scores)], dtype=torch.int64, device=device)
    counts = strategy.all_gather(count).reshape(-1).tolist()
    longest = max(counts)

    def padded_gather(t: torch.Tensor, fill: float) -> torch.Tensor:
        pad = t.new_full((longest - t.shape[0], *t.shape[1:]), fill)
        stacked = strategy.all_gather(torch.cat([t.to(device), pad.to(device)]))  # (world, longest, ...)
        return torch.cat([stacked[r, :c].cpu() for r, c in enumerate(counts)])

    norms = padded_gather(scores.norms.float(), 0.0)
    all_indices = padded_gather(indices, -1).tolist()
    sketches = None if scores.sketches is None else padded_gather(scores.sketches, 0.0)
    return GradientScores(norms, sketches, all_indices)


def check_selector(selector: Selector | None, scorer: GradientScorer) -> None:
    """Raise unless ``selector`` is a selector (or ``None``) whose fitness ``scorer`` can feed."""
    if selector is None:
        return
    if not isinstance(selector, Selector):
        raise TypeError(f"selector must be a lit_sr.poison selector (GeneticSelector, RandomSelector, TopKSelector); "
                        f"got {type(selector).__name__}")
    if selector.needs_sketches and scorer.sketch_dim is None:
        raise ValueError("fitness='norm_of_sum' needs gradient sketches, but the scorer has sketch_dim=None; "
                         "give it a sketch_dim or use fitness='sum_of_norms'")


def check_victim_access(datamodule: Any, who: str) -> None:
    """Raise unless the data module's threat model lets a callback change its poisoned set mid-training."""
    require(datamodule, ThreatModelData, who, "trainer.datamodule")
    if datamodule.threat_model != VICTIM_ACCESS:
        raise ValueError(
            f"{who} selects the poisoned set on the victim's gradients during training, which the data module's "
            f"threat_model {datamodule.threat_model!r} does not allow (the attacker only hands over a fixed poisoned "
            f"data set). Set data.init_args.threat_model: victim_access for this stronger threat model, or select "
            f"on the attacker's model before training (data.init_args.selection: AttackerSelection); "
            f"see docs/threat_models.md")


class PoisonSelectionCallback(L.Callback):
    """Scores the candidate pool by backdoor gradients and installs a new poisoned set.

    **When.** At ``on_train_epoch_end`` of epochs ``E`` with ``(E + 1) % every_n_epochs == 0``, so
    that the set chosen is in place when the *next* epoch's data loaders are built
    (``reload_dataloaders_every_n_epochs=1``) or read (a data set that reads the set live).
    ``on_train_epoch_start`` would be too late: Lightning rebuilds reloaded loaders just before
    it. The final epoch is skipped unless ``on_final_epoch`` (no epoch is left to use a new set),
    so ``max_epochs`` must be at least 2 for anything to happen. With ``select_every`` > 1 the pool
    is scored (and logged) at every such epoch but a selection is made only at every
    ``select_every``-th of them. The schedule is a function of the epoch alone, so a resumed run
    scores and selects at the same epochs as an uninterrupted one.

    **What.** Each rank scores its shard of the pool (``datamodule.candidate_batches(batch_size,
    rank, world_size)``) with ``scorer`` on ``pl_module.net`` (the trained weights, not the EMA
    copy), with the module's own ``pixel_loss`` when ``scorer.loss == "module"``. The scores are
    gathered (every rank holds ``scores``, in the order of ``candidate_indices``, on the CPU);
    global rank 0 runs ``selector`` within ``datamodule.budget`` (the pool's size when smaller),
    with seed ``seed + E``, and scores the choice, a random subset and the top-k subset with the
    selector's fitness; the decision is broadcast and every rank calls
    ``datamodule.set_poisoned_indices``.

    **Threat model.** Changing the poisoned set on the victim's own gradients needs the victim's
    weights mid-training: the ``victim_access`` threat model, stronger than the BadSR paper's
    data-only attacker (docs/threat_models.md). With a selector, the data module must say
    ``threat_model: victim_access``, or ``on_fit_start`` raises. Scoring alone (no selector) is a
    measurement and runs under either.

    **Resume.** A selection's inputs are the weights it scores and seeds derived from
    ``(seed, epoch)`` (no running generator), and the schedule depends on the epoch alone;
    ``state_dict`` holds every selection made and the scorer's settings (a resume with other
    scorer settings warns). So a resumed run makes the same selections as an uninterrupted one
    exactly when the *training* between the checkpoint and the next selection is the same. What
    a resume does not reproduce: training randomness drawn from the global generators (a
    ``shuffle=True`` loader's order, random crops and flips in the main process, the loaders'
    worker seeds), which Lightning does not checkpoint, and whose draws around a restart differ
    from an uninterrupted run's even when their states are put back (Lightning's restart creates
    the loader at another point). Training randomness derived from ``(seed, epoch)`` (e.g. a
    ``DistributedSampler``, or a loader generator seeded per epoch) is reproduced.

    **Logged.** ``backdoor_grad/norm_mean``, ``_max``, ``_min`` and a TensorBoard histogram
    ``backdoor_grad/norms``; per selection ``selection/fitness_selected``, ``selection/fitness_random``,
    ``selection/fitness_topk``, ``selection/size`` (and ``selection/fitness_ga`` for the genetic
    selector), the best fitness per generation as ``selection/best_fitness/epoch<E>``, and on rank 0
    ``<log_dir>/selection/epoch<E>.json`` and, with ``save_plot``, ``epoch<E>.png``.

    Args:
        scorer: how candidates are scored (``None``: ``GradientScorer()``).
        selector: how the set is chosen (``None``: ``GeneticSelector()``).
        every_n_epochs: score after every this many training epochs.
        select_every: select at every this-many-th scoring.
        seed: seed of the selection and of the random baseline (epoch ``E`` uses ``seed + E``).
        on_final_epoch: also score (and select) after the last epoch (for analysis).
        log_histogram: log the TensorBoard histogram of the norms.
        save_plot: write the PNG plot of each search (matplotlib).
    """

    def __init__(
        self,
        scorer: GradientScorer | None = None,
        selector: Selector | None = None,
        every_n_epochs: int = 1,
        select_every: int = 1,
        seed: int = 0,
        on_final_epoch: bool = False,
        log_histogram: bool = True,
        save_plot: bool = True,
    ):
        super().__init__()
        scorer = GradientScorer() if scorer is None else scorer
        selector = GeneticSelector() if selector is None else selector
        if not isinstance(scorer, GradientScorer):
            raise TypeError(f"scorer must be a lit_sr.poison.GradientScorer; got {type(scorer).__name__}")
        check_selector(selector, scorer)
        check_number(every_n_epochs, "every_n_epochs", 1, integer=True)
        check_number(select_every, "select_every", 1, integer=True)
        check_number(seed, "seed", 0, integer=True)
        for name, flag in (("on_final_epoch", on_final_epoch), ("log_histogram", log_histogram),
                           ("save_plot", save_plot)):
            check_bool(flag, name)
        self.scorer: GradientScorer = scorer
        self.selector: Selector | None = selector
        self.every_n_epochs, self.select_every, self.selection_seed = every_n_epochs, select_every, seed
        self.on_final_epoch, self.log_histogram, self.save_plot = on_final_epoch, log_histogram, save_plot
        self.selection_results = SelectionResults()
        self.scores: GradientScores | None = None
        self.scores_epoch: int | None = None  # epoch of the last scoring
        self.seconds: float | None = None  # wall time of the last scoring (this rank's shard + gather)

    # ------------------------------------------------------------------ schedule
    def is_scoring_epoch(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's end is a scoring point (see the class docstring)."""
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return False
        return self.on_final_epoch or not is_final_epoch(trainer)

    def is_selection_epoch(self, trainer: L.Trainer) -> bool:
        """Whether this epoch's end is a selection point: a scoring point, every ``select_every``-th."""
        if self.selector is None or not self.is_scoring_epoch(trainer):
            return False
        scoring_number = (trainer.current_epoch + 1) // self.every_n_epochs  # 1 for the first
        return (scoring_number - 1) % self.select_every == 0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        who = type(self).__name__
        require(trainer.datamodule, PoisonedData, who, "trainer.datamodule")
        if self.selector is not None:
            check_victim_access(trainer.datamodule, who)
        require(pl_module, SRModel, who, "the LightningModule")
        self.scorer.check_network(pl_module.net)
        if self.scorer.uses_module_loss:
            require(pl_module, PixelLossModel, f"{who} (scorer loss='module')", "the LightningModule")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.is_scoring_epoch(trainer):
            return
        self.score(trainer, pl_module)
        if self.is_selection_epoch(trainer):
            self.select(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"runs": [run.as_dict() for run in self.selection_results.runs], "scorer": self.scorer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selection_results = SelectionResults([SelectionRun.from_dict(r) for r in state_dict.get("runs", [])])
        saved, now = state_dict.get("scorer"), self.scorer.state_dict()
        if saved is not None and saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            rank_zero_warn(f"{type(self).__name__}: the checkpoint's scorer differs in {changed} (saved "
                           f"{ {k: saved.get(k) for k in changed} }); selections after the resume score otherwise")

    # ------------------------------------------------------------------ work
    def score(self, trainer: L.Trainer, pl_module: L.LightningModule) -> GradientScores:
        """Score this rank's shard, gather every rank's, keep them in pool order (no-op when done this epoch)."""
        if self.scores_epoch == trainer.current_epoch and self.scores is not None:
            return self.scores
        dm = trainer.datamodule
        start = time.perf_counter()
        module_loss = pl_module.pixel_loss if self.scorer.uses_module_loss else None
        batches = dm.candidate_batches(self.scorer.batch_size, trainer.global_rank, trainer.world_size)
        local = self.scorer.score(pl_module.net, batches, module_loss)
        self.scores = gather_scores(trainer.strategy, local).to_pool_order(list(dm.candidate_indices))
        self.scores_epoch, self.seconds = int(trainer.current_epoch), time.perf_counter() - start
        self._log_scores(trainer, pl_module)
        return self.scores

    def select(self, trainer: L.Trainer, pl_module: L.LightningModule) -> SelectionRun:
        """Select on global rank 0, broadcast, install the set on every rank's data module."""
        if self.scores is None or self.scores_epoch != trainer.current_epoch:
            raise RuntimeError("select() needs this epoch's scores: call score() first")
        log_dir = trainer.log_dir  # a collective (Lightning broadcasts it): every rank must ask
        run = self._decide(trainer) if trainer.is_global_zero else None
        run = trainer.strategy.broadcast(run, src=0)
        trainer.datamodule.set_poisoned_indices(run.chosen)
        self.selection_results.runs.append(run)
        self._log_selection(trainer, pl_module, run, log_dir)
        return run

    def _decide(self, trainer: L.Trainer) -> SelectionRun:
        selector, scores = self.selector, self.scores
        pool = scores.indices
        budget = check_number(int(trainer.datamodule.budget), "datamodule.budget", 1, integer=True)
        budget = min(budget, len(pool))
        epoch = int(trainer.current_epoch)
        start = time.perf_counter()
        norms = scores.norms.numpy()
        sketches = None if scores.sketches is None else scores.sketches.numpy()
        selected = selector.select(norms, sketches, budget, seed=self.selection_seed + epoch)
        seconds = time.perf_counter() - start
        topk = topk_select(norms, budget)
        rand = random_select(len(pool), budget, seed=self.selection_seed + epoch)
        return SelectionRun(
            epoch=epoch, selector=selector.name, fitness=selector.fitness, lam=selector.lam, pool=len(pool),
            budget=budget, size=int(len(selected.positions)),
            chosen=sorted(pool[p] for p in selected.positions.tolist()),
            topk=sorted(pool[p] for p in topk.tolist()),
            fitness_selected=selector.fitness_of(selected.positions.tolist(), norms, sketches),
            fitness_random=selector.fitness_of(rand.tolist(), norms, sketches),
            fitness_topk=selector.fitness_of(topk.tolist(), norms, sketches),
            seeded_with_topk=bool(getattr(selector, "seed_with_topk", False)),
            history=list(selected.history), seconds=seconds,
        )

    # ------------------------------------------------------------------ logs
    def _log_scores(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        norms = self.scores.norms
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
        rank_zero_info(f"backdoor gradients (epoch {self.scores_epoch}): {len(norms)} candidates in "
                       f"{self.seconds:.2f} s ({rate:.1f}/s); norm mean {float(norms.mean()):.4g}, "
                       f"max {float(norms.max()):.4g}")

    def _log_selection(self, trainer: L.Trainer, pl_module: L.LightningModule, run: SelectionRun,
                       log_dir: str | None) -> None:
        values = {"fitness_selected": run.fitness_selected, "fitness_random": run.fitness_random,
                  "fitness_topk": run.fitness_topk, "size": run.size}
        if run.selector == GeneticSelector.name:
            values["fitness_ga"] = run.fitness_selected
        for key, value in values.items():
            pl_module.log(f"selection/{key}", float(value), on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            self._write_outputs(trainer, run, log_dir)
        seeded = " (GA seeded with top-k, so GA >= top-k by construction)" if run.seeded_with_topk else ""
        rank_zero_info(f"{run.selector} selection (epoch {run.epoch}, {run.fitness}, lam={run.lam}): {run.size}/"
                       f"{run.budget} of {run.pool} candidates in {run.seconds:.2f} s; fitness {run.selector} "
                       f"{run.fitness_selected:.4g}, random {run.fitness_random:.4g}, top-k "
                       f"{run.fitness_topk:.4g}{seeded}")

    def _write_outputs(self, trainer: L.Trainer, run: SelectionRun, log_dir: str | None) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_scalar"):
                for generation, value in enumerate(run.history):
                    experiment.add_scalar(f"selection/best_fitness/epoch{run.epoch:03d}", value,
                                          global_step=generation)
        if not log_dir:
            return
        folder = Path(log_dir) / "selection"
        with atomic_write(folder / f"epoch{run.epoch:04d}.json") as tmp:
            tmp.write_text(json.dumps(run.as_dict(), indent=1))
        if self.save_plot:
            with atomic_write(folder / f"epoch{run.epoch:04d}.png") as tmp:
                plot_search(run, tmp)


def plot_search(run: SelectionRun, path: Path) -> None:
    """Best fitness per generation of one search, with the random and top-k levels, as a PNG."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend switch

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.subplots()
    ax.plot(run.history, label=f"{run.selector} best")
    ax.axhline(run.fitness_topk, color="tab:green", linestyle="--", label="top-k by norm")
    ax.axhline(run.fitness_random, color="tab:red", linestyle=":", label="random")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"fitness ({run.fitness})")
    ax.set_title(f"selection, epoch {run.epoch}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
