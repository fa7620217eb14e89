"""MASA-SR against TTSR: training-step throughput, and MASA's coarse-to-fine matching against a full search.

Two tables, measured in one process on the same random inputs:

1. forward + backward (gradients of the parameters and of the reference, as in training and in
   RefSR-Adv) of ``masa`` and ``ttsr`` at the same ``n_feats`` and block counts cut to one per
   stage (TTSR's texture extractor keeps VGG19's 64/128/256 widths whatever ``n_feats``), in
   images/s, and the masa/ttsr ratio;
2. the matching alone on the same MASA features: MASA's coarse block search plus the fine search in
   each block's region (:meth:`MatchExtract.search`, without the differentiable relevance) against
   the naive baseline, every 3x3 LR patch compared with every 3x3 Ref-down patch (TTSR's search,
   chunked the same way), in ms, their ratio, and how often the two pick the same patch.

Random weights (the authors' init), real content: the LR images are bicubic x1/4 crops of
scikit-image photographs and each reference is a larger or equal crop of the same photograph,
shifted, so "same patch" (how often the restricted search picks the full search's patch) says
something; the timings do not depend on the content.

    python benchmarks/refsr_throughput.py --device cpu --threads 2
    python benchmarks/refsr_throughput.py --device cuda --n-feats 64 --batch 9
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import numpy as np
import torch
from common import machine_name, synchronise
from skimage import data as skdata
from torch.nn import functional as F

from lit_sr.archs import build_arch, count_parameters
from lit_sr.io import atomic_write
from lit_sr.ops import imresize


def build(arch: str, n_feats: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "masa":
        return build_arch("masa", n_feats=n_feats, n_blks=[1, 1, 1], n_blks_dec=[1, 1, 1, 1, 1, 1])
    return build_arch("ttsr", n_feats=n_feats, num_res_blocks=[1, 1, 1, 1])


def time_call(fn, device: torch.device, repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        fn()
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return best


def train_step_seconds(net, lr, ref, device, repeats: int) -> float:
    def step():
        ref_leaf = ref.clone().requires_grad_(True)
        net.zero_grad(set_to_none=True)
        net(lr, ref_leaf).abs().mean().backward()

    return time_call(step, device, repeats)


@torch.no_grad()
def full_search(lr_feat: torch.Tensor, reflr_feat: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Naive baseline: the best of all (Hr-2)(Wr-2) Ref-down 3x3 patches for every LR 3x3 patch, (N, h*w)."""
    queries = F.normalize(F.unfold(F.pad(lr_feat, (1, 1, 1, 1), mode="replicate"), 3), dim=1)
    keys = F.normalize(F.unfold(reflr_feat, 3), dim=1)
    best_value = torch.full(queries.shape[::2], -float("inf"), device=queries.device)
    best_index = torch.zeros(queries.shape[::2], dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[2], chunk):
        value, index = torch.bmm(keys[:, :, start : start + chunk].transpose(1, 2), queries).max(dim=1)
        better = value > best_value
        best_value, best_index = torch.where(better, value, best_value), torch.where(better, index + start, best_index)
    return best_index


