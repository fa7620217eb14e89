"""The report's evaluation images: :class:`ImagePair` and :func:`load_pairs` (HR folder -> LR/HR pairs).

Its own module because the runner and the studies it calls (robust, robustness index) both read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lit_sr.io import list_images, read_image
from lit_sr.ops import make_lr, mod_crop


@dataclass
class ImagePair:
    """One evaluation image: its name, the LR ``(C, h, w)`` and HR ``(C, H, W)`` tensors (CPU)."""

    name: str
    lr: torch.Tensor
    hr: torch.Tensor


def load_pairs(folder: str | Path, scale: int, max_images: int | None = None, crop_size: int | None = None) -> list[ImagePair]:
    """The HR images of a folder (sorted, the first ``max_images``) with their LR counterparts.

    HR images are mod-cropped to the scale and their LR images made by :func:`lit_sr.ops.make_lr`
    (MATLAB bicubic, rounded to 8 bits, as the benchmark's LR PNG files are), the data modules'
    protocol. ``crop_size`` (LR pixels) centre-crops every image pair first (images smaller than
    that are kept whole), so that equal sizes can be batched.
    """
    pairs = []
    for path in list_images(folder)[:max_images]:
        hr = mod_crop(read_image(path), scale)
        if crop_size is not None:
            size = crop_size * scale
            h, w = hr.shape[-2:]
            top, left = max(0, (h - size) // 2) // scale * scale, max(0, (w - size) // 2) // scale * scale
            hr = hr[:, top : top + size, left : left + size]
        try:
            lr, hr = make_lr(hr, scale)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        pairs.append(ImagePair(name=path.stem, lr=lr, hr=hr))
    return pairs
