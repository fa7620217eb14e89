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

* an individual is a set of distinct pool indices, ``1 <= |S| <= budget``, held as a read-only
  int64 array (operators replace it, never edit it, so copies share it);
* crossover keeps what both parents share and deals the other members of their union out at
  random, each child keeping its parent's size (so the budget holds and no index is lost);
* new members are drawn uniformly or, with probability ``guided``, in proportion to their
  gradient norm (BadSR's ranking criterion);
* mutation either (with probability ``resize_prob``) adds a random non-member (when under the
  budget) or drops a random member (when above one), or else swaps members for random
  non-members (each member with probability ``1 / |S|``);
* tournament selection (DEAP's ``selTournament``), ``varAnd`` variation, and elitism (the
  ``elite`` best individuals survive unchanged, so the best fitness never decreases).

**Fitness at pool scale** (:mod:`lit_sr.poison.subset_fitness`): each individual's members are
summed (``embedding_bag`` over the sketch rows, ``numpy.add.reduceat`` over the norms), not
multiplied as a dense membership matrix; for sketches the default evaluation is incremental
(:class:`~lit_sr.poison.subset_fitness.IncrementalFitness`: an offspring costs the rows it
changed). Sketches stay float32 or float16, never copied to float64.

DEAP draws from Python's global ``random``; :func:`genetic_select` seeds it for the run and
restores its previous state afterwards, and our operators use a local ``numpy`` generator, so a
run is deterministic given ``seed`` and leaves the caller's random state alone.

**Selectors.** :class:`GeneticSelector`, :class:`RandomSelector` and :class:`TopKSelector` are
the same three choices as objects with one method, ``select(norms, sketches, budget, seed)``, so
that a training callback (``callbacks.PoisonSelectionCallback``) or a script can swap them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from deap import algorithms, base, tools

from lit_sr.poison.subset_fitness import (  # noqa: F401  (IncrementalFitness, dense_fitness: re-exported)
    EVALUATIONS,
    FITNESSES,
    Evaluation,
    Fitness,
    IncrementalFitness,
    SparseFitness,
    _check_scores,
    _clone,
    _CrossRecord,
    _evaluator,
    _frozen,
    _scores_and_norms,
    _Subset,
    dense_fitness,
)
from lit_sr.validation import check_bool, check_choice, check_number


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
    if not idx:
        return 0.0  # the empty set: nothing summed, nothing penalised
    if min(idx) < 0 or max(idx) >= arr.shape[0]:
        raise ValueError(f"indices must be in [0, {arr.shape[0]}); got range [{min(idx)}, {max(idx)}]")
    return float(SparseFitness(arr, fitness, float(lam))([idx])[0])


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


# --------------------------------------------------------------------------- the genetic search


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
        self._mask = np.zeros(n, dtype=bool)  # scratch membership of the individual at hand, left all False
        self._counts = np.zeros(n, dtype=np.uint8)  # scratch membership counts of a crossover pair, left all 0

    def _draw(self) -> int:
        if self.guided and self.rng.random() < self.guided:
            return min(int(np.searchsorted(self.cdf, self.rng.random(), side="right")), self.n - 1)
        return int(self.rng.integers(self.n))

    def _non_member(self, size: int) -> int | None:
        """A pool index outside the members marked in ``self._mask`` (``size`` of them); None if there is none."""
        if size >= self.n:
            return None
        mask = self._mask
        for _ in range(64):  # rejection sampling: expected n / (n - |S|) draws
            j = self._draw()
            if not mask[j]:
                return j
        # guided draws keep hitting members (weights concentrated on them): draw uniformly
        return int(self.rng.choice(np.flatnonzero(~mask)))

    def _split(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(members of both, members of one only) of two sets of distinct indices, each sorted.

        Sorted, so the crossover's deal depends on the sets only. Large subsets (against the pool)
        are counted in a pool-sized array, which costs a pass over the pool and no sort; small ones
        are sorted (``numpy.intersect1d`` / ``setxor1d``). The same arrays either way.
        """
        if 8 * (len(a) + len(b)) < self.n:
            return np.intersect1d(a, b, assume_unique=True), np.setxor1d(a, b, assume_unique=True)
        counts = self._counts
        counts[a] = 1
        counts[b] += 1
        common, rest = np.flatnonzero(counts == 2), np.flatnonzero(counts == 1)
        counts[a] = 0
        counts[b] = 0
        return common, rest

    def random_subset(self, size: int) -> _Subset:
        return _Subset(_frozen(self.rng.choice(self.n, size=size, replace=False).astype(np.int64, copy=False)))

    def mate(self, a: _Subset, b: _Subset) -> tuple[_Subset, _Subset]:
        common, rest = self._split(a.members, b.members)
        self.rng.shuffle(rest)
        keep_a = len(a) - len(common)
        child_a = _frozen(np.concatenate([common, rest[:keep_a]]))
        child_b = _frozen(np.concatenate([common, rest[keep_a:]]))
        if a.ref is not None and b.ref is not None:  # what the incremental evaluation needs to sum one child only
            record = _CrossRecord(a.ref, b.ref, child_a, child_b)
            a.pair, b.pair = (record, 0), (record, 1)
        a.members, b.members = child_a, child_b
        return a, b

    def mutate(self, ind: _Subset) -> tuple[_Subset]:
        if self.rng.random() < self.resize_prob:
            self._resize(ind)
            return (ind,)
        positions = np.flatnonzero(self.rng.random(len(ind)) < 1.0 / len(ind))
        if len(positions):
            members = ind.members.copy()  # a new array: the old one may be shared (clones, records)
            mask = self._mask
            mask[members] = True
            try:
                for pos in positions.tolist():
                    j = self._non_member(len(members))
                    if j is None:
                        break
                    mask[members[pos]] = False
                    mask[j] = True
                    members[pos] = j
            finally:
                mask[members] = False
            ind.members = _frozen(members)
        return (ind,)

    def _resize(self, ind: _Subset) -> None:
        grow = self.rng.random() < 0.5
        if grow and len(ind) < self.budget:
            mask = self._mask
            mask[ind.members] = True
            try:
                j = self._non_member(len(ind))
            finally:
                mask[ind.members] = False
            if j is not None:
                ind.members = _frozen(np.append(ind.members, j))
        elif not grow and len(ind) > 1:
            ind.members = _frozen(np.delete(ind.members, int(self.rng.integers(len(ind)))))


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
        pop.append(_Subset(idx))  # copied into a new array
    if len(pop) > population:
        raise ValueError(f"initial has {len(pop)} subsets but population is {population}")
    pop.extend(ops.random_subset(budget) for _ in range(population - len(pop)))
    return pop


def _assign(evaluate, individuals: Sequence[_Subset]) -> None:
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
    evaluation: str = "incremental",
) -> tuple[np.ndarray, list[float]]:
    """Genetic search (DEAP) for the subset of at most ``budget`` candidates with the best fitness.

    See the module docstring for the fitness functions, the operators and the evaluation.

    Args:
        scores: per-sample gradient norms ``(N,)`` for ``"sum_of_norms"``, or gradient sketches
            ``(N, d)`` for ``"norm_of_sum"`` (numpy or torch; float32 or float16 kept as they are).
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
        evaluation: ``"incremental"`` (default; sums only the rows an offspring changed,
            :class:`IncrementalFitness`; for ``"sum_of_norms"`` the same as ``"sparse"``),
            ``"sparse"`` (sums over all members) or ``"dense"`` (the membership matrix product,
            the reference); the same values to float32 rounding.

    Returns:
        ``(selected, history)``: the best subset as sorted int64 indices, and the best fitness of
        the initial population and of every generation (``generations + 1`` floats).
    """
    arr, norms = _scores_and_norms(scores, fitness)
    _validate_ga(budget, arr.shape[0], lam, population, generations, cx_prob, mut_prob, tournament_size, elite,
                 resize_prob, seed)
    check_number(guided, "guided", 0.0, 1.0)
    evaluate = _evaluator(arr, fitness, float(lam), evaluation)
    ops = _Operators(arr.shape[0], budget, float(resize_prob), np.random.default_rng(seed), norms,
                     float(guided))
    toolbox = base.Toolbox()
    toolbox.register("mate", ops.mate)
    toolbox.register("mutate", ops.mutate)
    toolbox.register("clone", _clone)

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
    return np.sort(best.members), [float(h) for h in history]


# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Selected:
    """What a selector chose: pool positions (sorted int64) and the search's best fitness per generation."""

    positions: np.ndarray
    history: list[float]


class Selector:
    """Chooses at most ``budget`` pool positions from the backdoor-gradient scores.

    ``fitness`` and ``lam`` say how the choice is scored; the selection callback scores its own
    choice, a random subset and the top-k subset with them, so that the three can be compared
    whatever the selector.

    Args:
        fitness: ``"norm_of_sum"`` (needs sketches) or ``"sum_of_norms"``.
        lam: size penalty per selected sample.
    """

    name = "selector"

    def __init__(self, fitness: Fitness = "norm_of_sum", lam: float = 0.0):
        check_choice(fitness, "fitness", FITNESSES)
        check_number(lam, "lam", 0.0)
        self.fitness, self.lam = fitness, float(lam)

    @property
    def needs_sketches(self) -> bool:
        """Whether the fitness reads gradient sketches (the scorer must compute them)."""
        return self.fitness == "norm_of_sum"

    def scores(self, norms: Any, sketches: Any) -> Any:
        """The array the fitness reads: sketches for ``"norm_of_sum"``, else norms."""
        if self.needs_sketches and sketches is None:
            raise ValueError(f"fitness='norm_of_sum' needs gradient sketches, but the scorer computed none "
                             f"(sketch_dim=None); give the scorer a sketch_dim or use fitness='sum_of_norms' "
                             f"({type(self).__name__})")
        return sketches if self.needs_sketches else norms

    def fitness_of(self, positions: Sequence[int], norms: Any, sketches: Any) -> float:
        """The fitness of one subset of pool positions."""
        return selection_fitness(list(positions), self.scores(norms, sketches), self.fitness, self.lam)

    def select(self, norms: Any, sketches: Any, budget: int, seed: int) -> Selected:
        """Choose at most ``budget`` positions of the pool.

        Args:
            norms: per-sample gradient norms ``(N,)`` in pool order.
            sketches: per-sample gradient sketches ``(N, d)`` or ``None``.
            budget: the largest subset allowed.
            seed: seed of this choice (the callback derives it from its seed and the epoch).
        """
        raise NotImplementedError(f"{type(self).__name__}.select")


class GeneticSelector(Selector):
    """BadSR's genetic search (:func:`genetic_select`, DEAP) as a selector.

    Args:
        fitness: ``"norm_of_sum"`` (default) or ``"sum_of_norms"`` (see the module docstring).
        lam: size penalty per selected sample (the paper's lambda).
        population: individuals per generation.
        generations: generations after the initial population.
        cx_prob: crossover probability of an offspring pair.
        mut_prob: mutation probability of an offspring.
        tournament_size: individuals per selection tournament.
        elite: best individuals copied unchanged to the next generation.
        resize_prob: probability that a mutation adds or drops a member instead of swapping.
        guided: probability that a new member is drawn in proportion to its gradient norm.
        seed_with_topk: put the top-k subset into the initial population; with elitism the
            result is then at least as fit as top-k *by construction*.
        evaluation: ``"incremental"`` (default), ``"sparse"`` or ``"dense"`` (the reference; see
            :func:`genetic_select`).
    """

    name = "genetic"

    def __init__(
        self,
        fitness: Fitness = "norm_of_sum",
        lam: float = 0.0,
        population: int = 50,
        generations: int = 100,
        cx_prob: float = 0.7,
        mut_prob: float = 0.3,
        tournament_size: int = 3,
        elite: int = 1,
        resize_prob: float = 0.2,
        guided: float = 0.5,
        seed_with_topk: bool = True,
        evaluation: Evaluation = "incremental",
    ):
        super().__init__(fitness, lam)
        _validate_ga(1, 1, lam, population, generations, cx_prob, mut_prob, tournament_size, elite, resize_prob, 0)
        check_number(guided, "guided", 0.0, 1.0)
        check_bool(seed_with_topk, "seed_with_topk")
        check_choice(evaluation, "evaluation", EVALUATIONS)
        self.ga_kwargs = dict(population=population, generations=generations, cx_prob=cx_prob, mut_prob=mut_prob,
                              tournament_size=tournament_size, elite=elite, resize_prob=resize_prob, guided=guided)
        self.seed_with_topk, self.evaluation = seed_with_topk, evaluation

    def select(self, norms: Any, sketches: Any, budget: int, seed: int) -> Selected:
        initial = [topk_select(norms, budget).tolist()] if self.seed_with_topk else None
        chosen, history = genetic_select(self.scores(norms, sketches), budget, fitness=self.fitness, lam=self.lam,
                                         seed=seed, initial=initial, evaluation=self.evaluation, **self.ga_kwargs)
        return Selected(chosen, history)


class RandomSelector(Selector):
    """A uniformly random subset of the budget (:func:`random_select`): the baseline.

    Args:
        fitness: how the choice is scored for the comparison (it does not steer the choice).
        lam: size penalty of that score.
    """

    name = "random"

    def select(self, norms: Any, sketches: Any, budget: int, seed: int) -> Selected:
        positions = random_select(len(norms), budget, seed=seed)
        return Selected(positions, [self.fitness_of(positions.tolist(), norms, sketches)])


class TopKSelector(Selector):
    """The ``budget`` largest backdoor-gradient norms (:func:`topk_select`): BadSR's ranking alone.

    Args:
        fitness: how the choice is scored for the comparison (it does not steer the choice).
        lam: size penalty of that score.
    """

    name = "topk"

    def select(self, norms: Any, sketches: Any, budget: int, seed: int) -> Selected:
        positions = topk_select(norms, budget)
        return Selected(positions, [self.fitness_of(positions.tolist(), norms, sketches)])
