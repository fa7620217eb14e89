"""Batched I-FGSM against a per-image loop, in fp32 and bf16, and what bf16 costs in attack strength.

The same attack (``lit_sr.attacks.IFGSM``, HR reference as in Choi et al.'s code, eps 8/255) runs
on the same images four ways in one process: the whole batch at once or one image at a time, each
in fp32 and under bf16 autocast. The table gives images/s, the batched/per-image ratio, and the
attack strength of each run: the mean SR PSNR of the attacked output against the clean output
(measured in fp32; lower = stronger), so the bf16 weakening is reported in dB.

On a device without native bf16 (``lit_sr.runtime.native_bf16``: a CPU without avx512_bf16 / AMX)
lit-sr runs a bf16 request as float32 (warned once); this benchmark then times the *emulated* bf16
(``LIT_SR_CPU_BF16=emulate``, rows labelled ``bf16-emulated``) to show what that fallback saves.

The network is EDSR-baseline x4 (64 features, 16 blocks). No weights are downloaded: by default
it is trained for ``--train-steps`` Adam steps on crops of the scikit-image photographs (a random
network barely reacts to its input, so its attack strength would mean little); ``--weights`` loads
a model-zoo file instead (e.g. EDSR_Mx4_f64b16_DIV2K_official-0c287733.pth).

    python benchmarks/attack_throughput.py --device cuda                 # 16 x 128x128 LR, 50 steps
    python benchmarks/attack_throughput.py --device cpu --quick --out attack_cpu.json   # 4 x 16x16 LR, 5 steps
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

import numpy as np
import torch
from common import machine_name, synchronise
from skimage import data as skdata

from lit_sr.archs import build_arch
from lit_sr.attacks import IFGSM, attack_metrics
from lit_sr.io import load_weights
from lit_sr.ops import imresize
from lit_sr.runtime import CPU_BF16_ENV, native_bf16

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# The protocol, and the sizes a 2-core CPU gets through in a few minutes.
FULL = {"batch": 16, "lr_size": 128, "steps": 50, "train_steps": 300, "train_patch": 48}
QUICK = {"batch": 4, "lr_size": 16, "steps": 5, "train_steps": 20, "train_patch": 16}


def load_photos(min_side: int) -> list[torch.Tensor]:
    """The scikit-image photos as ``(3, H, W)`` in [0, 1]; those whose short side is below ``min_side``
    are enlarged (MATLAB bicubic) to fit."""
    photos = []
    for name in PHOTOS:
        image = torch.from_numpy(np.ascontiguousarray(getattr(skdata, name)()[..., :3])).permute(2, 0, 1).float() / 255
        short = min(image.shape[-2:])
        if short < min_side:
            image = imresize(image, min_side / short).clamp(0, 1)
        photos.append(image)
    return photos


def random_crops(photos, count: int, hr_size: int, scale: int, generator: torch.Generator):
    """``count`` random HR crops of ``hr_size`` px and their 8-bit bicubic LR, ``(lr, hr)``."""
    crops = []
    for _ in range(count):
        image = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        top = int(torch.randint(image.shape[-2] - hr_size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[-1] - hr_size + 1, (1,), generator=generator))
        crops.append(image[:, top : top + hr_size, left : left + hr_size])
    hr = torch.stack(crops)
    lr = (imresize(hr, 1 / scale).clamp(0, 1) * 255).round() / 255
    return lr, hr


def build_model(args, photos, device: torch.device) -> tuple[torch.nn.Module, str]:
    """EDSR-baseline: loaded from ``--weights`` or briefly trained on photo crops (batch 8, Adam 2e-4)."""
    torch.manual_seed(args.seed)
    net = build_arch("edsr", num_feat=args.num_feat, num_block=args.num_block, upscale=args.scale).to(device)
    if args.weights:
        load_weights(net, args.weights)
        return net.eval(), f"weights {args.weights}"
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-4)
    generator = torch.Generator().manual_seed(args.seed + 1)
    for _ in range(args.train_steps):
        lr, hr = random_crops(photos, 8, args.train_patch * args.scale, args.scale, generator)
        loss = (net(lr.to(device)) - hr.to(device)).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return net.eval(), f"trained {args.train_steps} Adam steps on {args.train_patch}px LR photo crops"


def run_attack(model, lr, hr, steps: int, autocast, per_image: bool) -> torch.Tensor:
    atk = IFGSM(model, eps=8 / 255, steps=steps, reference="hr", autocast=autocast)
    if not per_image:
        return atk(lr, hr=hr)
    return torch.cat([atk(lr[i : i + 1], hr=hr[i : i + 1]) for i in range(lr.shape[0])])


def timed_attack(model, lr, hr, args, autocast, per_image: bool, device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds of the best of ``--repeats`` runs (after a 2-step warm-up) and the adversarial batch."""
    run_attack(model, lr, hr, 2, autocast, per_image)  # warm-up: kernels, autocast caches
    best, adv = float("inf"), None
    for _ in range(args.repeats):
        synchronise(device)
        start = time.perf_counter()
        adv = run_attack(model, lr, hr, args.steps, autocast, per_image)
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return best, adv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="images per batch (16; 4 with --quick)")
    p.add_argument("--lr-size", type=int, default=None, help="LR side in pixels (128; 16 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="I-FGSM iterations T (50; 5 with --quick)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--num-feat", type=int, default=64)
    p.add_argument("--num-block", type=int, default=16)
    p.add_argument("--weights", default=None, help="EDSR-baseline weights file (BasicSR .pth / .safetensors)")
    p.add_argument("--train-steps", type=int, default=None, help="Adam steps when no --weights (300; 20 with --quick)")
    p.add_argument("--train-patch", type=int, default=None, help="LR patch size of that training (48; 16 with --quick)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per mode (the best is kept)")
    p.add_argument("--no-bf16", action="store_true", help="fp32 only (for devices without bf16)")
    p.add_argument("--quick", action="store_true", help="defaults for a CPU: 4 x 16x16 LR, 5 steps, 20 training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = torch.device(args.device)

    photos = load_photos(max(args.lr_size, args.train_patch) * args.scale)
    model, origin = build_model(args, photos, device)
    lr, hr = random_crops(photos, args.batch, args.lr_size * args.scale, args.scale,
                          torch.Generator().manual_seed(args.seed))
    lr, hr = lr.to(device), hr.to(device)
    native = native_bf16(device)
    if not native and not args.no_bf16:
        os.environ[CPU_BF16_ENV] = "emulate"  # time what the fallback avoids (lit-sr would run fp32)
    bf16_label = "bf16" if native else "bf16-emulated"
    precisions = ["fp32"] + ([] if args.no_bf16 else [bf16_label])
    rows = []
    for precision in precisions:
        autocast = "none" if precision == "fp32" else "bf16"
        for per_image in (False, True):
            seconds, adv = timed_attack(model, lr, hr, args, autocast, per_image, device)
            m = attack_metrics(model, lr, adv, hr=hr, crop_border=args.scale, y_channel=True)
            rows.append({"mode": "per-image" if per_image else "batched", "precision": precision,
                         "seconds": seconds, "img_s": args.batch / seconds,
                         "sr_psnr": float(m["sr_psnr"].mean()), "hr_psnr": float(m["hr_psnr"].mean()),
                         "clean_hr_psnr": float(m["clean_hr_psnr"].mean()), "lr_psnr": float(m["lr_psnr"].mean())})
    cell = {(r["mode"], r["precision"]): r for r in rows}
    speedup = {prec: cell["batched", prec]["img_s"] / cell["per-image", prec]["img_s"] for prec in precisions}
    summary = {"batched_vs_per_image": speedup, "bf16_native": native}
    if bf16_label in precisions:
        summary["bf16_vs_fp32_batched_speed"] = cell["batched", bf16_label]["img_s"] / cell["batched", "fp32"]["img_s"]
        # positive = bf16's attack leaves the output closer to the clean one, i.e. it is weaker
        summary["bf16_weakening_db"] = cell["batched", bf16_label]["sr_psnr"] - cell["batched", "fp32"]["sr_psnr"]

    machine = machine_name(device)
    print(f"I-FGSM, {args.steps} steps, eps 8/255, HR reference; EDSR-baseline x{args.scale} "
          f"({args.num_feat} feat, {args.num_block} blocks; {origin})")
    print(f"{args.batch} x {args.lr_size}x{args.lr_size} LR, {device} ({machine}), torch {torch.__version__}")
    print(f"{'mode':>10} {'precision':>9} {'img/s':>8} {'SR PSNR vs clean':>17} {'HR PSNR':>8}")
    for r in rows:
        print(f"{r['mode']:>10} {r['precision']:>9} {r['img_s']:>8.2f} {r['sr_psnr']:>17.2f} {r['hr_psnr']:>8.2f}")
    print("batched / per-image: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    print(f"native bf16 on {device}: {'yes' if native else 'no (bf16 rows are emulated; lit-sr runs fp32 instead)'}")
    if bf16_label in precisions:
        print(f"bf16 / fp32 (batched): {summary['bf16_vs_fp32_batched_speed']:.2f}x faster; attack weakened by "
              f"{summary['bf16_weakening_db']:+.2f} dB SR PSNR (positive = weaker)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": str(device),
                       "machine": machine, "torch": torch.__version__, "model": origin, "args": vars(args),
                       "rows": rows, "summary": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
