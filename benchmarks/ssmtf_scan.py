"""SSMTF's selective scan: lit-sr's pure-PyTorch scan against mamba-ssm's reference loop, in one run.

The baseline is a transcription of ``mamba_ssm``'s ``selective_scan_ref`` (2.2.2): per timestep,
``x = deltaA[:, :, i] * x + deltaB_u[:, :, i]`` and ``y = einsum('bdn,bdn->bd', x, C[:, :, :, i])``
(indexing the full tensors). lit-sr's :func:`~lit_sr.archs.mambair_blocks.selective_scan` runs the
plain recurrence (``chunk_size = L``, the CPU default) or chunks of ``ceil(sqrt(L))`` steps (the
default on accelerators). Shapes are SS2D's at the authors' width (ngf 64: d_inner 128, four
directions: d = 512 channels, d_state 16) on the three stage sizes of a 160 px training patch
(40, 80, 160 px: L = 1600, 6400, 25600) unless ``--sides`` says otherwise. Reports the forward and
forward+backward times (median of ``--repeats``), the ratios to the baseline and the largest
difference of the outputs. Timings depend on the machine and its load.

    python benchmarks/ssmtf_scan.py [--sides 40 80] [--batch 1] [--device cpu] [--out ssmtf_scan.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from lit_sr.archs.mambair_blocks import selective_scan
from lit_sr.io import atomic_write


def reference_scan(u, delta, A, B, C, D, delta_bias):
    """mamba-ssm's selective_scan_ref for real A, grouped B/C (b, g, n, L), softplus, no z (SS2D's call)."""
    delta = F.softplus(delta + delta_bias[..., None])
    b, d, length = u.shape
    B = B.repeat_interleave(d // B.shape[1], dim=1)
    C = C.repeat_interleave(d // C.shape[1], dim=1)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((b, d, A.shape[1]))
    ys = []
    for i in range(length):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def variants(u, delta, A, B, C, D, bias) -> dict:
    """The baseline and lit-sr's scan, plain and chunked, as closures over one set of inputs."""
    length = u.shape[-1]
    return {
        "mamba ref loop": lambda: reference_scan(u, delta, A, B, C, D, bias),
        "lit-sr, T = L": lambda: selective_scan(u, delta, A, B, C, D, None, bias, True, chunk_size=length),
        "lit-sr, T = sqrt L": lambda: selective_scan(u, delta, A, B, C, D, None, bias, True,
                                                     chunk_size=math.isqrt(length - 1) + 1),
    }


def timed(fn, repeats: int, backward: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if backward:
            out.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[40, 80, 160])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=512, help="K * d_inner (4 directions x 128)")
    parser.add_argument("--d_state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no_baseline_backward", action="store_true",
                        help="time the baseline's backward only on the smallest side (it is slow)")
    parser.add_argument("--out", default="ssmtf_scan.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'side':>5} {'L':>6} {'variant':>18} {'fwd s':>8} {'fwd+bwd s':>10} {'x fwd':>7} {'x fwd+bwd':>9} {'max diff':>9}")
    for side in args.sides:
        length, b, d, n = side * side, args.batch, args.channels, args.d_state

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(device)
        u, delta, B, C = rand(b, d, length), rand(b, d, length) - 2, rand(b, 4, n, length), rand(b, 4, n, length)
        A, D, bias = -torch.exp(rand(d, n) * 0.5), rand(d), rand(d) * 0.1
        u.requires_grad_(True)
        base = None
        for name, fn in variants(u, delta, A, B, C, D, bias).items():
            with torch.no_grad():
                fwd, out = timed(fn, args.repeats, False, device)
            skip_bwd = name == "mamba ref loop" and args.no_baseline_backward and side != min(args.sides)
            both = float("nan") if skip_bwd else timed(fn, args.repeats, True, device)[0]
            u.grad = None
            if base is None:
                base = (fwd, both, out)
            row = {"side": side, "L": length, "variant": name, "fwd_s": fwd, "fwd_bwd_s": both,
                   "speedup_fwd": base[0] / fwd, "speedup_fwd_bwd": base[1] / both,
                   "max_abs_diff": float((out - base[2]).abs().max())}
            rows.append(row)
            print(f"{side:>5} {length:>6} {name:>18} {fwd:>8.3f} {both:>10.3f} {row['speedup_fwd']:>7.2f} "
                  f"{row['speedup_fwd_bwd']:>9.2f} {row['max_abs_diff']:>9.2e}")
    meta = {"device": str(device), "batch": args.batch, "channels": args.channels, "d_state": args.d_state,
            "threads": torch.get_num_threads(), "repeats": args.repeats}
    with atomic_write(args.out) as tmp:
        Path(tmp).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