def matching_rows(net, lr, ref, device, repeats: int) -> dict:
    """MASA's coarse-to-fine search vs the full search, on the same encoder features."""
    me = net.match_extract
    with torch.no_grad():
        lr_p, ref_p = net.pad_inputs(lr, ref)
        lr_feat, reflr_feat = net.enc(lr_p)[0], net.enc(imresize(ref_p, 1 / 4))[0]

        masa_s = time_call(lambda: me.search(lr_feat, reflr_feat), device, repeats)
        full_s = time_call(lambda: full_search(lr_feat, reflr_feat), device, repeats)
        _, _, _, (ry, rx), patch_top, patch_left = me.search(lr_feat, reflr_feat)
        wr = reflr_feat.shape[-1] - 2  # the full search's key grid width
        k = me.lr_block_size
        n, c, h, w = lr_feat.shape
        hr_, wr_ = reflr_feat.shape[-2:]
        # multiply-adds of the correlations: coarse (blocks x Ref-down positions x dilations) plus
        # fine (positions x region patches), against positions x all Ref-down patches
        blocks = (h // k) * (w // k)
        masa_macs = n * 9 * c * (blocks * hr_ * wr_ * len(me.dilations) + h * w * (ry - 2) * (rx - 2))
        full_macs = n * 9 * c * h * w * (hr_ - 2) * (wr_ - 2)
        # MASA's matches back in the image layout, as flat indices of the full search's key grid
        flat = (patch_top * wr + patch_left).view(lr.shape[0], h // k, w // k, k, k)
        flat = flat.permute(0, 1, 3, 2, 4).reshape(lr.shape[0], -1)
        agree = (flat == full_search(lr_feat, reflr_feat)).float().mean().item()
    return {"masa_ms": 1e3 * masa_s, "full_ms": 1e3 * full_s, "full_over_masa": full_s / masa_s, "agree": agree,
            "masa_gmac": masa_macs / 1e9, "full_gmac": full_macs / 1e9}


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo_pairs(batch: int, lr_size: int, ref_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LR crops (MATLAB bicubic x1/4 of an HR crop) and references of ``ref_size`` px around them.

    The reference is centred on the HR crop, shifted by (12, -20) px and moved inside the photo; a
    photo smaller than the reference is enlarged first.
    """
    hr_size = 4 * lr_size
    lrs, refs = [], []
    for i in range(batch):
        image = getattr(skdata, PHOTOS[i % len(PHOTOS)])()[..., :3]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        short = min(image.shape[-2:])
        if short < max(ref_size, hr_size) + 32:
            image = imresize(image, (max(ref_size, hr_size) + 32) / short).clamp(0, 1)
        h, w = image.shape[-2:]
        top, left = (h - hr_size) // 2, (w - hr_size) // 2
        lrs.append(imresize(image[:, top : top + hr_size, left : left + hr_size], 1 / 4).clamp(0, 1))
        ref_top = min(max(top + hr_size // 2 - ref_size // 2 + 12, 0), h - ref_size)
        ref_left = min(max(left + hr_size // 2 - ref_size // 2 - 20, 0), w - ref_size)
        refs.append(image[:, ref_top : ref_top + ref_size, ref_left : ref_left + ref_size])
    return torch.stack(lrs), torch.stack(refs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-feats", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr-size", type=int, default=40, help="LR side (CUFED training: 40)")
    parser.add_argument("--ref-sizes", type=int, nargs="+", default=[160, 320], help="reference sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--search-only", action="store_true", help="skip the training-step table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nets = {arch: build(arch, args.n_feats).to(device).train() for arch in ("masa", "ttsr")}
    rows = []
    for ref_size in args.ref_sizes:
        lr, ref = (x.to(device) for x in photo_pairs(args.batch, args.lr_size, ref_size))
        row = {"ref_size": ref_size}
        if not args.search_only:
            for arch, net in nets.items():
                row[f"{arch}_img_s"] = args.batch / train_step_seconds(net, lr, ref, device, args.repeats)
            row["masa_over_ttsr"] = row["masa_img_s"] / row["ttsr_img_s"]
        row.update(matching_rows(nets["masa"], lr, ref, device, args.repeats))
        rows.append(row)
    params = {arch: count_parameters(net) for arch, net in nets.items()}
    print(f"machine: {machine_name(device)}; n_feats {args.n_feats}, one block per stage, batch {args.batch}, "
          f"LR {args.lr_size}px; parameters masa {params['masa']:,}, ttsr {params['ttsr']:,}; best of {args.repeats}")
    if not args.search_only:
        print("| ref px | masa img/s | ttsr img/s | masa/ttsr |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['ref_size']} | {r['masa_img_s']:.2f} | {r['ttsr_img_s']:.2f} | {r['masa_over_ttsr']:.2f} |")
    print("| ref px | MASA search ms | full search ms | full/MASA time | MASA GMAC | full GMAC | full/MASA MACs "
          "| same patch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ref_size']} | {r['masa_ms']:.1f} | {r['full_ms']:.1f} | {r['full_over_masa']:.2f} | "
              f"{r['masa_gmac']:.3f} | {r['full_gmac']:.3f} | {r['full_gmac'] / r['masa_gmac']:.2f} | {r['agree']:.1%} |")
    if args.out:
        result = {"date": datetime.now(timezone.utc).isoformat(), "machine": machine_name(device), "args": vars(args),
                  "params": params, "rows": rows}
        with atomic_write(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
