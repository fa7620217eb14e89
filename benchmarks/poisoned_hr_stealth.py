"""Where BadSR's poisoned labels sit on the stealth plane (PSNR, SSIM vs the clean HR), by step rule,
target image and eps, beside white noise of the same PSNR (the reference any texture-like deviation
is judged against).

The labels are made exactly as ``make demo`` makes them: :func:`lit_sr.poison.make_poisoned_hr` on
the demo's training tiles (the 7 embedded training photographs, ``max_side`` 128, 32 px HR tiles),
with the demo's substitute network (``--substitute``: the ``weights.pth`` of a study's
``S_substitute`` run, a x2 EDSR with 16 features and 2 blocks) at its default feature layer, 100
PGD steps and the ``pixel`` norm; PSNR and SSIM are BasicSR's (RGB, 8-bit rounded, as the poison
cache stores the labels). "feature ratio" is the mean squared feature distance to the target after
the optimisation over the one before it (lower = better aligned). The reference rows are the HR
plus independent +-a sign noise, with ``a`` chosen so that the PSNR matches each eps's bound.

The paper's operating point (Table IV, eps 0.05) is PSNR ~28 dB with SSIM ~0.69. Not a timing
benchmark: it prints a table and writes JSON (``--out``).

    lit-sr study --config configs/study/demo_quick.yaml   # or any study: trains S_substitute
    python benchmarks/poisoned_hr_stealth.py --substitute runs/demo/runs/S_substitute/weights.pth \\
        --out poisoned_hr_stealth.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date

import torch
from common import machine_name

from lit_sr.archs import build_arch
from lit_sr.io import atomic_write, load_weights, read_image
from lit_sr.metrics import psnr, ssim
from lit_sr.poison import FeatureExtractor, make_poisoned_hr
from lit_sr.poison.poisoned_hr import STEP_RULES, psnr_lower_bound


def demo_tiles() -> torch.Tensor:
    """The demo's 76 training HR tiles (configs/train/demo_clean.yaml: max_side 128, train_tile 32)."""
    from datamodules.sr import EMBEDDED_TRAIN, ImageRecord, load_embedded_photo, tile_records

    records = [ImageRecord(name=n, hr_tensor=load_embedded_photo(n, 128)) for n in EMBEDDED_TRAIN]
    return torch.stack([r.hr_tensor for r in tile_records(records, 32)])


def load_target(spec: str) -> torch.Tensor:
    """An embedded photo name or an image file, as the poisoned data module reads ``target``."""
    from datamodules.sr import EMBEDDED_TRAIN, EMBEDDED_VAL, load_embedded_photo

    if spec in EMBEDDED_TRAIN + EMBEDDED_VAL:
        return load_embedded_photo(spec, max_side=None)
    return read_image(spec)


def quantised(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round() / 255


def noise_reference(hr: torch.Tensor, target_psnr: float, seed: int = 0) -> dict[str, float]:
    """HR + independent +-a sign noise, a set so that the noise alone has ``target_psnr``."""
    amplitude = 10 ** (-target_psnr / 20)
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, hr.shape, generator=gen).float() * 2 - 1
    noisy = quantised(hr + amplitude * signs)
    return {"psnr": float(psnr(noisy, hr).mean()), "ssim": float(ssim(noisy, hr).mean())}


def label_row(feature_net, hr, target, eps: float, step_rule: str, steps: int) -> dict[str, float]:
    start = time.perf_counter()
    y_p, report = make_poisoned_hr(feature_net, hr, target, eps=eps, steps=steps, step_rule=step_rule)
    y_p = quantised(y_p)
    ratio = (report["feature_dist_after"] / report["feature_dist_before"].clamp_min(1e-20)).mean()
    return {"psnr": float(psnr(y_p, hr).mean()), "ssim": float(ssim(y_p, hr).mean()),
            "feature_ratio": float(ratio), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--substitute", required=True, help="the demo substitute's weights.pth")
    parser.add_argument("--targets", nargs="+", default=["configs/train/demo_target_grey.png", "astronaut"])
    parser.add_argument("--eps", nargs="+", type=float, default=[0.05, 0.0685, 0.08])
    parser.add_argument("--step-rules", nargs="+", default=list(STEP_RULES), choices=STEP_RULES)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=16, num_block=2, upscale=2)
    load_weights(net, args.substitute)
    feature_net = FeatureExtractor(net)
    hr = demo_tiles()
    rows = []
    print(f"{len(hr)} tiles {tuple(hr.shape[1:])}; machine: {machine_name(torch.device('cpu'))}")
    print(f"{'target':32s} {'rule':5s} {'eps':>7s} {'PSNR':>7s} {'SSIM':>7s} {'feature ratio':>14s}")
    for eps in args.eps:
        bound = psnr_lower_bound(eps, "pixel", *hr.shape[1:])
        noise = noise_reference(hr, bound)
        rows.append({"target": "white sign noise", "step_rule": "-", "eps": eps, **noise})
        print(f"{'white sign noise':32s} {'-':5s} {eps:7.4f} {noise['psnr']:7.2f} {noise['ssim']:7.4f} {'-':>14s}")
        for spec in args.targets:
            target = load_target(spec)
            for rule in args.step_rules:
                row = label_row(feature_net, hr, target, eps, rule, args.steps)
                rows.append({"target": spec, "step_rule": rule, "eps": eps, **row})
                print(f"{spec:32s} {rule:5s} {eps:7.4f} {row['psnr']:7.2f} {row['ssim']:7.4f} "
                      f"{row['feature_ratio']:14.3f}", flush=True)
    if args.out:
        result = {"date": date.today().isoformat(), "machine": machine_name(torch.device("cpu")),
                  "substitute": args.substitute, "steps": args.steps, "tiles": len(hr), "rows": rows,
                  "paper_point": {"psnr": 28.0, "ssim": 0.6895}}
        with atomic_write(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
