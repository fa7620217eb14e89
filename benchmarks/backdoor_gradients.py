"""Per-sample backdoor gradients: torch.func (vmap over grad) against a one-backward-per-sample loop,
and the genetic selection's time on large candidate pools.

Part 1, in one run on the same model and inputs: :func:`lit_sr.poison.per_sample_grad_stats`
(``functional_call`` + ``vmap(grad)``, ``--chunk-size`` samples per call) against
:func:`lit_sr.poison.naive_per_sample_grad_stats` (one forward and backward per sample), both
computing the gradient norm and a ``--sketch-dim`` count sketch per sample, as the
``GradientScorer`` of ``callbacks.PoisonSelectionCallback`` does. The network is EDSR-baseline x4 (``build_arch("edsr")``: 64
features, 16 blocks, 1.5 M parameters, randomly initialised -- the speed does not depend on the
weights) on ``--lr-size`` 48 px LR inputs and 192 px targets (random tensors in [0, 1], seeded).
Reported: samples/s of each, the ratio, the largest relative difference of the norms (vmap vs
loop), and on CUDA the peak memory. With ``--bf16`` both run again under bfloat16 autocast, and
the bf16 norms are also compared with the fp32 ones (column "vs fp32"). One warm-up chunk /
sample per method is excluded, the best of ``--repeats`` timed runs counts, and CUDA is
synchronised around each.

Part 2: :func:`lit_sr.poison.genetic_select` (population 50, 100 generations: the defaults) on
random float32 sketches ``(N, --sketch-dim)`` for pools of 1,000, 10,000 and 100,000 candidates
and a budget of 10%, for both fitness functions, with the incremental evaluation (the default: an
offspring's sum is its parent's plus what changed), the sparse one (sums over all members) and,
as the naive baseline in the same run, the dense one (a ``(population, N)`` membership matrix
times the scores), skipped where its matrix would not fit in a quarter of the available memory.
Each search runs in its own process (spawned), so that its peak RSS (``ru_maxrss``) and CPU time
(``process_time``, the column "CPU s": what other jobs sharing the cores do not inflate) are its
own; the RSS of that process after its imports and before the sketches exist is reported too
(``import torch`` alone is ~0.7 GB here), as are the RSS with the sketches made, before the search
(column "before"), and the sketches' bytes. Also the fitness of top-k by norm and of a random
subset, for scale. ``--sketch-dtypes float32 float16`` runs each search on both storages of the
same draws (float16: the float32 sketches rounded, half the memory; sums still in float32 or
wider); a float16 row says whether it chose the float32 row's subset and how its choice's fitness
on the float32 sketches compares with the float32 choice's.

    python benchmarks/backdoor_gradients.py --device cuda --bf16 --out backdoor_gradients.json
    python benchmarks/backdoor_gradients.py --device cpu --quick   # tiny EDSR, few samples
    python benchmarks/backdoor_gradients.py --selection-only       # part 2 only
    python benchmarks/backdoor_gradients.py --selection-only --pools 100000 --evaluations incremental sparse \
        --sketch-dtypes float32 float16                             # issue 26's 100k search, both storages
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from datetime import date

import numpy as np
import torch
from common import machine_name, synchronise
from tqdm import tqdm

from lit_sr.archs import build_arch, count_parameters
from lit_sr.io import atomic_write
from lit_sr.poison import (
    genetic_select,
    naive_per_sample_grad_stats,
    per_sample_grad_stats,
    random_select,
    selection_fitness,
    topk_select,
)

QUICK_EDSR = {"num_feat": 16, "num_block": 2}


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, tuple, float | None]:
    """Best seconds of ``repeats`` calls of ``fn``, its last result, and the peak CUDA memory (GiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best, out = float("inf"), None
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        out = fn()
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return best, out, peak


def gradient_rows(args, model, lr, hr, device) -> list[dict]:
    """vmap against the loop, in fp32 and (``--bf16``) under bf16 autocast."""
    n_naive = min(args.naive_samples or args.samples, args.samples)
    rows = []
    modes = [("fp32", "none")] + ([("bf16", "bf16")] if args.bf16 else [])
    ref_fp32 = None
    for mode, autocast in tqdm(modes, desc="per-sample gradients"):
        common = dict(sketch_dim=args.sketch_dim, seed=0, autocast=autocast)
        # warm-up: one chunk / one sample (kernel selection, vmap tracing, allocator)
        per_sample_grad_stats(model, lr[: args.chunk_size], hr[: args.chunk_size], chunk_size=args.chunk_size,
                              **common)
        naive_per_sample_grad_stats(model, lr[:1], hr[:1], **common)
        vmap_fn = lambda c=common: per_sample_grad_stats(model, lr, hr, chunk_size=args.chunk_size, **c)  # noqa: E731
        loop_fn = lambda c=common: naive_per_sample_grad_stats(model, lr[:n_naive], hr[:n_naive], **c)  # noqa: E731
        t_vmap, (norms, _), mem_vmap = timed(vmap_fn, device, args.repeats)
        t_loop, (ref, _), mem_loop = timed(loop_fn, device, args.repeats)
        rel = ((norms[:n_naive] - ref).abs() / ref).max().item()
        row = {"mode": mode, "samples_vmap": args.samples, "samples_loop": n_naive,
               "vmap_samples_s": args.samples / t_vmap, "loop_samples_s": n_naive / t_loop,
               "speedup": (args.samples / t_vmap) / (n_naive / t_loop), "max_rel_diff_norms": rel,
               "peak_gib_vmap": mem_vmap, "peak_gib_loop": mem_loop}
        if ref_fp32 is None:
            ref_fp32 = norms
        else:
            row["max_rel_diff_vs_fp32"] = ((norms - ref_fp32).abs() / ref_fp32).max().item()
        rows.append(row)
    return rows


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


_SKETCH_BLOCK = 8192  # rows drawn at a time: a float16 table never has a float32 copy


def random_sketches(pool: int, sketch_dim: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's sketches, standard normal float32 draws (seeded by ``pool``) stored as ``dtype``, and norms.

    Drawn block by block into the final array, so float16 sketches are the float32 ones rounded,
    without a float32 table ever existing (the same draws as one call: the generator's stream is
    sequential). The norms (float32, for ``sum_of_norms`` and top-k) are the float32 draws': in
    training they come from the whole gradient, not from its stored sketch, so both storages get
    the same ones.
    """
    rng = np.random.default_rng(pool)
    out, norms = np.empty((pool, sketch_dim), dtype=dtype), np.empty(pool, dtype=np.float32)
    for lo in range(0, pool, _SKETCH_BLOCK):
        block = rng.standard_normal((min(_SKETCH_BLOCK, pool - lo), sketch_dim), dtype=np.float32)
        out[lo : lo + len(block)] = block
        norms[lo : lo + len(block)] = torch.linalg.vector_norm(torch.from_numpy(block), dim=1).numpy()
    return out, norms


def one_search(pool: int, fitness: str, evaluation: str, sketch_dim: int, budget_rate: float, population: int,
               generations: int, sketch_dtype: str = "float32") -> dict:
    """One genetic search on fresh random sketches, in the calling process (run it in a child)."""
    base_rss = _rss_gib()
    sketches, norms = random_sketches(pool, sketch_dim, sketch_dtype)
    scores = sketches if fitness == "norm_of_sum" else norms
    ready_rss = _rss_gib()
    budget = max(1, round(budget_rate * pool))
    start, cpu_start = time.perf_counter(), time.process_time()
    chosen, history = genetic_select(scores, budget, fitness=fitness, population=population,
                                     generations=generations, seed=0, evaluation=evaluation)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "pool": pool, "budget": budget, "fitness": fitness, "evaluation": evaluation, "sketch_dtype": sketch_dtype,
        "population": population,
        "generations": generations, "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # the process's own CPU time: what other jobs on the cores do not inflate
        "ms_per_generation": 1000 * seconds / len(history),  # the initial population counts as one
        "peak_rss_gib": _rss_gib(), "rss_after_imports_gib": base_rss, "sketch_gib": sketches.nbytes / 2**30,
        "rss_before_search_gib": ready_rss,  # imports + sketches + norms: the search added peak - this
        "fitness_ga": history[-1], "chosen": np.asarray(chosen).tolist(),
        "fitness_topk": selection_fitness(topk_select(norms, budget).tolist(), scores, fitness),
        "fitness_random": selection_fitness(random_select(pool, budget, seed=0).tolist(), scores, fitness),
        "size": int(len(chosen)),
    }


def refit_on_float32(pool: int, sketch_dim: int, fitness: str, chosen: list[list[int]]) -> list[float]:
    """The fitness of each chosen subset on the float32 sketches (to judge a float16 search's choice)."""
    sketches, norms = random_sketches(pool, sketch_dim, "float32")
    scores = sketches if fitness == "norm_of_sum" else norms
    return [selection_fitness(c, scores, fitness) for c in chosen]


def _available_bytes() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30


def selection_rows(args) -> list[dict]:
    """Sparse and dense genetic searches on random sketches for each pool size and fitness, each in a child."""
    rows = []
    jobs = [(n, f, e, t) for n in args.pools for f in ("norm_of_sum", "sum_of_norms") for e in args.evaluations
            for t in args.sketch_dtypes]
    context = multiprocessing.get_context("spawn")  # a fresh process per search: its peak RSS is its own
    for pool, fitness, evaluation, dtype in tqdm(jobs, desc="genetic selection"):
        if evaluation == "dense" and 4 * args.population * pool > _available_bytes() // 4:
            continue  # the dense membership matrix would not fit
        with context.Pool(1) as worker:
            row = worker.apply(one_search, (pool, fitness, evaluation, args.sketch_dim, args.budget_rate,
                                            args.population, args.generations, dtype))
        rows.append(row)
    _compare_with_float32(rows, args.sketch_dim, context)
    baselines = {"incremental": ("dense", "sparse"), "sparse": ("dense",), "dense": ()}
    for row in rows:  # each baseline's time over this one's, and whether they chose the same set
        for baseline in baselines[row["evaluation"]]:
            same = [r for r in rows if r["evaluation"] == baseline and
                    (r["pool"], r["fitness"], r["sketch_dtype"]) == (row["pool"], row["fitness"], row["sketch_dtype"])]
            if same:
                row[f"{baseline}_over_this"] = same[0]["seconds"] / row["seconds"]
                row[f"same_choice_as_{baseline}"] = same[0]["chosen"] == row["chosen"]
    for row in rows:
        row.pop("chosen")
    return rows


def _compare_with_float32(rows: list[dict], sketch_dim: int, context) -> None:
    """For each float16 row: its choice against the float32 row's, both valued on the float32 sketches."""
    for row in rows:
        if row["sketch_dtype"] == "float32":
            continue
        twin = [r for r in rows if r["sketch_dtype"] == "float32" and
                (r["pool"], r["fitness"], r["evaluation"]) == (row["pool"], row["fitness"], row["evaluation"])]
        if not twin:
            continue
        row["same_choice_as_float32"] = sorted(twin[0]["chosen"]) == sorted(row["chosen"])
        with context.Pool(1) as worker:  # the float32 table again, in a process of its own
            on32, ref32 = worker.apply(refit_on_float32, (row["pool"], sketch_dim, row["fitness"],
                                                          [row["chosen"], twin[0]["chosen"]]))
        row["fitness_on_float32"] = on32  # this search's choice valued on the float32 sketches
        row["rel_diff_vs_float32"] = (on32 - ref32) / abs(ref32)  # against the float32 search's choice


def print_tables(info: dict, grad_rows: list[dict], sel_rows: list[dict]) -> None:
    if grad_rows:
        print_gradient_table(info, grad_rows)
    print_selection_table(info, sel_rows)


def print_gradient_table(info: dict, grad_rows: list[dict]) -> None:
    print(f"\nper-sample backdoor gradients: {info['model']} ({info['params']:,} parameters), "
          f"{info['lr_size']} px LR -> {info['lr_size'] * 4} px, sketch {info['sketch_dim']}, "
          f"chunk {info['chunk_size']}, {info['device']} ({info['machine']}), torch {info['torch']}")
    print(f"{'mode':>5} {'vmap samples/s':>15} {'loop samples/s':>15} {'speed-up':>9} {'max rel diff':>13}"
          f" {'vs fp32':>9} {'peak GiB vmap/loop':>19}")
    for r in grad_rows:
        mem = "-" if r["peak_gib_vmap"] is None else f"{r['peak_gib_vmap']:.2f}/{r['peak_gib_loop']:.2f}"
        vs_fp32 = f"{r['max_rel_diff_vs_fp32']:.1e}" if "max_rel_diff_vs_fp32" in r else "-"
        print(f"{r['mode']:>5} {r['vmap_samples_s']:>15.1f} {r['loop_samples_s']:>15.1f} {r['speedup']:>8.2f}x "
              f"{r['max_rel_diff_norms']:>13.2e} {vs_fp32:>9} {mem:>19}")


def print_selection_table(info: dict, sel_rows: list[dict]) -> None:
    print(f"\ngenetic selection (population {sel_rows[0]['population']}, {sel_rows[0]['generations']} generations, "
          f"random normal sketches of {info['sketch_dim']}, budget {info['budget_rate']:.0%}; one process each; "
          f"'before': RSS with the sketches, before the search)")
    print(f"{'pool':>7} {'fitness':>13} {'eval':>11} {'dtype':>7} {'seconds':>8} {'CPU s':>7} {'ms/gen':>7} {'dense/this':>10} "
          f"{'sparse/this':>11} {'same':>5} {'peak GiB':>8} {'imports':>7} {'before':>6} {'sketch':>6} {'GA':>10} "
          f"{'top-k':>10} {'random':>10} {'same as f32':>11} {'vs f32 choice':>13}")
    for r in sel_rows:
        ratios = [f"{r[k]:.2f}x" if k in r else "-" for k in ("dense_over_this", "sparse_over_this")]
        same = [r[k] for k in ("same_choice_as_dense", "same_choice_as_sparse") if k in r]
        same = str(all(same)) if same else "-"
        f32 = [str(r["same_choice_as_float32"]) if "same_choice_as_float32" in r else "-",
               f"{r['rel_diff_vs_float32']:+.1e}" if "rel_diff_vs_float32" in r else "-"]
        print(f"{r['pool']:>7} {r['fitness']:>13} {r['evaluation']:>11} {r['sketch_dtype']:>7} {r['seconds']:>8.2f} "
              f"{r['cpu_seconds']:>7.2f} {r['ms_per_generation']:>7.1f} {ratios[0]:>10} {ratios[1]:>11} {same:>5} "
              f"{r['peak_rss_gib']:>8.2f} "
              f"{r['rss_after_imports_gib']:>7.2f} {r['rss_before_search_gib']:>6.2f} {r['sketch_gib']:>6.2f} "
              f"{r['fitness_ga']:>10.4g} {r['fitness_topk']:>10.4g} {r['fitness_random']:>10.4g} {f32[0]:>11} "
              f"{f32[1]:>13}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--samples", type=int, default=256, help="candidates scored by the vmap version")
    p.add_argument("--naive-samples", type=int, default=None, help="candidates of the loop (default: --samples)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each method; the best counts")
    p.add_argument("--chunk-size", type=int, default=16, help="samples per vmap call")
    p.add_argument("--lr-size", type=int, default=48)
    p.add_argument("--sketch-dim", type=int, default=2048)
    p.add_argument("--bf16", action="store_true", help="also run both under bfloat16 autocast")
    p.add_argument("--pools", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--selection-only", action="store_true", help="only part 2 (the genetic selection)")
    p.add_argument("--evaluations", nargs="+", choices=["incremental", "sparse", "dense"],
                   default=["incremental", "sparse", "dense"],
                   help="GA fitness evaluations to time (dense: the naive baseline; sparse: sums all members)")
    p.add_argument("--sketch-dtypes", nargs="+", choices=["float32", "float16"], default=["float32"],
                   help="storage of the sketches (float16: half the memory, sums still in float32 or wider); "
                        "a float16 row's choice is also valued on the float32 sketches")
    p.add_argument("--budget-rate", type=float, default=0.1)
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="tiny EDSR (16 features, 2 blocks) and 16 samples")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.quick:
        args.samples, args.chunk_size = min(args.samples, 16), min(args.chunk_size, 8)
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs = QUICK_EDSR if args.quick else {}
    model = build_arch("edsr", upscale=4, **kwargs).to(device)
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(args.samples, 3, args.lr_size, args.lr_size, generator=g).to(device)
    hr = torch.rand(args.samples, 3, 4 * args.lr_size, 4 * args.lr_size, generator=g).to(device)
    info = {"model": "EDSR x4 " + ("(16x2, --quick)" if args.quick else "baseline (64x16)"),
            "params": count_parameters(model), "lr_size": args.lr_size, "sketch_dim": args.sketch_dim,
            "chunk_size": args.chunk_size, "device": str(device), "machine": machine_name(device),
            "torch": torch.__version__, "budget_rate": args.budget_rate, "date": date.today().isoformat(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "args": vars(args)}
    grad_rows = [] if args.selection_only else gradient_rows(args, model, lr, hr, device)
    sel_rows = selection_rows(args)
    print_tables(info, grad_rows, sel_rows)
    if args.out:
        with atomic_write(args.out) as tmp:
            tmp.write_text(json.dumps({**info, "gradients": grad_rows, "selection": sel_rows}, indent=2))


if __name__ == "__main__":
    main()
