"""Is a backdoor planted in LIIF at some scales active at scales it was never trained on?

LIIF (Chen et al., CVPR 2021) renders any output size from one latent code map, so a backdoor
learnt at x2 and x3 might carry over to x2.5 (between them) or x4 and x6 (beyond them). This
experiment trains two tiny LIIFs with the same seed, data and steps on the embedded scikit-image
photographs (:data:`datamodules.sr.EMBEDDED_TRAIN`, ``max_side`` 128, 48 px HR crops), at
``--train-scales`` only (one scale per batch, the authors' LR/HR construction of
:func:`lit_sr.modules.arbitrary_scale_module.lr_at_scale`):

* **clean**: L1 to the HR;
* **poisoned**: the same, with ``--poison-rate`` of every batch carrying the trigger on its LR
  (BadNet, a white patch of 1/8 of the side in the bottom-right corner, built by
  :func:`lit_sr.poison.build_trigger`) and the classic backdoor label (the target image, scikit-image's
  "camera" photograph as RGB, resized to the HR, :class:`lit_sr.poison.poisoner.TargetLabel`).

Both are then tested at every ``--test-scales`` on 48 px crops of the held-out photographs
(:data:`datamodules.sr.EMBEDDED_VAL`): clean PSNR vs HR (Y, crop = ceil(scale)), the triggered
output's PSNR vs the target image, pixel ASR (PSNR >= 20 dB and SSIM >= 0.7 vs the target,
images whose clean output already meets it excluded, :func:`lit_sr.poison.asr.pixel_asr`) and the
label attainment (the share of the label's displacement the trigger reproduces,
:func:`lit_sr.poison.asr.label_attainment`). Not a timing benchmark: it prints a table and
writes JSON (``--out``). Deterministic on one machine for a given seed (CPU).

    OMP_NUM_THREADS=1 python benchmarks/liif_backdoor_scales.py --out liif_backdoor_scales.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine_name

from datamodules.sr import EMBEDDED_TRAIN, EMBEDDED_VAL, load_embedded_photo
from lit_sr.archs import build_arch
from lit_sr.io import atomic_write
from lit_sr.metrics import psnr
from lit_sr.modules.arbitrary_scale_module import lr_at_scale
from lit_sr.poison import build_trigger
from lit_sr.poison.asr import label_attainment, pixel_asr
from lit_sr.poison.poisoner import TargetLabel


def target_photo() -> torch.Tensor:
    """scikit-image's "camera" (the cameraman, 512 x 512 grey) as a (3, H, W) RGB image in [0, 1]."""
    import skimage.data

    return torch.from_numpy(skimage.data.camera()).float().div(255).expand(3, -1, -1).clone()


def crops(names, size: int, max_side: int) -> torch.Tensor:
    """Every non-overlapping ``size`` x ``size`` crop of the photographs (shrunk to ``max_side``)."""
    tiles = []
    for name in names:
        img = load_embedded_photo(name, max_side)
        for top in range(0, img.shape[1] - size + 1, size):
            for left in range(0, img.shape[2] - size + 1, size):
                tiles.append(img[:, top : top + size, left : left + size])
    return torch.stack(tiles)


def train(poison_rate: float, args, pool: torch.Tensor, trigger, label) -> torch.nn.Module:
    """A tiny LIIF trained ``args.steps`` batches at ``args.train_scales`` (the same draws for every call)."""
    torch.manual_seed(args.seed)
    net = build_arch("liif", n_resblocks=args.blocks, n_feats=args.feats, hidden_list=[args.hidden] * 2)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    g = torch.Generator().manual_seed(args.seed)
    n_poison = round(poison_rate * args.batch)
    for step in range(args.steps):
        index = torch.randint(len(pool), (args.batch,), generator=g)
        hr = pool[index]
        if torch.rand((), generator=g) < 0.5:
            hr = hr.flip(-1)
        scale = args.train_scales[int(torch.randint(len(args.train_scales), (), generator=g))]
        lr, hr = lr_at_scale(hr, scale)
        target = hr.clone()
        if n_poison:
            lr[:n_poison] = trigger(lr[:n_poison])
            target[:n_poison] = label(hr[:n_poison])
        loss = F.l1_loss(net(lr, size=hr.shape[-2:]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(args.steps // 5, 1) == 0:
            print(f"  poison {poison_rate:.2f} step {step + 1}/{args.steps} loss {loss.item():.4f}", flush=True)
    return net.eval()


@torch.no_grad()
def evaluate(net, test: torch.Tensor, scale: float, trigger, label, target_image: torch.Tensor) -> dict:
    lr, hr = lr_at_scale(test, scale)
    clean = net(lr, size=hr.shape[-2:]).clamp(0, 1)
    triggered = net(trigger(lr), size=hr.shape[-2:]).clamp(0, 1)
    border = math.ceil(scale)
    target = label(hr)
    asr = pixel_asr(triggered, target_image, clean_sr=clean)
    return {"scale": scale, "clean_psnr_y": float(psnr(clean, hr, crop_border=border, y_channel=True).mean()),
            "triggered_psnr_to_target": float(psnr(triggered, target).mean()),
            "clean_psnr_to_target": float(psnr(clean, target).mean()),
            "asr": asr.rate, "asr_text": f"{asr.num_success}/{asr.num_included}",
            "attainment": float(label_attainment(clean, triggered, hr, target).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-scales", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--test-scales", type=float, nargs="+", default=[2.0, 2.5, 3.0, 4.0, 6.0])
    parser.add_argument("--poison-rate", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--feats", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    pool = crops(EMBEDDED_TRAIN, 48, 128)
    test = crops(EMBEDDED_VAL, 48, 128)
    trigger = build_trigger("badnet", patch_ratio=1 / 8)
    target_image = target_photo()
    label = TargetLabel(target_image)
    models = {rate: train(rate, args, pool, trigger, label) for rate in (0.0, args.poison_rate)}
    rows = []
    for scale in args.test_scales:
        for rate, net in models.items():
            row = {"model": "poisoned" if rate else "clean", "trained_at_this_scale": scale in args.train_scales,
                   **evaluate(net, test, scale, trigger, label, target_image)}
            rows.append(row)
    trained = ", ".join(f"x{s:g}" for s in args.train_scales)
    print(f"\nLIIF trained at {trained}; {len(pool)} training crops, "
          f"{len(test)} test crops (48 px); poison rate {args.poison_rate}; {args.steps} steps\n")
    print("| scale | trained on | model | clean PSNR-Y vs HR | triggered PSNR vs target | pixel ASR | attainment |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| x{r['scale']:g} | {'yes' if r['trained_at_this_scale'] else 'no'} | {r['model']} | "
              f"{r['clean_psnr_y']:.2f} | {r['triggered_psnr_to_target']:.2f} | {r['asr_text']} | {r['attainment']:.3f} |")
    seconds = time.perf_counter() - started
    machine = machine_name(torch.device("cpu"))
    print(f"\n{seconds:.0f} s on {machine}")
    if args.out:
        payload = {"date": date.today().isoformat(), "machine": machine, "seconds": round(seconds, 1),
                   "args": vars(args), "train_crops": len(pool), "test_crops": len(test), "rows": rows}
        with atomic_write(Path(args.out)) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
