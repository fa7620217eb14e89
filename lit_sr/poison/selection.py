"""Which candidates to poison: BadSR's genetic selection by backdoor gradients, and baselines.

BadSR (arXiv 2505.15308, Sec. IV-D) searches subsets ``S`` of the candidate pool with a genetic
algorithm whose fitness rewards large backdoor gradients and penalises the subset size. Two
fitness functions (``lam`` the size penalty):

* ``"sum_of_norms"``: ``sum_{i in S} ||g_i|| - lam |S|`` -- the paper's reading. It is separable,
  so its optimum under ``|S| <= budget`` is simply the top-``budget`` norms (when they exceed
  ``lam``): a useful check of the search, and what :func:`topk_select` returns.
* ``"norm_of_sum"`` (default): ``||sum_{i in S} S g_i|| - lam |S|`` with ``S g_i`` the gradient
  sketches of :mod:`lit_sr.poison.gradients`: rewards samples whose gradients push the
  parameters the same way (they add up instead of cancelling). Not separable, hence the search.

Representation and operators (our choices; the paper gives none):

* an individual is a list of distinct pool indices, ``1 <= |S| <= budget``;
* crossover keeps what both parents share and deals the other members of their union out at
  random, each child keeping its parent's size (so the budget holds and no index is lost);
* new members are drawn uniformly or, with probability ``guided``, in proportion to their
  gradient norm (BadSR's ranking criterion);
* mutation either (with probability ``resize_prob``) adds a random non-member (when under the
  budget) or drops a random member (when above one), or else swaps members for random
  non-members (each member with probability ``1 / |S|``);
* tournament selection (DEAP's ``selTournament``), ``varAnd`` variation, and elitism (the
  ``elite`` best individuals survive unchanged, so the best fitness never decreases).

Fitness is evaluated for a whole population at once as a membership matrix product. DEAP draws
from Python's global ``random``; :func:`genetic_select` seeds it for the run and restores its
previous state afterwards, and our operators use a local ``numpy`` generator, so a run is
deterministic given ``seed`` and leaves the caller's random state alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from deap import algorithms, base, tools

from lit_sr.poison.triggers import check_choice, check_number

FITNESSES = ("norm_of_sum", "sum_of_norms")


class _SubsetFitness(base.Fitness):
    weights = (1.0,)


class _Subset(list):
    """A DEAP individual: distinct pool indices with a fitness attribute."""

    def __init__(self, iterable: Any = ()):
        super().__init__(iterable)
        self.fitness = _SubsetFitness()


def _as_numpy(scores: Any, name: str) -> np.ndarray:
    if hasattr(scores, "detach"):  # a torch tensor, possibly on a GPU
        scores = scores.detach().float().cpu().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _check_scores(scores: Any, fitness: str) -> np.ndarray:
    check_choice(fitness, "fitness", FITNESSES)
    arr = _as_numpy(scores, "scores")
    if fitness == "sum_of_norms" and arr.ndim != 1:
        raise ValueError(f"fitness='sum_of_norms' needs per-sample norms of shape (N,); got shape {arr.shape}")
    if fitness == "sum_of_norms" and np.any(arr < 0):
        raise ValueError("norms must be non-negative (they are gradient norms)")
    if fitness == "norm_of_sum":
        if arr.ndim != 2:
            raise ValueError(f"fitness='norm_of_sum' needs sketches of shape (N, sketch_dim); got shape {arr.shape}")
        arr = arr.astype(np.float32)  # the (P, N) @ (N, d) product dominates: float32 halves it
    if arr.shape[0] == 0:
        raise ValueError("scores is empty: the candidate pool has no sample")
    return arr


class _Evaluator:
    """Fitness of many subsets at once: ``membership (P, N) @ scores``."""

    def __init__(self, scores: np.ndarray, fitness: str, lam: float):
        self.scores, self.fitness, self.lam = scores, fitness, lam

    def __call__(self, subsets: Sequence[Sequence[int]]) -> np.ndarray:
        sizes = np.array([len(s) for s in subsets], dtype=np.int64)
        membership = np.zeros((len(subsets), self.scores.shape[0]), dtype=self.scores.dtype)
        rows = np.repeat(np.arange(len(subsets)), sizes)
        cols = np.fromiter((i for s in subsets for i in s), dtype=np.int64, count=int(sizes.sum()))
        membership[rows, cols] = 1
        total = membership @ self.scores
        value = total if self.fitness == "sum_of_norms" else np.linalg.norm(total, axis=1)
        return value.astype(np.float64) - self.lam * sizes


def selection_fitness(
    indices: Sequence[int], scores: Any, fitness: str = "norm_of_sum", lam: float = 0.0
) -> float:
    """The fitness of one subset, as :func:`genetic_select` scores it.

    Args:
        indices: distinct pool indices.
        scores: norms ``(N,)`` for ``"sum_of_norms"``, sketches ``(N, d)`` for ``"norm_of_sum"``.
        fitness: ``"norm_of_sum"`` or ``"sum_of_norms"``.
        lam: size penalty per selected sample.
    """
    arr = _check_scores(scores, fitness)
    check_number(lam, "lam", 0.0)
    idx = [int(i) for i in indices]
    if len(set(idx)) != len(idx):
        raise ValueError("indices contains duplicates")
    if idx and (min(idx) < 0 or max(idx) >= arr.shape[0]):
        raise ValueError(f"indices must be in [0, {arr.shape[0]}); got range [{min(idx)}, {max(idx)}]")
    return float(_Evaluator(arr, fitness, float(lam))([idx])[0])


def random_select(n: int, budget: int, seed: int = 0) -> np.ndarray:
    """``budget`` distinct indices of ``range(n)`` drawn uniformly with ``seed``, sorted.

    Args:
        n: pool size.
        budget: how many to pick (at most ``n``).
        seed: seed of the numpy generator.
    """
    check_number(n, "n", 1, integer=True)
    check_number(budget, "budget", 1, n, integer=True)
    check_number(seed, "seed", 0, integer=True)
    return np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False)).astype(np.int64)


def topk_select(norms: Any, budget: int) -> np.ndarray:
    """The ``budget`` indices with the largest norms (ties: lower index first), sorted.

    Args:
        norms: per-sample gradient norms ``(N,)``.
        budget: how many to pick (at most ``N``).
    """
    arr = _check_scores(norms, "sum_of_norms")
    check_number(budget, "budget", 1, arr.shape[0], integer=True)
    return np.sort(np.argsort(-arr, kind="stable")[:budget]).astype(np.int64)


class _Operators:
    """Budget-keeping crossover and mutation driven by a local numpy generator.

    New members are drawn uniformly, or with probability ``guided`` in proportion to
    ``weights`` (the per-sample gradient norms): BadSR ranks candidates by that magnitude, and it
    steers the search towards the samples that matter without forbidding the others.
    """

    def __init__(
        self,
        n: int,
        budget: int,
        resize_prob: float,
        rng: np.random.Generator,
        weights: np.ndarray | None = None,
        guided: float = 0.0,
    ):
        self.n, self.budget, self.resize_prob, self.rng = n, budget, resize_prob, rng
        self.guided = guided if weights is not None and float(np.sum(weights)) > 0 else 0.0
        self.cdf = None if self.guided == 0.0 else np.cumsum(weights) / np.sum(weights)

    def _draw(self) -> int:
        if self.guided and self.rng.random() < self.guided:
            return min(int(np.searchsorted(self.cdf, self.rng.random(), side="right")), self.n - 1)
        return int(self.rng.integers(self.n))

    def _non_member(self, members: set[int]) -> int | None:
        if len(members) >= self.n:
            return None
        for _ in range(64):  # rejection sampling: expected n / (n - |S|) draws
            j = self._draw()
            if j not in members:
                return j
        # guided draws keep hitting members (weights concentrated on them): draw uniformly
        outside = np.setdiff1d(np.arange(self.n), np.fromiter(members, dtype=np.int64), assume_unique=True)
        return int(self.rng.choice(outside))

    def random_subset(self, size: int) -> _Subset:
        return _Subset(int(i) for i in self.rng.choice(self.n, size=size, replace=False))

    def mate(self, a: _Subset, b: _Subset) -> tuple[_Subset, _Subset]:
        common = sorted(set(a) & set(b))
        rest = sorted((set(a) | set(b)) - set(common))
        self.rng.shuffle(rest)
        keep_a = len(a) - len(common)
        a[:] = common + rest[:keep_a]
        b[:] = common + rest[keep_a:]
        return a, b

    def mutate(self, ind: _Subset) -> tuple[_Subset]:
        members = set(ind)
        if self.rng.random() < self.resize_prob:
            self._resize(ind, members)
            return (ind,)
        for pos in np.flatnonzero(self.rng.random(len(ind)) < 1.0 / len(ind)):
            j = self._non_member(members)
            if j is None:
                break
            members.discard(ind[pos])
            members.add(j)
            ind[pos] = j
        return (ind,)

    def _resize(self, ind: _Subset, members: set[int]) -> None:
        grow = self.rng.random() < 0.5
        if grow and len(ind) < self.budget:
            j = self._non_member(members)
            if j is not None:
                ind.append(j)
        elif not grow and len(ind) > 1:
            del ind[int(self.rng.integers(len(ind)))]


def _validate_ga(budget, n, lam, population, generations, cx_prob, mut_prob, tournament_size, elite, resize_prob, seed):
    check_number(budget, "budget", 1, n, integer=True)
    check_number(lam, "lam", 0.0)
    check_number(population, "population", 2, integer=True)
    check_number(generations, "generations", 0, integer=True)
    check_number(cx_prob, "cx_prob", 0.0, 1.0)
    check_number(mut_prob, "mut_prob", 0.0, 1.0)
    check_number(tournament_size, "tournament_size", 1, population, integer=True)
    check_number(elite, "elite", 0, population - 1, integer=True)
    check_number(resize_prob, "resize_prob", 0.0, 1.0)
    check_number(seed, "seed", 0, integer=True)


def _initial_population(ops: _Operators, population: int, budget: int, initial) -> list[_Subset]:
    pop = []
    for subset in initial or ():
        idx = [int(i) for i in subset]
        if not 1 <= len(idx) <= budget or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= ops.n:
            raise ValueError(f"initial subsets must hold 1..{budget} distinct indices in [0, {ops.n}); got {subset!r}")
        pop.append(_Subset(idx))
    if len(pop) > population:
        raise ValueError(f"initial has {len(pop)} subsets but population is {population}")
    pop.extend(ops.random_subset(budget) for _ in range(population - len(pop)))
    return pop


def _assign(evaluate: _Evaluator, individuals: Sequence[_Subset]) -> None:
    pending = [ind for ind in individuals if not ind.fitness.valid]
    if pending:
        for ind, value in zip(pending, evaluate(pending)):
            ind.fitness.values = (float(value),)


def genetic_select(
    scores: Any,
    budget: int,
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
    initial: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Genetic search (DEAP) for the subset of at most ``budget`` candidates with the best fitness.

    See the module docstring for the fitness functions and the operators.

    Args:
        scores: per-sample gradient norms ``(N,)`` for ``"sum_of_norms"``, or gradient sketches
            ``(N, d)`` for ``"norm_of_sum"`` (numpy or torch).
        budget: the largest subset allowed (e.g. 10% of the training set).
        fitness: ``"norm_of_sum"`` (default) or ``"sum_of_norms"``.
        lam: size penalty per selected sample (``lambda`` of the paper). Default 0.
        population: individuals per generation.
        generations: generations after the initial population.
        cx_prob: probability that a pair of offspring is crossed.
        mut_prob: probability that an offspring is mutated.
        tournament_size: individuals per tournament.
        elite: best individuals copied unchanged into the next generation.
        resize_prob: probability that a mutation adds or drops one member instead of swapping.
        guided: probability that a new member is drawn in proportion to its gradient norm (the
            sketch's norm for ``"norm_of_sum"``) rather than uniformly. 0 disables it.
        seed: seed of the whole run.
        initial: optional subsets placed in the initial population (e.g. the top-k); the rest are
            random subsets of size ``budget``.

    Returns:
        ``(selected, history)``: the best subset as sorted int64 indices, and the best fitness of
        the initial population and of every generation (``generations + 1`` floats).
    """
    arr = _check_scores(scores, fitness)
    _validate_ga(budget, arr.shape[0], lam, population, generations, cx_prob, mut_prob, tournament_size, elite,
                 resize_prob, seed)
    check_number(guided, "guided", 0.0, 1.0)
    evaluate = _Evaluator(arr, fitness, float(lam))
    weights = arr if arr.ndim == 1 else np.linalg.norm(arr, axis=1)
    ops = _Operators(arr.shape[0], budget, float(resize_prob), np.random.default_rng(seed), weights, float(guided))
    toolbox = base.Toolbox()
    toolbox.register("mate", ops.mate)
    toolbox.register("mutate", ops.mutate)

    saved_state = random.getstate()
    random.seed(seed)
    try:
        pop = _initial_population(ops, population, budget, initial)
        _assign(evaluate, pop)
        best = tools.selBest(pop, 1)[0]
        history = [best.fitness.values[0]]
        for _ in range(generations):
            elites = [toolbox.clone(ind) for ind in tools.selBest(pop, elite)]
            parents = tools.selTournament(pop, population - elite, tournsize=tournament_size)
            offspring = algorithms.varAnd(parents, toolbox, cx_prob, mut_prob)
            _assign(evaluate, offspring)
            pop = elites + offspring
            best = tools.selBest(pop, 1)[0]
            history.append(best.fitness.values[0])
    finally:
        random.setstate(saved_state)
    return np.sort(np.asarray(best, dtype=np.int64)), [float(h) for h in history]
