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

**Fitness at pool scale.** A population's fitness is computed by gathering each individual's
members: ``torch.nn.functional.embedding_bag(mode="sum")`` sums the chosen sketch rows of every
individual without materialising them (``"norm_of_sum"``), and ``numpy.add.reduceat`` sums the
chosen norms (``"sum_of_norms"``). For sketches the default evaluation is incremental
(:class:`IncrementalFitness`): an offspring's sum is its parent's plus the rows it gained minus
those it lost, and a crossover pair costs one such sum, not two. Work and memory grow with the
members (``population x budget`` rows), not with ``population x pool`` as a dense
membership-matrix product would
(:func:`dense_fitness`, kept as the reference the tests and the benchmark compare against).
Sketches stay in the dtype they come in (float32 or float16; float64 input is brought down to
float32), never copied to float64; sums accumulate in float32 (a float16 table's sums are rounded
to float16 on output, the precision its entries already have).

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
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from deap import algorithms, base, tools

from lit_sr.validation import check_bool, check_choice, check_number

Fitness = Literal["norm_of_sum", "sum_of_norms"]
Evaluation = Literal["incremental", "sparse", "dense"]
FITNESSES: tuple[str, ...] = ("norm_of_sum", "sum_of_norms")
EVALUATIONS: tuple[str, ...] = ("incremental", "sparse", "dense")
_CHECK_ROWS = 8192  # rows per block of the finiteness check: bounds its temporary memory


class _SubsetFitness(base.Fitness):
    weights = (1.0,)


class _Subset:
    """A DEAP individual: distinct pool indices (``members``, a read-only int64 array) and a fitness.

    Held as an array, not a list of ints: at a 10,000-member budget, the list <-> array conversions
    of the operators and the evaluation cost more than the search itself. ``members`` is never
    written in place (the operators build a new array and assign it), so clones, the evaluated
    state and a crossover's record can share one array. DEAP's algorithms only read ``fitness``;
    ``len``, iteration and indexing are there for the callers and tests that treat an individual as
    a sequence of indices.

    For the incremental evaluation it also carries where it came from: ``ref`` = (members, sum of
    their sketch rows) of the last evaluated state it was cloned from, and after a crossover
    ``pair`` = (the pair's shared record, its slot) (see :class:`IncrementalFitness`).
    """

    __slots__ = ("_members", "fitness", "ref", "pair")

    def __init__(self, members: Any = ()):
        self.members = members
        self.fitness = _SubsetFitness()
        self.ref: tuple[np.ndarray, torch.Tensor] | None = None
        self.pair: tuple[_CrossRecord, int] | None = None

    @property
    def members(self) -> np.ndarray:
        return self._members

    @members.setter
    def members(self, value: Any) -> None:
        arr = np.array(value, dtype=np.int64, copy=not _is_frozen_int64(value)).reshape(-1)
        arr.flags.writeable = False  # shared by clones and records: never modified, only replaced
        self._members = arr

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self):
        return iter(self._members.tolist())

    def __getitem__(self, i):
        return self._members[i]

    def __repr__(self) -> str:
        return f"_Subset({self._members.tolist()!r})"


