"""The poisoned training set: the live active set, the cached poisoned pairs and the data set that swaps them in.

Split from :mod:`datamodules.poisoned` (the data module), which builds these three objects and
hands them to its loaders; loader workers get them without the data module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from datamodules.datasets import SRPairDataset, crop_box
from lit_sr.data.images import to_float as images_to_float
from lit_sr.poison.cache import PoisonCache, sha256_tensors, to_float
from lit_sr.poison.generation import sample_key


class ActiveSet:
    """The active poisoned indices, shared by reference between the data module and its data set."""

    def __init__(self, indices: Sequence[int] = ()):
        self.indices: frozenset[int] = frozenset(int(i) for i in indices)


class CachedPairs:
    """``index -> (triggered lr, poisoned hr)`` (float32, whole images) read from a poison cache;
    :meth:`training_patch` reads only a training patch.

    A small picklable object, so loader workers get it without the data module.

    Args:
        cache: the (verified) cache.
        keep_in_memory: keep pairs (as stored: uint8 with ``quantize``) after their first read (small
            data sets); otherwise every call reads the file (large images).
    """

    def __init__(self, cache: PoisonCache, keep_in_memory: bool):
        self.cache, self.keep_in_memory = cache, keep_in_memory
        self._memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _key(self, index: int) -> str:
        key = sample_key("train_", index)
        if key not in self.cache.entries:
            raise KeyError(f"sample {index} is not in the candidate pool of the poison cache {self.cache.directory}")
        return key

    def stored(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole pair as stored (uint8 with ``quantize``, else float32); kept with ``keep_in_memory``."""
        if index in self._memory:
            return self._memory[index]
        tensors = self.cache.read(self._key(index))
        pair = (tensors["lr"], tensors["hr"])
        if self.keep_in_memory:
            self._memory[index] = pair
        return pair

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.stored(index)
        return to_float(lr), to_float(hr)

    def training_patch(self, index: int, base: SRPairDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool sample ``index`` cropped and augmented as ``base`` crops a clean sample, float32.

        Crop first: the box is drawn from the stored sizes (:meth:`SRPairDataset.draw_patch`, the same
        draws as :meth:`SRPairDataset.crop_and_augment`), only the patch is read from the file
        (safetensors slices read just its rows) and only the patch is converted to float, so the
        sample is the one the whole-image path gives for the same seed, at the cost of a patch.
        """
        if self.keep_in_memory or index in self._memory:
            return base.crop_and_augment(*self.stored(index), index)
        from safetensors import safe_open

        with safe_open(str(self.cache.sample_file(self._key(index))), framework="pt") as handle:
            lr, hr = handle.get_slice("lr"), handle.get_slice("hr")
            box, flips = base.draw_patch(tuple(lr.get_shape()[-2:]), tuple(hr.get_shape()[-2:]), index)
            lr, hr = crop_box(lr, hr, box, base.scale) if box is not None else (lr[:], hr[:])
        return images_to_float(lr, **flips), images_to_float(hr, **flips)

    def centre_crop(self, index: int, lr_size: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The centre ``lr_size`` LR patch of pool sample ``index`` and its HR partner, float32.

        Without the pair in memory only the patch is read from the file (:meth:`PoisonCache.read_region`).
        """
        if index in self._memory or self.keep_in_memory:
            return centre_crop_pair(*self(index), lr_size, scale, index)
        key = self._key(index)
        _, h, w = self.cache.shapes(key)["lr"]
        top, left = centre_box(h, w, lr_size, index, scale)
        s = scale
        region = self.cache.read_region(key, {"lr": (top, left, lr_size, lr_size),
                                              "hr": (top * s, left * s, lr_size * s, lr_size * s)})
        return to_float(region["lr"]), to_float(region["hr"])


def centre_box(h: int, w: int, lr_size: int, index: int, scale: int) -> tuple[int, int]:
    """Top-left corner of the centre ``lr_size`` square of an ``h x w`` LR image (a named error if it does not fit)."""
    if h < lr_size or w < lr_size:
        raise ValueError(f"pool sample {index} (LR {h}x{w}) is smaller than the LR patch {lr_size}x{lr_size} "
                         f"(patch_size={lr_size * scale}, scale={scale})")
    return (h - lr_size) // 2, (w - lr_size) // 2


def centre_crop_pair(lr: torch.Tensor, hr: torch.Tensor, lr_size: int, scale: int,
                     index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre ``lr_size`` LR patch of ``lr`` and the matching ``lr_size * scale`` patch of ``hr``."""
    top, left = centre_box(*lr.shape[-2:], lr_size, index, scale)
    s = scale
    return (lr[:, top : top + lr_size, left : left + lr_size],
            hr[:, top * s : (top + lr_size) * s, left * s : (left + lr_size) * s])


class PoisonedTrainDataset(Dataset):
    """The base training set with the active poisoned samples replaced by their cached pairs.

    Args:
        base: the clean training set (:class:`~datamodules.datasets.SRPairDataset`).
        pairs: :class:`CachedPairs` of the pool.
        active: the live active set.
    """

    def __init__(self, base: SRPairDataset, pairs: CachedPairs, active: ActiveSet):
        self.base, self.pairs, self.active = base, pairs, active

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.base.records)
        if i not in self.active.indices:
            sample = self.base[index]
            sample["poisoned"] = False
            return sample
        lr, hr = self.pairs.training_patch(i, self.base)  # cropped and augmented exactly as a clean sample
        sample = self.base._sample(i, lr, hr)
        sample["poisoned"] = True
        return sample


def _records_fingerprint(dataset: SRPairDataset) -> str:
    """Identity of a data set's images: names, files and sizes, and the bytes of in-memory images."""
    digest = hashlib.sha256()
    for rec in dataset.records:
        digest.update(rec.name.encode())
        for p in (rec.hr_path, rec.lr_path):
            if p is not None:
                digest.update(f"{p}:{Path(p).stat().st_size if Path(p).is_file() else -1}".encode())
        if rec.hr_tensor is not None:
            digest.update(sha256_tensors(rec.hr_tensor).encode())
    return digest.hexdigest()
