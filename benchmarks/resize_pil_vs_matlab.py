"""How far the authors' TTSR/MASA resizing (PIL bicubic on uint8) is from lit-sr's (MATLAB bicubic on float).

researchmm/TTSR (dataset/cufed.py) and dvlab-research/MASA-SR (dataloader/dataset.py) make LR,
LR-up, Ref-down and Ref-down-up with ``PIL.Image.resize(..., Image.BICUBIC)`` on uint8 arrays;
lit-sr's TTSR and MASA resize inside the network with :func:`lit_sr.ops.imresize` (MATLAB bicubic,
antialiased when downscaling) on float tensors in [0, 1]. This script takes 160 x 160 crops (the
CUFED size) of the photographs shipped with scikit-image, makes the /4 and the /4-then-x4 images
both ways, and reports the absolute difference on the [0, 1] scale (PIL's uint8 / 255 against
imresize's float output, clamped, and rounded to uint8 too), separately for the interior and for
a border band (2 px at the LR scale, 8 px after x4). Deterministic.

    python benchmarks/resize_pil_vs_matlab.py [--out resize_pil_vs_matlab.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from lit_sr.io import atomic_write
from lit_sr.ops import imresize

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def crops(size: int = 160) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in NAMES:
        img = getattr(skimage.data, name)()[..., :3]
        h, w = img.shape[:2]
        for top, left in ((0, 0), ((h - size) // 2, (w - size) // 2), (h - size, w - size)):
            out.append(np.ascontiguousarray(img[top : top + size, left : left + size]))
    return out


def pil_resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.array(Image.fromarray(img).resize((hw[1], hw[0]), Image.BICUBIC))


def band_stats(a: torch.Tensor, b: torch.Tensor, border: int) -> dict[str, float]:
    diff = (a - b).abs()
    inner = diff[..., border:-border, border:-border]
    mask = torch.ones_like(diff, dtype=torch.bool)
    mask[..., border:-border, border:-border] = False
    return {"interior_max": float(inner.max()), "interior_mean": float(inner.mean()),
            "border_max": float(diff[mask].max()), "border_mean": float(diff[mask].mean())}


def measure() -> dict[str, dict[str, float]]:
    pil_down, pil_up, mat_down, mat_up = [], [], [], []
    for img in crops():
        h, w = img.shape[:2]
        down = pil_resize(img, (h // 4, w // 4))
        pil_down.append(torch.from_numpy(down).permute(2, 0, 1).float() / 255)
        pil_up.append(torch.from_numpy(pil_resize(down, (h, w))).permute(2, 0, 1).float() / 255)
        x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
        d = imresize(x, 1 / 4)
        mat_down.append(d[0])
        mat_up.append(imresize(d, 4)[0])
    pd, pu, md, mu = (torch.stack(v) for v in (pil_down, pil_up, mat_down, mat_up))
    r = {}
    for name, p, m, border in (("down_x1/4", pd, md, 2), ("down_up_x1/4_x4", pu, mu, 8)):
        r[f"{name} float"] = band_stats(p, m.clamp(0, 1), border)
        r[f"{name} uint8"] = band_stats(p, (m.clamp(0, 1) * 255).round() / 255, border)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="resize_pil_vs_matlab.json")
    args = parser.parse_args()
    result = measure()
    print(f"{'images':<24} {'interior max':>13} {'interior mean':>14} {'border max':>11} {'border mean':>12}")
    for name, s in result.items():
        print(f"{name:<24} {s['interior_max']:>13.4f} {s['interior_mean']:>14.5f} {s['border_max']:>11.4f} "
              f"{s['border_mean']:>12.5f}")
    with atomic_write(args.out) as tmp:
        tmp.write_text(json.dumps({"crops": len(NAMES) * 3, "size": 160, "result": result}, indent=2))


if __name__ == "__main__":
    main()