def _is_frozen_int64(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.int64 and not value.flags.writeable


@dataclass
class _CrossRecord:
    """One crossover: the parents' evaluated states and the children's members right after it."""

    parent_a: tuple[np.ndarray, torch.Tensor]
    parent_b: tuple[np.ndarray, torch.Tensor]
    child_a: np.ndarray
    child_b: np.ndarray


def _clone(ind: _Subset) -> _Subset:
    """What DEAP's ``toolbox.clone`` (``deepcopy``) does, without copying anything that is never modified.

    The members array and the evaluated state (``ref``) are shared, not copied: they are read-only
    and only ever replaced.
    """
    out = _Subset(ind.members)
    if ind.fitness.valid:
        out.fitness.values = ind.fitness.values
    out.ref = ind.ref
    return out


# --------------------------------------------------------------------------- scores


def _to_array(scores: Any) -> np.ndarray:
    """A numpy view of ``scores`` (no copy for CPU float32/float16 tensors and arrays)."""
    if isinstance(scores, torch.Tensor):
        t = scores.detach()
        if t.dtype not in (torch.float32, torch.float16, torch.float64):
            t = t.float()  # bfloat16 and integers: numpy has no bfloat16
        return t.cpu().numpy()
    return np.asarray(scores)


def _check_finite(arr: np.ndarray, name: str) -> None:
    for start in range(0, arr.shape[0], _CHECK_ROWS):  # blockwise: no full-size boolean temporary
        if not np.isfinite(arr[start : start + _CHECK_ROWS]).all():
            raise ValueError(f"{name} must be finite")


def _check_scores(scores: Any, fitness: str) -> np.ndarray:
    """Norms ``(N,)`` as float64, or sketches ``(N, d)`` as float32/float16 (never a float64 copy)."""
    return _scores_and_norms(scores, fitness)[0]


def _scores_and_norms(scores: Any, fitness: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_check_scores`'s array and its rows' norms (float64 ``(N,)``; the norms themselves for ``(N,)``).

    One pass over a sketch table does both: a row with a NaN or an infinite entry has a NaN or
    infinite norm, so only when a norm is not finite are the entries checked (for the error, or
    to accept finite entries whose norm overflowed).
    """
    check_choice(fitness, "fitness", FITNESSES)
    arr = _to_array(scores)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"scores must be numbers; got dtype {arr.dtype}")
    if fitness == "sum_of_norms":
        if arr.ndim != 1:
            raise ValueError(f"fitness='sum_of_norms' needs per-sample norms of shape (N,); got shape {arr.shape}")
        arr = arr.astype(np.float64)  # (N,) only: cheap, and sums of many norms keep their digits
    else:
        if arr.ndim != 2:
            raise ValueError(f"fitness='norm_of_sum' needs sketches of shape (N, sketch_dim); got shape {arr.shape}")
        if arr.dtype not in (np.float32, np.float16):
            arr = arr.astype(np.float32)
        arr = np.ascontiguousarray(arr)
    if arr.shape[0] == 0:
        raise ValueError("scores is empty: the candidate pool has no sample")
    norms = _row_norms(arr)
    if not np.isfinite(norms).all():
        _check_finite(arr, "scores")
    if fitness == "sum_of_norms" and np.any(arr < 0):
        raise ValueError("norms must be non-negative (they are gradient norms)")
    return arr, norms


def _row_norms(arr: np.ndarray) -> np.ndarray:
    """``||row||_2`` of every row, float64 ``(N,)``, without a squared copy of the table."""
    if arr.ndim == 1:
        return arr
    return torch.linalg.vector_norm(torch.from_numpy(arr), dim=1, dtype=torch.float32).double().numpy()


def _member_array(subset: Any) -> np.ndarray:
    return subset.members if isinstance(subset, _Subset) else np.asarray(subset, dtype=np.int64).reshape(-1)


def _members(subsets: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat member indices, the offset of each subset in them, and the sizes."""
    arrays = [_member_array(s) for s in subsets]
    sizes = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(subsets), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return flat, offsets, sizes


class SparseFitness:
    """Fitness of many subsets at once by summing their members' rows (see the module docstring).

    Args:
        scores: norms ``(N,)`` (``"sum_of_norms"``) or sketches ``(N, d)`` (``"norm_of_sum"``), as
            returned by ``_check_scores``.
        fitness: ``"norm_of_sum"`` or ``"sum_of_norms"``.
        lam: size penalty per member.
    """

    def __init__(self, scores: np.ndarray, fitness: str, lam: float):
        self.scores, self.fitness, self.lam = scores, fitness, float(lam)
        self._table = torch.from_numpy(scores) if scores.ndim == 2 else None  # shares the memory

    def __call__(self, subsets: Sequence[Sequence[int]]) -> np.ndarray:
        flat, offsets, sizes = _members(subsets)
        if self._table is None:
            totals = np.add.reduceat(self.scores[flat], offsets)
        else:
            sums = F.embedding_bag(torch.from_numpy(flat), self._table, torch.from_numpy(offsets), mode="sum")
            totals = torch.linalg.vector_norm(sums.float(), dim=1).double().numpy()
        return totals - self.lam * sizes


def dense_fitness(subsets: Sequence[Sequence[int]], scores: np.ndarray, fitness: str, lam: float) -> np.ndarray:
    """The reference evaluation: a dense ``(len(subsets), N)`` membership matrix times the scores.

    What :class:`SparseFitness` replaces; memory and work grow with the whole pool per individual.
    """
    flat, _, sizes = _members(subsets)
    membership = np.zeros((len(subsets), scores.shape[0]), dtype=scores.dtype)
    membership[np.repeat(np.arange(len(subsets)), sizes), flat] = 1
    total = membership @ scores
    value = total if fitness == "sum_of_norms" else np.linalg.norm(total.astype(np.float32), axis=1)
    return value.astype(np.float64) - lam * sizes


def _positional_difference(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(added, removed) with ``sum(cur) = sum(ref) + sum(added) - sum(removed)``, position by position.

    An identity of sums whatever the arrays hold; short when ``cur`` is ``ref`` with a few
    positions changed, one member appended or one deleted (what a mutation does). None when the
    lengths differ by more than one.
    """
    if len(cur) == len(ref):
        changed = ref != cur
        return cur[changed], ref[changed]
    if len(cur) == len(ref) + 1:  # one member appended
        changed = ref != cur[:-1]
        return np.concatenate([cur[:-1][changed], cur[-1:]]), ref[changed]
    if len(cur) == len(ref) - 1 and len(cur):  # one member deleted: at the first position where they differ
        differs = ref[:-1] != cur
        k = int(np.argmax(differs)) if differs.any() else len(cur)
        kept = np.delete(ref, k)
        changed = kept != cur
        return cur[changed], np.concatenate([kept[changed], ref[k : k + 1]])
    return None


class IncrementalFitness(SparseFitness):
    """:class:`SparseFitness` for ``"norm_of_sum"`` that sums only what changed since a known state.

    An offspring's sketch sum is its parent's (kept with the parent) plus the rows it gained minus
    the rows it lost: a mutation swaps a member or two, so it costs a few rows instead of ``|S|``.
    A crossover's two children together hold exactly their parents' members, so the second child's
    sum is ``sum(parent a) + sum(parent b) - sum(child a)``: the pair costs one difference (or one
    full sum, whichever has fewer rows) instead of two full sums. All of a generation's sums are
    one ``embedding_bag`` call with +1/-1 weights. Sums are kept in float64, so the float32 sums of
    the differences do not drift over generations: the fitness equals the full (and the dense)
    evaluation to float32 rounding, which the tests check against :func:`dense_fitness`.
    """

    def __init__(self, scores: np.ndarray, fitness: str, lam: float):
        super().__init__(scores, fitness, lam)
        if self._table is None:
            raise ValueError("the incremental evaluation is for sketches (fitness='norm_of_sum')")
        self._mask = np.zeros(scores.shape[0], dtype=bool)  # scratch membership mask, always left all False
        self._empty = np.zeros(0, dtype=np.int64)

    def _difference(self, ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows (indices, +1/-1 weights) taking ``sum(ref)`` to ``sum(cur)``; None when ``cur`` alone is fewer.

        A mutation changes a few positions of its parent's array (or appends or deletes one
        member), so comparing the arrays position by position finds its rows in one vectorised
        pass; only when that finds many (after a crossover) are the two member sets compared.
        """
        moved = _positional_difference(ref, cur)
        if moved is None or len(moved[0]) + len(moved[1]) > len(cur) // 8:
            mask = self._mask
            mask[ref] = True
            added = cur[~mask[cur]]
            mask[ref] = False
            mask[cur] = True
            removed = ref[~mask[ref]]
            mask[cur] = False
            moved = added, removed
        added, removed = moved
        if len(added) + len(removed) >= len(cur):
            return None
        weights = np.concatenate([np.ones(len(added), np.float32), -np.ones(len(removed), np.float32)])
        return np.concatenate([added, removed]), weights

    def _bag(self, ref: np.ndarray | None, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(indices, weights, is a difference): the cheaper of the difference from ``ref`` and the full sum."""
        diff = None if ref is None else self._difference(ref, cur)
        if diff is None:
            return cur, np.ones(len(cur), np.float32), False
        return diff[0], diff[1], True

    def __call__(self, subsets: Sequence[Sequence[int]]) -> np.ndarray:
        arrays = [_member_array(s) for s in subsets]
        sizes = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        bags, plan = [], []
        crossings: dict[int, tuple[int, bool]] = {}  # id(_CrossRecord) -> (bag of its child a, is a difference)
        for ind, cur in zip(subsets, arrays):
            pair = getattr(ind, "pair", None)
            if pair is not None:
                record, slot = pair
                if id(record) not in crossings:
                    idx, w, diff = self._bag(record.parent_a[0], record.child_a)
                    crossings[id(record)] = (len(bags), diff)
                    bags.append((idx, w))
                idx, w, diff = self._bag(record.child_a if slot == 0 else record.child_b, cur)
                plan.append((len(bags), diff, record, slot))
            else:
                ref = getattr(ind, "ref", None)
                idx, w, diff = self._bag(None if ref is None else ref[0], cur)
                plan.append((len(bags), diff, ref[1] if diff else None, None))
            bags.append((idx, w))
        sums = self._sum_bags(bags)
        out = np.empty(len(subsets), dtype=np.float64)
        for k, (ind, (own, diff, origin, slot)) in enumerate(zip(subsets, plan)):
            if slot is not None:  # after a crossover: the state right after it, from the pair's one sum
                record = origin
                first, first_diff = crossings[id(record)]
                child_a = sums[first] + record.parent_a[1] if first_diff else sums[first]
                origin = child_a if slot == 0 else record.parent_a[1] + record.parent_b[1] - child_a
            total = sums[own] + origin if diff else sums[own]
            if isinstance(ind, _Subset):
                ind.ref, ind.pair = (ind.members, total), None
            out[k] = float(torch.linalg.vector_norm(total))
        # float32 values like the other evaluations; the float64 sums make them the exact sum's, rounded
        out = out.astype(np.float32).astype(np.float64)
        return out - self.lam * sizes

    def _sum_bags(self, bags) -> list[torch.Tensor]:
        """Each bag's weighted row sum in one ``embedding_bag`` call, as float64 vectors."""
        sizes = np.fromiter((len(b[0]) for b in bags), dtype=np.int64, count=len(bags))
        offsets = np.zeros(len(bags), dtype=np.int64)
        np.cumsum(sizes[:-1], out=offsets[1:])
        index = np.concatenate([b[0] for b in bags]) if bags else self._empty
        weights = np.concatenate([b[1] for b in bags]) if bags else np.zeros(0, np.float32)
        table = self._table
        sums = F.embedding_bag(torch.from_numpy(index), table, torch.from_numpy(offsets), mode="sum",
                               per_sample_weights=torch.from_numpy(weights).to(table.dtype))
        return list(sums.double().unbind(0))


class _DenseFitness:
    def __init__(self, scores: np.ndarray, fitness: str, lam: float):
        self.scores, self.fitness, self.lam = scores, fitness, float(lam)

    def __call__(self, subsets: Sequence[Sequence[int]]) -> np.ndarray:
        return dense_fitness(subsets, self.scores, self.fitness, self.lam)


def _evaluator(scores: np.ndarray, fitness: str, lam: float, evaluation: str):
    check_choice(evaluation, "evaluation", EVALUATIONS)
    if evaluation == "incremental" and scores.ndim == 2:
        return IncrementalFitness(scores, fitness, lam)
    return (_DenseFitness if evaluation == "dense" else SparseFitness)(scores, fitness, lam)


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


def _frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` marked read-only, so that :class:`_Subset` takes it without a copy."""
    arr.flags.writeable = False
    return arr


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
