"""Datasets of aligned LR/HR pairs, as dict samples ``{"lr", "hr", "index", "path"}``.

A dataset is a list of :class:`ImageRecord` (an HR file or tensor, optionally its LR partner) plus
the SR protocol: HR mod-cropped to the scale, LR made with MATLAB bicubic :func:`lit_sr.ops.imresize`
when no LR file is given, aligned random crops, flips and 90-degree rotations for training.

Pixels stay uint8 until the patch is cut (:mod:`lit_sr.data.images`): decoding, caching and
cropping work on 8-bit images, and only the patch is converted to float32. Cached images live in a
:class:`lit_sr.data.SharedImageStore` (one memory-mapped copy per node), not in each worker.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from lit_sr.data.images import bicubic_lr, is_eight_bit, lr_partner, read_pixels, to_float, to_uint8
from lit_sr.data.shared import SharedImageStore, StoreEntryError
from lit_sr.io import ImageReadError, list_images, read_image
from lit_sr.ops import mod_crop
from lit_sr.validation import check_patch_size


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
        """The HR image as float32 in [0, 1]."""
        return self.hr_tensor if self.hr_tensor is not None else read_image(self.hr_path)

    def read_hr_pixels(self) -> torch.Tensor:
        """The HR image as decoded: uint8 for 8-bit files (see :func:`lit_sr.data.read_pixels`)."""
        return self.hr_tensor if self.hr_tensor is not None else read_pixels(self.hr_path)

    @property
    def label(self) -> str:
        """What errors call this record: its file path, or its name for an in-memory image."""
        return str(self.hr_path) if self.hr_path is not None else self.name


def folder_records(hr_dir: str | Path, lr_dir: str | Path | None = None, scale: int = 4) -> list[ImageRecord]:
    """Records for every image of ``hr_dir``; with ``lr_dir``, the DIV2K naming ``0001.png`` -> ``0001x4.png``.

    A missing LR partner raises :class:`FileNotFoundError` naming the file looked for.
    """
    hr_files = list_images(hr_dir)
    records = []
    for hr in hr_files:
        lr = None
        if lr_dir is not None:
            lr = lr_partner(Path(lr_dir), hr, scale)
        records.append(ImageRecord(name=hr.stem, hr_path=hr, lr_path=lr))
    return records


def random_crop_pair(
    lr: torch.Tensor, hr: torch.Tensor, patch_size: int, scale: int, rng: random.Random, name: str = "?"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random crop: an HR patch of ``patch_size`` and the LR patch of ``patch_size // scale``.

    Any dtype (the loaders crop uint8 pixels); the crops are views. ``name`` (the file path) goes
    into the error for an image smaller than the patch.
    """
    box = random_box(tuple(lr.shape[-2:]), tuple(hr.shape[-2:]), patch_size, scale, rng, name)
    return crop_box(lr, hr, box, scale)


def random_box(lr_hw: tuple[int, int], hr_hw: tuple[int, int], patch_size: int, scale: int, rng: random.Random,
               name: str = "?") -> tuple[int, int, int]:
    """The LR ``(top, left, size)`` of an aligned random crop of an LR image of ``lr_hw`` (two ``rng`` draws).

    Only the sizes are needed, so a reader can draw the box first and then read just the patch.
    """
    lr_patch = patch_size // scale
    h, w = lr_hw
    if h < lr_patch or w < lr_patch:
        raise DataError(
            f"image {name} is too small for the patch: LR is {h}x{w}, HR {hr_hw[0]}x{hr_hw[1]}; "
            f"expected at least LR {lr_patch}x{lr_patch} (HR patch_size {patch_size} at x{scale})"
        )
    return rng.randint(0, h - lr_patch), rng.randint(0, w - lr_patch), lr_patch


def crop_box(lr, hr, box: tuple[int, int, int], scale: int):
    """The LR patch ``box = (top, left, size)`` of ``lr`` and the aligned ``size * scale`` patch of ``hr``.

    Works on anything sliceable as ``[:, rows, cols]`` with (C, H, W) layout: tensors (views) and
    safetensors slices (only the patch's rows are read from the file).
    """
    top, left, size = box
    return (lr[:, top : top + size, left : left + size],
            hr[:, top * scale : (top + size) * scale, left * scale : (left + size) * scale])


