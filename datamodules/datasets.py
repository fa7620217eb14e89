"""Datasets of aligned LR/HR pairs, as dict samples ``{"lr", "hr", "index", "path"}``.

A dataset is a list of :class:`ImageRecord` (an HR file or tensor, optionally its LR partner) plus
the SR protocol: HR mod-cropped to the scale, LR made with MATLAB bicubic :func:`lit_sr.ops.imresize`
when no LR file is given, aligned random crops, flips and 90-degree rotations for training.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from lit_sr.io import ImageReadError, list_images, read_image
from lit_sr.ops import make_lr


class DataError(ValueError):
    """Bad data: sizes that disagree with the scale, images smaller than the patch, and so on."""


@dataclass
class ImageRecord:
    """One HR image (a file or an in-memory tensor) and, optionally, its LR partner file."""

    name: str
    hr_path: Path | None = None
    lr_path: Path | None = None
    hr_tensor: torch.Tensor | None = None

    def read_hr(self) -> torch.Tensor:
        return self.hr_tensor if self.hr_tensor is not None else read_image(self.hr_path)


def folder_records(hr_dir: str | Path, lr_dir: str | Path | None = None, scale: int = 4) -> list[ImageRecord]:
    """Records for every image of ``hr_dir``; with ``lr_dir``, the DIV2K naming ``0001.png`` -> ``0001x4.png``.

    A missing LR partner raises :class:`FileNotFoundError` naming the file looked for.
    """
    hr_files = list_images(hr_dir)
    records = []
    for hr in hr_files:
        lr = None
        if lr_dir is not None:
            lr = _lr_partner(Path(lr_dir), hr, scale)
        records.append(ImageRecord(name=hr.stem, hr_path=hr, lr_path=lr))
    return records


def _lr_partner(lr_dir: Path, hr: Path, scale: int) -> Path:
    for candidate in (lr_dir / f"{hr.stem}x{scale}{hr.suffix}", lr_dir / hr.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no LR partner for {hr}: expected {lr_dir / f'{hr.stem}x{scale}{hr.suffix}'} (DIV2K naming) "
        f"or {lr_dir / hr.name}"
    )


def random_crop_pair(
    lr: torch.Tensor, hr: torch.Tensor, patch_size: int, scale: int, rng: random.Random, name: str = "?"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random crop: an HR patch of ``patch_size`` and the LR patch of ``patch_size // scale``."""
    lr_patch = patch_size // scale
    h, w = lr.shape[-2:]
    if h < lr_patch or w < lr_patch:
        raise DataError(
            f"image {name} is too small for the patch: LR is {h}x{w}, HR {hr.shape[-2]}x{hr.shape[-1]}; "
            f"expected at least LR {lr_patch}x{lr_patch} (HR patch_size {patch_size} at x{scale})"
        )
    top, left = rng.randint(0, h - lr_patch), rng.randint(0, w - lr_patch)
    lr = lr[..., top : top + lr_patch, left : left + lr_patch]
    hr = hr[..., top * scale : (top + lr_patch) * scale, left * scale : (left + lr_patch) * scale]
    return lr, hr


