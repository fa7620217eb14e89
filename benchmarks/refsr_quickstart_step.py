"""One training step of the RefSR quickstart networks, SSMTF against DATSR in the same run.

Builds each quickstart's network from its config (``configs/train/<name>.yaml``: ``arch`` and
``arch_kwargs``) and times forward, L1 loss, backward and an Adam step on a batch of four 8x8 LR
patches with 32x32 references (the quickstarts' batch and patch), median of ``--repeats`` after one
warm-up step. Random data and weights: the cost, not the quality, is measured. The ratio is to the
first config (DATSR, the baseline). Timings depend on the machine and its load.

    python benchmarks/refsr_quickstart_step.py [--configs datsr_quickstart ssmtf_quickstart] [--out refsr_step.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from lit_sr.archs import build_arch
from lit_sr.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(name: str, repeats: int, batch: int) -> float:
    init = yaml.safe_load((ROOT / "configs" / "train" / f"{name}.yaml").read_text())["model"]["init_args"]
    torch.manual_seed(0)
    net = build_arch(init["arch"], **init.get("arch_kwargs", {})).train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    lr, ref, hr = torch.rand(batch, 3, 8, 8), torch.rand(batch, 3, 32, 32), torch.rand(batch, 3, 32, 32)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = (net(lr, ref) - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["datsr_quickstart", "ssmtf_quickstart"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default="refsr_step.json")
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        seconds = step_seconds(name, args.repeats, args.batch)
        rows.append({"config": name, "step_s": seconds, "ratio_to_first": seconds / (rows[0]["step_s"] if rows else seconds)})
        print(f"{name:>20} {seconds:8.3f} s/step  x{rows[-1]['ratio_to_first']:.2f}")
    with atomic_write(args.out) as tmp:
        Path(tmp).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
