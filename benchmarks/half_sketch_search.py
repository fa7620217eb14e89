"""Does storing the sketches in float16 change what the genetic selection finds? (issue 26, item 4)

On the benchmark's random normal sketches (``benchmarks/backdoor_gradients.py``'s draws, pool
``--pool``, 2,048-d, budget 10%, the defaults of :func:`lit_sr.poison.genetic_select`), for
``--seeds`` seeds, three searches each: on the float32 sketches, on the same sketches rounded to
float16 (sums still in float32 or wider), and, as the control, on the float32 sketches plus a
perturbation of the same size that is not float16's (float16's rounding errors shuffled among the
entries). Each choice is valued on the float32 sketches. The search is chaotic: a perturbation of
the fitness at the 1e-5 level flips a near-tie somewhere and the run follows another path; if
float16 costs nothing beyond that, its differences from float32 look like the control's.
Reported: the fitness of each choice, the paired relative differences, their mean and spread.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/half_sketch_search.py --pool 10000 --seeds 20
"""

from __future__ import annotations

import argparse

import numpy as np
from backdoor_gradients import random_sketches

from lit_sr.poison import genetic_select, selection_fitness


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=10000)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--sketch-dim", type=int, default=2048)
    args = p.parse_args()
    s32 = random_sketches(args.pool, args.sketch_dim, "float32")[0]
    s16 = s32.astype(np.float16)
    error = (s16.astype(np.float32) - s32).ravel()
    control = s32 + np.random.default_rng(1).permutation(error).reshape(s32.shape)
    budget = max(1, round(0.1 * args.pool))
    print(f"pool {args.pool}, budget {budget}, sketch {args.sketch_dim}; float16 rounding: relative rms "
          f"{np.sqrt((error.astype(np.float64) ** 2).mean() / (s32.astype(np.float64) ** 2).mean()):.2e}")
    print(f"{'seed':>4} {'float32':>9} {'float16':>9} {'control':>9} {'f16 same':>8} {'ctl same':>8} "
          f"{'f16 vs f32':>10} {'ctl vs f32':>10}")
    d16, dctl = [], []
    fits32 = []
    for seed in range(args.seeds):
        chosen = [genetic_select(t, budget, seed=seed)[0] for t in (s32, s16, control)]
        f32, f16, fctl = (selection_fitness(c.tolist(), s32) for c in chosen)
        same = [sorted(c.tolist()) == sorted(chosen[0].tolist()) for c in chosen[1:]]
        d16.append((f16 - f32) / f32)
        dctl.append((fctl - f32) / f32)
        fits32.append(f32)
        print(f"{seed:>4} {f32:>9.2f} {f16:>9.2f} {fctl:>9.2f} {str(same[0]):>8} {str(same[1]):>8} "
              f"{d16[-1]:>+10.2e} {dctl[-1]:>+10.2e}", flush=True)
    for name, d in (("float16", d16), ("control", dctl)):
        d = np.array(d)
        print(f"{name} vs float32: mean {d.mean():+.2e} (standard error {d.std(ddof=1) / np.sqrt(len(d)):.1e}), "
              f"rms {np.sqrt((d ** 2).mean()):.1e}, same choice {int((d == 0).sum())}/{len(d)}")
    f = np.array(fits32)
    print(f"float32 across seeds: mean {f.mean():.2f}, relative spread (std) {f.std(ddof=1) / f.mean():.1e}")


if __name__ == "__main__":
    main()