def augment_pair(
    lr: torch.Tensor, hr: torch.Tensor, rng: random.Random, hflip: bool = True, rot: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random horizontal flip, vertical flip and transpose (90-degree rotations) on both images."""
    if hflip and rng.random() < 0.5:
        lr, hr = lr.flip(-1), hr.flip(-1)
    if rot and rng.random() < 0.5:
        lr, hr = lr.flip(-2), hr.flip(-2)
    if rot and rng.random() < 0.5:
        lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
    return lr.contiguous(), hr.contiguous()


class SRPairDataset(Dataset):
    """LR/HR pairs from records, following the SR training and evaluation protocol.

    Args:
        records: the images.
        scale: upscaling factor.
        patch_size: HR patch size for random crops (BasicSR's ``gt_size``); ``None`` gives whole
            images (evaluation). Must be a multiple of ``scale``.
        augment: random flips and 90-degree rotations (training).
        repeat: each image appears this many times per epoch (more patches per epoch).
        cache: keep decoded images in memory after their first read.
        skip_bad_files: warn (naming the file) and use the next good image instead of raising when
            a file cannot be read or is too small.

    Crops and flips are drawn from torch's global generator, like any PyTorch data pipeline: every
    epoch sees new crops, and a run is reproducible with ``seed_everything(seed, workers=True)``
    (LightningCLI's ``seed_everything``), which also seeds each loader worker per epoch and rank.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        scale: int,
        patch_size: int | None = None,
        augment: bool = False,
        repeat: int = 1,
        cache: bool = False,
        skip_bad_files: bool = False,
    ):
        if not records:
            raise DataError("SRPairDataset got no images")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if patch_size is not None and patch_size % scale:
            raise ValueError(f"patch_size {patch_size} is not a multiple of the scale {scale}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.records = list(records)
        self.scale, self.patch_size, self.augment = scale, patch_size, augment
        self.repeat, self.cache, self.skip_bad_files = repeat, cache, skip_bad_files
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    def load_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole ``(lr, hr)`` of record ``i`` with the size checks of the protocol (no crop)."""
        if i in self._cache:
            return self._cache[i]
        rec = self.records[i]
        hr = rec.read_hr()
        if rec.lr_path is not None:
            lr = read_image(rec.lr_path)
            expected = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
            if tuple(hr.shape[-2:]) != expected:
                raise DataError(
                    f"LR/HR sizes disagree with scale x{self.scale}: HR {rec.hr_path} is "
                    f"{hr.shape[-2]}x{hr.shape[-1]}, LR {rec.lr_path} is {lr.shape[-2]}x{lr.shape[-1]}; "
                    f"expected HR {expected[0]}x{expected[1]}"
                )
        else:
            if min(hr.shape[-2:]) < self.scale:
                raise DataError(f"image {rec.hr_path or rec.name} ({tuple(hr.shape[-2:])}) is smaller than the scale")
            lr, hr = make_lr(hr, self.scale)  # mod-crop, MATLAB bicubic, rounded to 8 bits as a file holds
        if self.cache:
            self._cache[i] = (lr, hr)
        return lr, hr

    def crop_and_augment(self, lr: torch.Tensor, hr: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time random crop and augmentation of pair ``index`` (its name goes into size errors)."""
        if self.patch_size is None and not self.augment:
            return lr, hr  # evaluation: whole images, and no draw from the global generator
        rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))
        if self.patch_size is not None:
            lr, hr = random_crop_pair(lr, hr, self.patch_size, self.scale, rng, self.records[index % len(self.records)].name)
        if self.augment:
            lr, hr = augment_pair(lr, hr, rng)
        return lr, hr

    def _sample(self, index: int, lr: torch.Tensor, hr: torch.Tensor) -> dict:
        rec = self.records[index % len(self.records)]
        return {"lr": lr, "hr": hr, "index": index % len(self.records), "path": str(rec.hr_path or rec.name)}

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                lr, hr = self.load_pair(i)
                lr, hr = self.crop_and_augment(lr, hr, i + (index // n) * n)
                return self._sample(i, lr, hr)
            except (ImageReadError, DataError) as exc:
                if not self.skip_bad_files:
                    raise
                warnings.warn(f"skipping bad file (skip_bad_files=True): {exc}", stacklevel=2)
                self._bad.add(i)
        raise DataError("every image of the dataset is unreadable or too small (skip_bad_files=True)")


class ImageFolderInput(Dataset):
    """LR images to super-resolve (``predict``): a single file or every image of a folder."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_file():
            self.files = [path]
        elif path.is_dir():
            self.files = list_images(path)
        else:
            raise FileNotFoundError(f"predict input not found: {path} (expected an image file or a folder)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        return {"lr": read_image(self.files[i]), "index": i, "path": str(self.files[i])}
