"""Selection of poisoned samples: the DEAP genetic search keeps its budget, is reproducible, finds
the known optimum of the separable fitness, and beats top-k when gradients cancel."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lit_sr.poison import genetic_select, random_select, selection_fitness, topk_select
from lit_sr.poison.selection import _Operators, _Subset


def _norms(n=30, seed=0):
    return np.random.default_rng(seed).permutation(np.linspace(0.1, 3.0, n))  # distinct values


def test_sum_of_norms_reaches_the_exact_optimum_topk():
    norms = _norms()
    selected, history = genetic_select(norms, budget=5, fitness="sum_of_norms", population=30, generations=100)
    assert selected.tolist() == topk_select(norms, 5).tolist()
    assert history[-1] == pytest.approx(np.sort(norms)[-5:].sum())
    assert len(history) == 101 and all(b >= a for a, b in zip(history, history[1:])), "elitism: never worse"


def test_size_penalty_can_make_smaller_sets_optimal():
    norms = np.array([5.0, 4.0, 3.0, 0.5, 0.4, 0.3, 0.2, 0.1] * 3)[:20]
    norms[8:] = np.linspace(0.05, 0.45, 12)  # only samples 0, 1, 2 exceed lam
    selected, history = genetic_select(
        norms, budget=6, fitness="sum_of_norms", lam=1.0, population=30, generations=60, seed=1
    )
    assert selected.tolist() == [0, 1, 2]
    assert history[-1] == pytest.approx(12.0 - 3.0)


def test_norm_of_sum_prefers_aligned_gradients_over_large_cancelling_ones():
    sketches = np.zeros((20, 4))
    sketches[[0, 1], 0] = 10.0  # two large gradients pointing one way ...
    sketches[[2, 3], 0] = -10.0  # ... and two pointing the other way
    sketches[4:, 1] = 1.0  # sixteen small aligned ones
    norms = np.linalg.norm(sketches, axis=1)
    topk = topk_select(norms, 4)
    assert topk.tolist() == [0, 1, 2, 3]
    selected, _ = genetic_select(sketches, budget=4, population=30, generations=40, seed=0)
    ga = selection_fitness(selected, sketches)
    assert selection_fitness(topk, sketches) == pytest.approx(0.0)
    assert ga >= np.hypot(20.0, 2.0) - 1e-6, "both +10 gradients and two aligned small ones"
    assert ga > selection_fitness(random_select(20, 4, seed=0), sketches)


@pytest.mark.parametrize("seed", range(4))
def test_never_exceeds_budget(seed):
    sketches = np.random.default_rng(seed).normal(size=(40, 8))
    selected, _ = genetic_select(sketches, budget=6, population=12, generations=15, resize_prob=0.9, seed=seed)
    assert 1 <= len(selected) <= 6 and len(set(selected.tolist())) == len(selected)
    assert selected.min() >= 0 and selected.max() < 40


def test_operators_keep_budget_and_distinct_members():
    rng = np.random.default_rng(0)
    ops = _Operators(n=15, budget=5, resize_prob=0.8, rng=rng)
    a, b = ops.random_subset(5), _Subset([0, 1, 2])
    for _ in range(300):
        a, b = ops.mate(a, b)
        sizes = (len(a), len(b))
        (a,) = ops.mutate(a)
        (b,) = ops.mutate(b)
        for ind in (a, b):
            assert 1 <= len(ind) <= 5 and len(set(ind)) == len(ind) and all(0 <= i < 15 for i in ind)
        assert max(sizes) <= 5


def test_deterministic_and_leaves_global_random_alone():
    sketches = np.random.default_rng(3).normal(size=(50, 16))
    random.seed(123)
    expected_next = random.Random(123).random()
    first = genetic_select(sketches, budget=7, population=16, generations=10, seed=5)
    assert random.random() == expected_next, "the caller's random state is restored"
    second = genetic_select(sketches, budget=7, population=16, generations=10, seed=5)
    other = genetic_select(sketches, budget=7, population=16, generations=10, seed=6)
    assert first[0].tolist() == second[0].tolist() and first[1] == second[1]
    assert first[1] != other[1]


def test_initial_subsets_are_used():
    norms = _norms(200, seed=2)
    best = topk_select(norms, 10)
    selected, history = genetic_select(
        norms, budget=10, fitness="sum_of_norms", population=8, generations=0, initial=[best]
    )
    assert selected.tolist() == best.tolist() and len(history) == 1


def test_selection_fitness_formulas():
    sketches = np.arange(12, dtype=float).reshape(4, 3)
    norms = np.linalg.norm(sketches, axis=1)
    assert selection_fitness([1, 3], norms, "sum_of_norms", lam=0.5) == pytest.approx(norms[1] + norms[3] - 1.0)
    expected = np.linalg.norm(sketches[1] + sketches[3]) - 1.0
    assert selection_fitness([1, 3], sketches, "norm_of_sum", lam=0.5) == pytest.approx(expected, rel=1e-6)


def test_random_and_topk_select():
    picked = random_select(100, 10, seed=4)
    assert picked.tolist() == random_select(100, 10, seed=4).tolist() == sorted(set(picked.tolist()))
    assert len(picked) == 10 and picked.tolist() != random_select(100, 10, seed=5).tolist()
    assert topk_select(np.array([0.1, 5.0, 0.3, 4.0]), 2).tolist() == [1, 3]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: genetic_select(_norms(), budget=31, fitness="sum_of_norms"), "budget"),
        (lambda: genetic_select(_norms(), budget=0, fitness="sum_of_norms"), "budget"),
        (lambda: genetic_select(_norms(), budget=3), "sketches"),
        (lambda: genetic_select(np.ones((5, 2)), budget=3, fitness="sum_of_norms"), "norms"),
        (lambda: genetic_select(_norms(), budget=3, fitness="max"), "fitness"),
        (lambda: genetic_select(_norms(), budget=3, fitness="sum_of_norms", population=1), "population"),
        (lambda: genetic_select(_norms(), budget=3, fitness="sum_of_norms", tournament_size=99), "tournament_size"),
        (lambda: genetic_select(_norms(), budget=3, fitness="sum_of_norms", cx_prob=1.5), "cx_prob"),
        (lambda: genetic_select(_norms(), budget=3, fitness="sum_of_norms", lam=-1), "lam"),
        (lambda: genetic_select(np.array([1.0, np.nan]), budget=1, fitness="sum_of_norms"), "finite"),
        (lambda: genetic_select(np.array([1.0, -1.0]), budget=1, fitness="sum_of_norms"), "non-negative"),
        (lambda: genetic_select(_norms(), budget=3, fitness="sum_of_norms", guided=2.0), "guided"),
        (lambda: genetic_select(_norms(), budget=3, fitness="sum_of_norms", initial=[[0, 0]]), "initial"),
        (lambda: selection_fitness([0, 0], _norms(), "sum_of_norms"), "duplicates"),
        (lambda: random_select(5, 6), "budget"),
    ],
)
def test_bad_parameters_raise_naming_them(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# --------------------------------------------------------------------------- pool-scale evaluation
from lit_sr.poison import GeneticSelector, RandomSelector, TopKSelector  # noqa: E402
from lit_sr.poison.selection import SparseFitness, _check_scores, dense_fitness  # noqa: E402


def _population(n, size, count, seed):
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=int(rng.integers(1, size + 1)), replace=False).tolist() for _ in range(count)]


@pytest.mark.parametrize("fitness", ["norm_of_sum", "sum_of_norms"])
def test_sparse_fitness_equals_the_dense_membership_product(fitness):
    sketches = np.random.default_rng(0).standard_normal((3000, 96), dtype=np.float32)
    scores = sketches if fitness == "norm_of_sum" else np.linalg.norm(sketches, axis=1)
    arr = _check_scores(scores, fitness)
    subsets = _population(3000, 300, 40, seed=1)
    sparse = SparseFitness(arr, fitness, lam=0.01)(subsets)
    dense = dense_fitness(subsets, arr, fitness, lam=0.01)
    # exact reference in float64: both agree with it to float32 rounding
    exact = np.array([np.linalg.norm(sketches[s].astype(np.float64).sum(0)) if fitness == "norm_of_sum"
                      else arr[s].sum() for s in subsets]) - 0.01 * np.array([len(s) for s in subsets])
    np.testing.assert_allclose(sparse, dense, rtol=2e-6)
    np.testing.assert_allclose(sparse, exact, rtol=2e-6)


@pytest.mark.parametrize("fitness", ["norm_of_sum", "sum_of_norms"])
def test_sparse_and_dense_ga_make_the_same_choices(fitness):
    sketches = np.random.default_rng(4).standard_normal((400, 32), dtype=np.float32)
    scores = sketches if fitness == "norm_of_sum" else np.linalg.norm(sketches, axis=1)
    kwargs = dict(budget=40, fitness=fitness, population=16, generations=30, seed=3)
    sparse_sel, sparse_hist = genetic_select(scores, evaluation="sparse", **kwargs)
    dense_sel, dense_hist = genetic_select(scores, evaluation="dense", **kwargs)
    assert sparse_sel.tolist() == dense_sel.tolist()
    np.testing.assert_allclose(sparse_hist, dense_hist, rtol=2e-6)
    assert sparse_hist[-1] > sparse_hist[0], "the search improved on its initial population"


def _exact_fitness(subsets, scores, lam):
    """float64 sums and norms, rounded to float32: one value per member set, whatever the path to it."""
    table = scores.astype(np.float64)
    values = np.array([np.linalg.norm(table[list(s)].sum(0)) for s in subsets], dtype=np.float32)
    return values.astype(np.float64) - lam * np.array([len(s) for s in subsets])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_incremental_ga_equals_the_dense_evaluation(dtype, monkeypatch):
    # the default evaluation sums only what changed; every fitness it gives, in every generation, is the
    # dense membership product's (to float32 rounding)
    from lit_sr.poison import subset_fitness

    sketches = np.random.default_rng(5).standard_normal((500, 24), dtype=np.float32).astype(dtype)
    rtol = 1e-5  # float16 entries too: sums in float32 or wider, as the dense reference's
    checked = []
    original = subset_fitness.IncrementalFitness.__call__

    def checking(self, subsets):
        values = original(self, subsets)
        np.testing.assert_allclose(values, dense_fitness(subsets, self.scores, "norm_of_sum", self.lam), rtol=rtol)
        checked.append(len(subsets))
        return values

    monkeypatch.setattr(subset_fitness.IncrementalFitness, "__call__", checking)
    kwargs = dict(budget=60, population=16, generations=40, seed=2, lam=0.01)
    inc_sel, inc_hist = genetic_select(sketches, evaluation="incremental", **kwargs)
    # every generation went through the check (only the changed offspring are evaluated: ~10 of 15 a generation)
    assert len(checked) == 41 and sum(checked) > 16 + 40 * 6
    # no drift over the generations: the final best equals a fresh sum in float64
    exact = np.linalg.norm(sketches[inc_sel].astype(np.float64).sum(0)) - 0.01 * len(inc_sel)
    assert inc_hist[-1] == pytest.approx(exact, rel=rtol)
    if dtype == np.float32:
        # the same search as with an exact evaluation (float64 sums): the same choices and history. Not
        # compared with the dense run's choices: its BLAS float32 product gives one member set values that
        # differ in the last bit from row to row, so its order among equals is noise (measured here)
        monkeypatch.setattr(subset_fitness._DenseFitness, "__call__",
                            lambda self, subsets: _exact_fitness(subsets, self.scores, self.lam))
        exact_sel, exact_hist = genetic_select(sketches, evaluation="dense", **kwargs)
        assert inc_sel.tolist() == exact_sel.tolist()
        np.testing.assert_allclose(inc_hist, exact_hist, rtol=1e-6)


def test_incremental_evaluation_sums_fewer_rows_than_the_members(monkeypatch):
    # the point of it: after the first generation, offspring cost their changes, not their size
    from lit_sr.poison import subset_fitness

    sketches = np.random.default_rng(6).standard_normal((2000, 8), dtype=np.float32)
    rows = {"incremental": 0, "sparse": 0}
    real = subset_fitness.F.embedding_bag

    for evaluation in rows:
        def counting(index, *args, _ev=evaluation, **kw):
            rows[_ev] += int(index.numel())
            return real(index, *args, **kw)

        monkeypatch.setattr(subset_fitness.F, "embedding_bag", counting)
        genetic_select(sketches, 200, population=20, generations=30, seed=0, evaluation=evaluation)
    assert rows["incremental"] < 0.6 * rows["sparse"]


def test_sketches_stay_float32_or_float16_without_copies():
    f32 = np.random.default_rng(0).standard_normal((500, 64), dtype=np.float32)
    assert _check_scores(f32, "norm_of_sum") is f32 or np.shares_memory(_check_scores(f32, "norm_of_sum"), f32)
    f16 = f32.astype(np.float16)
    kept = _check_scores(f16, "norm_of_sum")
    assert kept.dtype == np.float16 and np.shares_memory(kept, f16)
    import torch

    t = torch.from_numpy(f32)
    assert np.shares_memory(_check_scores(t, "norm_of_sum"), f32), "a CPU float32 tensor is viewed, not copied"
    assert _check_scores(f32.astype(np.float64), "norm_of_sum").dtype == np.float32
    subset = list(range(0, 500, 7))
    exact = float(np.linalg.norm(f16[subset].astype(np.float64).sum(0)))
    assert selection_fitness(subset, f16) == pytest.approx(exact, rel=1e-6)  # float16 entries, float32+ sums


def _half_table_with_unroundable_sums():
    """float16 rows whose sums float16 cannot hold: 2,048 + 1 = 2,049 (float16 spacing there is 2)."""
    table = np.zeros((300, 4), dtype=np.float16)
    table[0, 0], table[1:, 0] = 2048, 1  # exact in float16
    table[:, 1] = np.float16(0.1)  # 0.0999755859375: 300 of them sum to 29.99267578125
    return table, table.astype(np.float64)


@pytest.mark.parametrize("evaluation", ["incremental", "sparse", "dense"])
def test_float16_sketch_sums_are_not_rounded_to_float16(evaluation):
    # a float16 table keeps half the memory, but its sums are float32 or wider: every evaluation gives
    # the norm of the exact sum of the float16 entries, which float16 itself could not represent
    from lit_sr.poison import subset_fitness

    table, wide = _half_table_with_unroundable_sums()
    subsets = [[0, 1], list(range(300)), [0] + list(range(2, 300, 3)), [5]]
    exact = np.array([np.linalg.norm(wide[s].sum(0)) for s in subsets], dtype=np.float32).astype(np.float64)
    assert np.float16(exact[0]) != exact[0], "the check needs a sum float16 cannot hold"
    values = subset_fitness._evaluator(table, "norm_of_sum", 0.0, evaluation)(subsets)
    np.testing.assert_allclose(values, exact, rtol=1e-6)
    assert selection_fitness([0, 1], table) == pytest.approx(exact[0], rel=1e-6)


@pytest.mark.parametrize("weighting", ["none", "runs", "mixed"])
def test_float16_bag_sums_match_float64_across_block_boundaries(weighting, monkeypatch):
    # the float16 path sums pieces of rows: bags that cross pieces, empty bags, and weights that are
    # none, +1 runs then -1 runs (the incremental evaluation's) or any mix
    from lit_sr.poison import subset_fitness

    monkeypatch.setattr(subset_fitness, "_HALF_BLOCK", 7)
    rng = np.random.default_rng(3)
    table = rng.standard_normal((200, 5)).astype(np.float16)
    sizes = np.array([0, 13, 1, 0, 40, 6, 0])
    index = rng.integers(0, 200, sizes.sum())
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    weights = {"none": None, "mixed": rng.choice([-1.0, 0.5, 1.0], sizes.sum()).astype(np.float32),
               "runs": np.concatenate([np.r_[np.ones(n - n // 3), -np.ones(n // 3)] for n in sizes]).astype(np.float32)
               }[weighting]
    got = subset_fitness._bag_sums(torch.from_numpy(table), index, offsets, weights)
    w = np.ones(sizes.sum()) if weights is None else weights.astype(np.float64)
    want = np.stack([(table[index[o:o + n]].astype(np.float64) * w[o:o + n, None]).sum(0)
                     for o, n in zip(offsets, sizes)])
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_row_norms_of_a_float16_table_are_taken_block_by_block(monkeypatch):
    # vector_norm(dtype=float32) widens its whole input first: on a whole float16 table that is a float32
    # copy of it (0.76 GiB at the benchmark's 100,000 x 2,048); blocks bound the copy to _CHECK_ROWS rows
    from lit_sr.poison import subset_fitness

    monkeypatch.setattr(subset_fitness, "_CHECK_ROWS", 64)
    rows_seen = []
    real = torch.linalg.vector_norm

    def recording(x, *args, **kwargs):
        rows_seen.append(x.shape[0])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(subset_fitness.torch.linalg, "vector_norm", recording)
    table = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float16)
    _, norms = subset_fitness._scores_and_norms(table, "norm_of_sum")
    assert max(rows_seen) <= 64 and sum(rows_seen) == 300
    np.testing.assert_allclose(norms, np.linalg.norm(table.astype(np.float64), axis=1), rtol=1e-6)


def test_float16_rounding_is_far_below_the_sketch_error():
    # why float16 sketches are safe: the fitness of a float16 sketch differs from the float32 one's by
    # ~1e-5 (relative), while the sketch itself is off from the exact norm of the summed gradients by
    # ~sqrt(2 / sketch_dim); and the float16 rounding reorders no pair of subsets the sketch ranks
    from lit_sr.poison import sketch_vectors

    rng = np.random.default_rng(0)
    n, dim, sketch_dim = 300, 8000, 256
    shared = rng.standard_normal((1, dim), dtype=np.float32)  # a common direction: sums do not all cancel
    grads = rng.standard_normal((n, dim), dtype=np.float32) + 0.05 * shared * rng.standard_normal((n, 1),
                                                                                                    dtype=np.float32)
    s32 = sketch_vectors(torch.from_numpy(grads), sketch_dim, seed=0).numpy()
    s16 = s32.astype(np.float16)
    subsets = [rng.choice(n, int(rng.integers(20, 80)), replace=False) for _ in range(40)]
    exact = np.array([np.linalg.norm(grads[s].astype(np.float64).sum(0)) for s in subsets])
    f32 = SparseFitness(s32, "norm_of_sum", 0.0)(subsets)
    f16 = SparseFitness(s16, "norm_of_sum", 0.0)(subsets)
    sketch_error = np.median(np.abs(f32 - exact) / exact)
    half_error = np.max(np.abs(f16 - f32) / f32)
    assert sketch_error > 0.01 and half_error < sketch_error / 100
    i, j = np.triu_indices(len(subsets), 1)
    assert np.array_equal(np.sign(f16[i] - f16[j]), np.sign(f32[i] - f32[j]))
    # and the search chooses the same subset from either table
    kwargs = dict(budget=30, population=12, generations=15, seed=1)
    assert sorted(genetic_select(s16, **kwargs)[0].tolist()) == sorted(genetic_select(s32, **kwargs)[0].tolist())


def test_selector_objects_match_the_functions():
    sketches = np.random.default_rng(5).standard_normal((60, 8), dtype=np.float32)
    norms = np.linalg.norm(sketches, axis=1)
    topk = TopKSelector().select(norms, sketches, 6, seed=0)
    assert topk.positions.tolist() == topk_select(norms, 6).tolist()
    assert topk.history == [pytest.approx(selection_fitness(topk.positions, sketches))]
    rand = RandomSelector(fitness="sum_of_norms").select(norms, None, 6, seed=9)
    assert rand.positions.tolist() == random_select(60, 6, seed=9).tolist()
    ga = GeneticSelector(population=10, generations=8).select(norms, sketches, 6, seed=2)
    assert ga.positions.tolist() == genetic_select(sketches, 6, population=10, generations=8, seed=2,
                                                   initial=[topk_select(norms, 6).tolist()])[0].tolist()
    assert selection_fitness(ga.positions, sketches) >= selection_fitness(topk.positions, sketches) - 1e-6
    with pytest.raises(ValueError, match="sketch_dim"):
        GeneticSelector().select(norms, None, 6, seed=0)
    with pytest.raises(ValueError, match="tournament_size"):
        GeneticSelector(population=4, tournament_size=5)


# --------------------------------------------------------------------------- array individuals
from lit_sr.poison.subset_fitness import _clone, _positional_difference  # noqa: E402


@pytest.mark.parametrize("n", [40, 4000])  # 4000: the sorting split (small subsets); 40: the pool-sized count
def test_crossover_split_is_the_sorted_set_intersection_and_difference(n):
    ops = _Operators(n=n, budget=20, resize_prob=0.0, rng=np.random.default_rng(0))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a = rng.choice(n, size=int(rng.integers(1, 21)), replace=False)
        b = rng.choice(n, size=int(rng.integers(1, 21)), replace=False)
        common, rest = ops._split(a, b)
        assert common.tolist() == sorted(set(a.tolist()) & set(b.tolist()))
        assert rest.tolist() == sorted(set(a.tolist()) ^ set(b.tolist()))
    assert not ops._counts.any(), "the scratch counts are left at zero"


def test_operators_never_write_a_shared_member_array():
    # clones, evaluated states and crossover records share members arrays: the operators must replace, not edit
    ops = _Operators(n=50, budget=8, resize_prob=0.5, rng=np.random.default_rng(1))
    a, b = ops.random_subset(8), ops.random_subset(6)
    snapshots = []
    for _ in range(200):
        saved = (_clone(a), a.members.copy(), _clone(b), b.members.copy())
        snapshots.append(saved)
        a, b = ops.mate(a, b)
        (a,) = ops.mutate(a)
        (b,) = ops.mutate(b)
    assert all(ca.members.tolist() == ma.tolist() and cb.members.tolist() == mb.tolist()
               for ca, ma, cb, mb in snapshots)
    assert not a.members.flags.writeable and not ops._mask.any()
    with pytest.raises(ValueError):
        a.members[0] = 1


@pytest.mark.parametrize("change", ["swap", "append", "delete", "shuffle"])
def test_positional_difference_is_an_identity_of_sums(change):
    rng = np.random.default_rng(7)
    table = rng.standard_normal((300, 5))
    ref = rng.choice(300, size=40, replace=False)
    outside = np.setdiff1d(np.arange(300), ref)
    cur = ref.copy()
    if change == "swap":
        cur[[3, 17]] = outside[:2]
    elif change == "append":
        cur = np.append(ref, outside[0])
    elif change == "delete":
        cur = np.delete(ref, 11)
    else:
        cur = rng.permutation(ref)
    added, removed = _positional_difference(ref, cur)
    np.testing.assert_allclose(table[ref].sum(0) + table[added].sum(0) - table[removed].sum(0), table[cur].sum(0))
    if change != "shuffle":  # what a mutation does costs its few rows, not the subset
        assert len(added) + len(removed) == {"swap": 4, "append": 1, "delete": 1}[change]
    assert _positional_difference(ref, ref[:-2]) is None
