"""Speed of lit_sr.ops.imresize (two matrix products) against a straightforward loop version.

The loop version computes MATLAB's contributions per output row and column and applies them one
row/column at a time, as ports of MATLAB's imresize usually do. Both run in the same process on
the same inputs; the table reports images/s and the ratio.

    python benchmarks/imresize.py --device cpu --size 256 --batch 8
    python benchmarks/imresize.py --quick        # CPU smoke run: 2 x 3 x 32 x 32, one repeat
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
from tqdm import tqdm

from lit_sr.io import atomic_write
from lit_sr.ops import cubic_kernel, imresize


def loop_resize_axis(x: torch.Tensor, scale: float, dim: int) -> torch.Tensor:
    """Resize ``x`` along ``dim`` (2 = H, 3 = W) with a Python loop over output positions."""
    in_len = x.shape[dim]
    out_len = math.ceil(in_len * scale - 1e-9)
    width = 4.0 / scale if scale < 1 else 4.0
    outs = []
    for o in range(1, out_len + 1):
        u = o / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        idx = torch.arange(left, left + math.ceil(width) + 2, dtype=torch.float64)
        d = u - idx
        w = scale * cubic_kernel(d * scale) if scale < 1 else cubic_kernel(d)
        w = w / w.sum()
        src = idx.long() - 1
        src = torch.where(src < 0, -src - 1, src)
        src = torch.where(src >= in_len, 2 * in_len - 1 - src, src)
        taps = x.index_select(dim, src.to(x.device))
        shape = [1, 1, 1, 1]
        shape[dim] = -1
        outs.append((taps * w.to(x.device, x.dtype).view(shape)).sum(dim=dim, keepdim=True))
    return torch.cat(outs, dim=dim)


def loop_imresize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return loop_resize_axis(loop_resize_axis(x, scale, 2), scale, 3)


def timed(fn, x, repeats: int, device: str) -> float:
    fn(x)  # warm-up (and matrix cache)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (256; 32 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (8; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (5; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the whole benchmark")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    for name, full, quick in (("size", 256, 32), ("batch", 8, 2), ("repeats", 5, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    rows = []
    for scale in tqdm([1 / 4, 1 / 2, 2, 4], desc="scales"):
        fast = timed(lambda t, s=scale: imresize(t, s), x, args.repeats, args.device)
        slow = timed(lambda t, s=scale: loop_imresize(t, s), x, max(1, args.repeats // 2), args.device)
        err = (imresize(x, scale) - loop_imresize(x, scale)).abs().max().item()
        rows.append({"scale": scale, "vectorised_img_s": args.batch / fast, "loop_img_s": args.batch / slow,
                     "speedup": slow / fast, "max_abs_diff": err})
    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"imresize, {args.batch}x3x{args.size}x{args.size}, {args.device} ({machine})")
    print(f"{'scale':>6} {'vectorised img/s':>17} {'loop img/s':>11} {'speed-up':>9} {'max |diff|':>11}")
    for r in rows:
        print(f"{r['scale']:>6.3g} {r['vectorised_img_s']:>17.1f} {r['loop_img_s']:>11.1f} {r['speedup']:>8.1f}x "
              f"{r['max_abs_diff']:>11.2e}")
    if args.out:
        with atomic_write(args.out) as tmp, open(tmp, "w") as f:
            json.dump({"device": args.device, "machine": machine, "batch": args.batch, "size": args.size,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