def augment_draws(rng: random.Random, hflip: bool = True, rot: bool = True) -> dict[str, bool]:
    """BasicSR's augmentation coins: horizontal flip, vertical flip, transpose (with both: the 8 symmetries)."""
    return {"hflip": hflip and rng.random() < 0.5, "vflip": rot and rng.random() < 0.5,
            "transpose": rot and rng.random() < 0.5}


def augment_pair(
    lr: torch.Tensor, hr: torch.Tensor, rng: random.Random, hflip: bool = True, rot: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random horizontal flip, vertical flip and transpose (90-degree rotations) on both images."""
    draws = augment_draws(rng, hflip, rot)
    if draws["hflip"]:
        lr, hr = lr.flip(-1), hr.flip(-1)
    if draws["vflip"]:
        lr, hr = lr.flip(-2), hr.flip(-2)
    if draws["transpose"]:
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
        cache: keep decoded uint8 images in this process after their first read (direct use; the
            data modules' ``cache_images`` uses ``store`` instead, shared by all workers).
        skip_bad_files: warn (naming the file) and use the next good image instead of raising when
            a file cannot be read or is too small.
        store: a :class:`~lit_sr.data.SharedImageStore` holding item ``i``'s ``(lr, hr)`` uint8
            pixels (see :meth:`build_store`); read instead of the files.

    Crops and flips are drawn from torch's global generator, like any PyTorch data pipeline: every
    epoch sees new crops, and a run is reproducible with ``seed_everything(seed, workers=True)``
    (LightningCLI's ``seed_everything``), which also seeds each loader worker per epoch and rank.
    The crop is cut from the uint8 pixels and only the crop is converted to float.
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
        store: SharedImageStore | None = None,
    ):
        if not records:
            raise DataError("SRPairDataset got no images")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if patch_size is not None:
            patch_size = check_patch_size(patch_size, scale)
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if store is not None and len(store) != len(records):
            raise ValueError(f"the image store {store.data_path} holds {len(store)} items for {len(records)} records")
        self.records = list(records)
        self.scale, self.patch_size, self.augment = scale, patch_size, augment
        self.repeat, self.cache, self.skip_bad_files = repeat, cache, skip_bad_files
        self.store = store
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    def decode_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole ``(lr, hr)`` pixels of record ``i`` from its files, with the protocol's size checks.

        uint8 for 8-bit files (float32 for 16-bit ones); an LR made by bicubic is rounded to uint8,
        what MATLAB writes.
        """
        rec = self.records[i]
        hr = rec.read_hr_pixels()
        if rec.lr_path is not None:
            lr = read_pixels(rec.lr_path)
            expected = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
            if tuple(hr.shape[-2:]) != expected:
                raise DataError(
                    f"LR/HR sizes disagree with scale x{self.scale}: HR {rec.hr_path} is "
                    f"{hr.shape[-2]}x{hr.shape[-1]}, LR {rec.lr_path} is {lr.shape[-2]}x{lr.shape[-1]}; "
                    f"expected HR {expected[0]}x{expected[1]}"
                )
        else:
            hr = mod_crop(hr, self.scale)
            if min(hr.shape[-2:]) < self.scale:
                raise DataError(f"image {rec.label} ({tuple(hr.shape[-2:])}) is smaller than the scale")
            # MATLAB writes LR images as uint8: round so that training sees what a file would hold.
            lr = bicubic_lr(hr, self.scale)
        return lr, hr

    def stored_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode_pair`` as uint8 for the shared store; images that are not 8-bit raise a named error."""
        lr, hr = self.decode_pair(i)
        for which, img in (("LR", lr), ("HR", hr)):
            if not is_eight_bit(img):
                raise DataError(f"cache_images stores 8-bit pixels, but the {which} image of {self.records[i].label} "
                                "has finer levels (a 16-bit file?); set cache_images: false for it")
        return to_uint8(lr), to_uint8(hr)

    def load_pixels(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole ``(lr, hr)`` pixels of record ``i`` (uint8 unless 16-bit): from the store, the cache or the files."""
        if self.store is not None:
            try:
                return self.store.get(i)
            except StoreEntryError as exc:
                raise DataError(str(exc)) from exc
        if i in self._cache:
            return self._cache[i]
        pair = self.decode_pair(i)
        if self.cache:
            self._cache[i] = pair
        return pair

    def load_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole ``(lr, hr)`` of record ``i`` as float32 in [0, 1], with the size checks (no crop)."""
        lr, hr = self.load_pixels(i)
        return to_float(lr), to_float(hr)

    def crop_and_augment(self, lr: torch.Tensor, hr: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-time random crop and augmentation of pair ``index`` (its file goes into size errors).

        Takes pixels of any dtype (uint8 or float) and returns float32 in [0, 1]: the crop is cut
        first, so only the patch is converted.
        """
        box, flips = self.draw_patch(tuple(lr.shape[-2:]), tuple(hr.shape[-2:]), index)
        if box is not None:
            lr, hr = crop_box(lr, hr, box, self.scale)
        # the flips are applied inside the float conversion of the patch: one pass, no extra copies
        return to_float(lr, **flips), to_float(hr, **flips)

    def draw_patch(self, lr_hw: tuple[int, int], hr_hw: tuple[int, int],
                   index: int) -> tuple[tuple[int, int, int] | None, dict[str, bool]]:
        """The random draws of :meth:`crop_and_augment` for a pair of these sizes: the LR box or ``None``, the flips.

        Drawn from torch's global generator exactly as :meth:`crop_and_augment` draws them, so a reader
        that knows only the sizes (the poison cache's file header) can read just the patch and get the
        same sample. Evaluation (no patch, no augmentation) draws nothing.
        """
        if self.patch_size is None and not self.augment:
            return None, {}  # evaluation: whole images, and no draw from the global generator
        rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))
        box = None
        if self.patch_size is not None:
            box = random_box(lr_hw, hr_hw, self.patch_size, self.scale, rng,
                             self.records[index % len(self.records)].label)
        return box, (augment_draws(rng) if self.augment else {})

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
                lr, hr = self.load_pixels(i)
                lr, hr = self.crop_and_augment(lr, hr, i + (index // n) * n)
                return self._sample(i, lr, hr)
            except (ImageReadError, DataError) as exc:
                if not self.skip_bad_files:
                    raise
                warnings.warn(f"skipping bad file (skip_bad_files=True): {exc}", stacklevel=2)
                self._bad.add(i)
        raise DataError("every image of the dataset is unreadable or too small (skip_bad_files=True)")

    # -- the shared store
    def fingerprint(self) -> str:
        """A hash of what the decoded pixels depend on: files (path, size, mtime), in-memory images, scale."""
        import hashlib

        digest = hashlib.sha256(f"pairs-v1 scale={self.scale}".encode())
        for rec in self.records:
            for path in (rec.hr_path, rec.lr_path):
                if path is not None:
                    st = Path(path).stat() if Path(path).exists() else None
                    digest.update(f"{Path(path).resolve()}|{st and st.st_size}|{st and st.st_mtime_ns};".encode())
            if rec.hr_tensor is not None:
                t = rec.hr_tensor.detach().cpu().contiguous()
                digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
                digest.update(t.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:24]

    def build_store(self, directory: str | Path, progress: bool = True) -> SharedImageStore:
        """Decode every pair once into a shared uint8 store under ``directory`` (reused when it exists) and use it."""
        skip = (ImageReadError, DataError) if self.skip_bad_files else ()
        self.store = SharedImageStore.open_or_build(directory, self.fingerprint(), len(self.records),
                                                    self.stored_pair, skip_errors=skip, progress=progress,
                                                    description=f"cache {len(self.records)} images")
        return self.store


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
