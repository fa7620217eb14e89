"""Training-step time of the light shapes detector: torchvision's default box head vs the CPU settings of the recipe.

Baseline: ``fasterrcnn_mobilenet_v3_large_320_fpn`` as torchvision builds it (a 1,024-wide box head,
512 RoI samples per image). Compared: ``representation_size=256`` and ``box_batch_size_per_image=32``
(``configs/train/shapes_detector.yaml``). Both train from random init on the same shapes batch in the same
process (forward, backward, AdamW step); the table gives seconds per step, parameters and the ratio.

    python benchmarks/detector_step.py --device cpu
    python benchmarks/detector_step.py --quick        # CPU smoke run: 2 images, 1 timed step
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import machine_name, synchronise

from lit_sr.io import atomic_write

SETTINGS = {
    "torchvision default (1024-wide head, 512 RoIs/image)": {},
    "recipe (256-wide head, 32 RoIs/image)": {"representation_size": 256, "box_batch_size_per_image": 32},
}


def time_steps(settings: dict, batch: dict, device: torch.device, steps: int, warmup: int) -> tuple[float, int]:
    from lit_sr.downstream import DetectorModule

    torch.manual_seed(0)
    module = DetectorModule(min_size=128, max_size=128, **settings).to(device).train()
    optimiser = torch.optim.AdamW(module.parameters(), lr=1e-3)
    images = [im.to(device) for im in batch["hr"]]
    targets = [{k: v.to(device) for k, v in t.items()} for t in DetectorModule.targets(batch)]
    seconds = []
    for step in range(warmup + steps):
        synchronise(device)
        start = time.perf_counter()
        loss = sum(module.net(images, targets).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        synchronise(device)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return sum(seconds) / len(seconds), sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="runs/benchmarks/detector_step.json")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup = 2, 1, 0
    from datamodules.shapes import ShapesDataModule

    device = torch.device(args.device)
    data = ShapesDataModule(hr_size=64, max_objects=2, min_radius=8, max_radius=18, train_size=args.batch,
                            val_size=1, batch_size=args.batch)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    rows = []
    for name, settings in SETTINGS.items():
        seconds, params = time_steps(settings, batch, device, args.steps, args.warmup)
        rows.append({"setting": name, "seconds_per_step": seconds, "parameters": params})
    base = rows[0]["seconds_per_step"]
    print(f"{'setting':55s} {'s/step':>8s} {'params':>12s} {'speed-up':>9s}")
    for row in rows:
        row["speedup"] = base / row["seconds_per_step"]
        print(f"{row['setting']:55s} {row['seconds_per_step']:8.3f} {row['parameters']:12,d} {row['speedup']:8.2f}x")
    payload = {"machine": machine_name(device), "device": str(device), "batch": args.batch, "steps": args.steps,
               "torch": torch.__version__, "rows": rows}
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
