"""The genetic search's individuals and their fitness at pool scale (see :mod:`lit_sr.poison.selection`).

An individual (:class:`_Subset`) is a set of distinct pool indices held as a read-only int64
array with a DEAP fitness: operators replace the array, never edit it, so clones, evaluated
states and crossover records share it without copies.

**Fitness at pool scale.** A population's fitness is computed by gathering each individual's
members: ``torch.nn.functional.embedding_bag(mode="sum")`` sums the chosen sketch rows of every
individual without materialising them (``"norm_of_sum"``), and ``numpy.add.reduceat`` sums the
chosen norms (``"sum_of_norms"``). For sketches the default evaluation is incremental
(:class:`IncrementalFitness`): an offspring's sum is its parent's plus the rows it gained minus
those it lost, and a crossover pair costs one such sum, not two. Work and memory grow with the
members (``population x budget`` rows), not with ``population x pool`` as a dense
membership-matrix product would (:func:`dense_fitness`, kept as the reference the tests and the
benchmark compare against).
Sketches stay in the dtype they come in (float32 or float16; float64 input is brought down to
float32), never copied to float64 or float32; sums accumulate in float32 or wider whatever the
table's dtype. A float16 table (half the memory: the 100,000 x 2,048 sketches of the benchmark are
0.38 GiB instead of 0.76) is summed by :func:`_bag_sums` in pieces of at most ``_HALF_BLOCK``
rows, each gathered and summed in float32, so its sums are not rounded to float16 and equal those
of the same entries held in float32 (to float32 rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from deap import base

from lit_sr.validation import check_choice

Fitness = Literal["norm_of_sum", "sum_of_norms"]
Evaluation = Literal["incremental", "sparse", "dense"]
FITNESSES: tuple[str, ...] = ("norm_of_sum", "sum_of_norms")
EVALUATIONS: tuple[str, ...] = ("incremental", "sparse", "dense")
_CHECK_ROWS = 8192  # rows per block of the finiteness check: bounds its temporary memory
# rows per piece of a float16 table's sums: 256 x 2,048 float16 = 1 MiB gathered at a time stays in
# cache (1,024 and 4,096 rows were 1.5x and 4.9x slower per row, measured on 100,000 x 2,048)
_HALF_BLOCK = 256


# --------------------------------------------------------------------------- individuals


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


def _frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` marked read-only, so that :class:`_Subset` takes it without a copy."""
    arr.flags.writeable = False
    return arr


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
    """``||row||_2`` of every row, float64 ``(N,)``, without a squared or widened copy of the table.

    In blocks of ``_CHECK_ROWS`` rows: ``vector_norm(dtype=float32)`` of a float16 table widens
    all of its input first (a float32 copy of the whole table: 0.76 GiB at 100,000 x 2,048,
    measured as the peak RSS of ``benchmarks/backdoor_gradients.py``).
    """
    if arr.ndim == 1:
        return arr
    table, out = torch.from_numpy(arr), np.empty(arr.shape[0], dtype=np.float64)
    for lo in range(0, arr.shape[0], _CHECK_ROWS):
        block = table[lo : lo + _CHECK_ROWS]
        out[lo : lo + len(block)] = torch.linalg.vector_norm(block, dim=1, dtype=torch.float32).double().numpy()
    return out


def _member_array(subset: Any) -> np.ndarray:
    return subset.members if isinstance(subset, _Subset) else np.asarray(subset, dtype=np.int64).reshape(-1)


def _member_arrays(subsets: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """Each subset's members as an int64 array, and the sizes."""
    arrays = [_member_array(s) for s in subsets]
    return arrays, np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))


def _members(subsets: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat member indices, the offset of each subset in them, and the sizes."""
    arrays, sizes = _member_arrays(subsets)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(subsets), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return flat, offsets, sizes


def _bag_sums(table: torch.Tensor, index: np.ndarray, offsets: np.ndarray,
              weights: np.ndarray | None = None) -> torch.Tensor:
    """``sums[b] = sum_k weights[k] * table[index[k]]`` over each bag ``b`` (bag ``b`` starts at ``offsets[b]``).

    A float32 table: one ``embedding_bag`` call, float32 sums. A float16 one: ``embedding_bag``
    would round its output to float16, so each bag is cut into pieces of at most ``_HALF_BLOCK``
    rows; a piece's rows are gathered (float16) and summed in float32 (``sum(dtype=float32)``
    widens as it reads; times the weight where the piece has one), and the pieces are added in
    float64: float64 sums, never a float32 copy of the table.
    """
    if table.dtype != torch.float16:
        return F.embedding_bag(torch.from_numpy(index), table, torch.from_numpy(offsets), mode="sum",
                               per_sample_weights=None if weights is None else torch.from_numpy(weights).to(table.dtype))
    total = len(index)
    out = torch.zeros(len(offsets), table.shape[1], dtype=torch.float64)
    if total == 0:
        return out
    starts = np.union1d(offsets[offsets < total], np.arange(0, total, _HALF_BLOCK))  # bags cut into blocks
    ends = np.append(starts[1:], total)
    bags = np.searchsorted(offsets, starts, side="right") - 1
    idx = torch.from_numpy(index)
    if weights is None:
        for lo, hi, bag in zip(starts.tolist(), ends.tolist(), bags.tolist()):
            out[bag] += table.index_select(0, idx[lo:hi]).sum(0, dtype=torch.float32)
        return out
    # a piece of one weight (the incremental evaluation's +1 run, then its -1 run) is a sum times it;
    # a piece of mixed weights is widened and multiplied (no faster, but as exact)
    w = weights.astype(np.float32)
    uniform = np.minimum.reduceat(w, starts) == np.maximum.reduceat(w, starts)
    for lo, hi, bag, one in zip(starts.tolist(), ends.tolist(), bags.tolist(), uniform.tolist()):
        rows = table.index_select(0, idx[lo:hi])
        if one:
            out[bag].add_(rows.sum(0, dtype=torch.float32), alpha=float(w[lo]))
        else:
            out[bag] += torch.from_numpy(w[lo:hi]) @ rows.float()
    return out


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
            sums = _bag_sums(self._table, flat, offsets)
            totals = torch.linalg.vector_norm(sums.float(), dim=1).double().numpy()
        return totals - self.lam * sizes


def dense_fitness(subsets: Sequence[Sequence[int]], scores: np.ndarray, fitness: str, lam: float) -> np.ndarray:
    """The reference evaluation: a dense ``(len(subsets), N)`` membership matrix times the scores.

    What :class:`SparseFitness` replaces; memory and work grow with the whole pool per individual.
    A float16 table is multiplied in float32 (blocks of rows, added in float64), not in float16:
    numpy's float16 product would round every sum to float16.
    """
    flat, _, sizes = _members(subsets)
    wide = np.float32 if scores.dtype == np.float16 else scores.dtype  # numpy would round float16 products
    membership = np.zeros((len(subsets), scores.shape[0]), dtype=wide)
    membership[np.repeat(np.arange(len(subsets)), sizes), flat] = 1
    if scores.dtype == np.float16:  # float32 products of row blocks, added in float64: no float32 table copy
        total = sum((membership[:, lo : lo + _CHECK_ROWS] @ scores[lo : lo + _CHECK_ROWS].astype(np.float32)
                     ).astype(np.float64) for lo in range(0, scores.shape[0], _CHECK_ROWS))
    else:
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
        arrays, sizes = _member_arrays(subsets)
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
        return list(_bag_sums(self._table, index, offsets, weights).double().unbind(0))


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
