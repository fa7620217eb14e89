"""Lightning data modules for single-image SR.

* :class:`HRFolderDataModule`: folders of HR images, LR made on the fly by MATLAB bicubic.
* :class:`DIV2KDataModule`: DIV2K-style LR/HR pairs (``DIV2K_train_HR/0001.png`` with
  ``DIV2K_train_LR_bicubic/X4/0001x4.png``).
* :class:`EmbeddedPhotosDataModule`: the colour photographs shipped with scikit-image, split
  deterministically into train/val: the default data set, no download.

Fast paths (issue 15): ``DIV2KDataModule(train_prepared=...)`` trains on sub-images made by
``lit-sr data prepare`` (a 480 px sub-image decodes ~25x faster than a 2K image);
``cache_images`` decodes every image once into one shared, memory-mapped uint8 file per node
(:class:`lit_sr.data.SharedImageStore`) instead of a float32 copy per worker; ``augment_on="device"``
flips and rotates whole batches on the GPU after the transfer.

All of them take ``test_sets`` (name -> folder of HR images: Set5, Set14, BSD100, Urban100,
DIV2K valid, ...) evaluated by ``trainer.test`` one loader per set, and ``predict_path`` (an LR
image or folder) for ``trainer.predict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.datasets import ImageFolderInput, ImageRecord, SRPairDataset, folder_records
from lit_sr.data import (
    PreparedDataMismatchError,
    augment_batch,
    default_cache_dir,
    prepared_config,
    read_prepared,
)
from lit_sr.io import write_image
from lit_sr.ops import imresize
from lit_sr.validation import check_choice, check_patch_size

AugmentOn = Literal["cpu", "device"]

# Colour photographs that ship inside scikit-image (no pooch download). Synthetic images
# (colorwheel, logo) and grayscale ones are left out.
EMBEDDED_TRAIN = ("chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left",
                  "motorcycle_right")
EMBEDDED_VAL = ("astronaut", "coffee")


def load_embedded_photo(name: str, max_side: int | None = 512) -> torch.Tensor:
    """One scikit-image photograph as a ``(3, H, W)`` tensor in [0, 1], shrunk (MATLAB bicubic) to ``max_side``."""
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _disp = skimage.data.stereo_motorcycle()
        arr = left if name.endswith("left") else right
    else:
        if not hasattr(skimage.data, name):
            raise ValueError(f"unknown embedded photo {name!r}; expected one of {EMBEDDED_TRAIN + EMBEDDED_VAL}")
        arr = getattr(skimage.data, name)()
    img = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float() / 255.0
    if max_side is not None and max(img.shape[-2:]) > max_side:
        img = imresize(img, size=_fit(img.shape[-2:], max_side)).clamp(0, 1)
        img = (img * 255).round() / 255
    return img


def _fit(hw, max_side: int) -> tuple[int, int]:
    h, w = hw
    f = max_side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def default_num_workers(devices: int = 1) -> int:
    """Loader workers per device when none are given: the cores this process may use, shared by the
    devices of the node, at most 8 (``min(8, cores // devices)``, at least 1; 2 on a 2-core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, devices)))


def prepared_records(directory: str | Path, scale: int) -> list[ImageRecord]:
    """Records of the sub-image pairs of a ``lit-sr data prepare`` output (checked against its manifest)."""
    return [ImageRecord(name=p.name, hr_path=p.hr_path, lr_path=p.lr_path) for p in read_prepared(directory, scale)]


def tile_records(records: list[ImageRecord], tile: int | None) -> list[ImageRecord]:
    """Split each image into non-overlapping ``tile`` x ``tile`` HR tiles (edges that don't fill a tile are dropped)."""
    if tile is None:
        return records
    tiles = []
    for rec in records:
        hr = rec.read_hr()
        h, w = hr.shape[-2:]
        for top in range(0, h - tile + 1, tile):
            for left in range(0, w - tile + 1, tile):
                crop = hr[:, top : top + tile, left : left + tile].clone()
                tiles.append(ImageRecord(name=f"{rec.name}_y{top}_x{left}", hr_tensor=crop))
    if not tiles:
        raise ValueError(f"no image is at least {tile}x{tile}: nothing to tile")
    return tiles


class SRDataModule(L.LightningDataModule):
    """Shared loaders and protocol; subclasses say where the train and val images come from.

    Args:
        scale: upscaling factor (2, 3, 4, ...).
        patch_size: HR training patch (BasicSR ``gt_size``; 192 for x4 = 48 px LR).
        batch_size: training batch size per device.
        val_batch_size: evaluation batch size (1 because benchmark images differ in size).
        num_workers: loader workers; ``None`` takes :func:`default_num_workers` (the machine's
            cores shared by the node's devices, at most 8).
        augment: flips and 90-degree rotations for training.
        augment_on: ``"cpu"``: in the loader workers, per sample; ``"device"``: on whole batches
            after they reach the device (:func:`lit_sr.data.augment_batch`, in
            ``on_after_batch_transfer``), which takes the work off the CPU. Same distribution.
        repeat: training images are repeated this many times per epoch.
        cache_images: decode every image once into a shared uint8 store (one memory-mapped file
            per node, read by every worker and rank: :class:`lit_sr.data.SharedImageStore`).
        cache_dir: where that file goes (default :func:`lit_sr.data.default_cache_dir`: node-local
            temp storage, or ``$LIT_SR_CACHE_DIR``); it is reused while the images are unchanged.
        skip_bad_files: warn and skip unreadable or too-small files instead of raising.
        test_sets: ``{name: folder of HR images}`` for ``trainer.test``.
        predict_path: an LR image file or folder for ``trainer.predict``.
        max_val_images: evaluate only the first N validation images (quick runs).
        train_tile: split every training image into non-overlapping HR tiles of this size, each
            a sample of its own (small data sets such as the embedded photos then have enough
            samples to poison a fraction of them). Images are decoded into memory for this.
        val_tile: the same for validation images (a backdoor implanted at one image size is
            evaluated at that size).
        seed: seed of crops and augmentation.
    """

    def __init__(
        self,
        scale: int = 4,
        patch_size: int = 192,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int | None = None,
        augment: bool = True,
        augment_on: AugmentOn = "cpu",
        repeat: int = 1,
        cache_images: bool = False,
        cache_dir: str | None = None,
        skip_bad_files: bool = False,
        test_sets: dict[str, str] | None = None,
        predict_path: str | None = None,
        max_val_images: int | None = None,
        train_tile: int | None = None,
        val_tile: int | None = None,
    ):
        super().__init__()
        patch_size = check_patch_size(patch_size, scale)
        for name, tile in (("train_tile", train_tile), ("val_tile", val_tile)):
            if tile is not None and (tile <= 0 or tile % scale):
                raise ValueError(f"{name}={tile} must be a positive multiple of scale {scale}")
        if train_tile is not None and train_tile < patch_size:
            raise ValueError(f"train_tile={train_tile} is smaller than patch_size={patch_size}")
        self.train_tile, self.val_tile = train_tile, val_tile
        self.scale, self.patch_size = scale, patch_size
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                        or num_workers < 0):
            raise ValueError(f"num_workers must be an integer >= 0 or None (the machine's cores), got {num_workers!r}")
        self.batch_size, self.val_batch_size, self._num_workers = batch_size, val_batch_size, num_workers
        self.augment, self.repeat, self.cache_images = augment, repeat, cache_images
        self.augment_on = check_choice(augment_on, "augment_on", ("cpu", "device"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.skip_bad_files = skip_bad_files
        self.test_sets = dict(test_sets or {})
        self.predict_path = predict_path
        self.max_val_images = max_val_images
        self.train_dataset: SRPairDataset | None = None
        self.val_dataset: SRPairDataset | None = None
        self.test_datasets: dict[str, SRPairDataset] = {}

    # -- what subclasses provide
    def train_records(self) -> list[ImageRecord]:
        raise NotImplementedError

    def val_records(self) -> list[ImageRecord]:
        raise NotImplementedError

    @property
    def num_workers(self) -> int:
        """Loader workers: the given number, or :func:`default_num_workers` for this node's devices."""
        if self._num_workers is not None:
            return self._num_workers
        trainer = getattr(self, "trainer", None)
        return default_num_workers(trainer.num_devices if trainer is not None else 1)

    @num_workers.setter
    def num_workers(self, value: int | None) -> None:
        self._num_workers = value

    # -- protocol
    def _dataset(self, records, train: bool) -> SRPairDataset:
        dataset = SRPairDataset(
            records,
            scale=self.scale,
            patch_size=self.patch_size if train else None,
            augment=self.augment and train and self.augment_on == "cpu",
            repeat=self.repeat if train else 1,
            skip_bad_files=self.skip_bad_files,
        )
        if self.cache_images:
            # built here, in the process that sets up, before any loader worker forks
            dataset.build_store(self.cache_dir or default_cache_dir())
        return dataset

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on="device"``: flips and 90-degree rotations of training batches, on the device."""
        trainer = getattr(self, "trainer", None)
        if (self.augment and self.augment_on == "device" and trainer is not None and trainer.training
                and isinstance(batch, dict) and "lr" in batch and "hr" in batch):
            batch = dict(batch)
            batch["lr"], batch["hr"] = augment_batch(batch["lr"], batch["hr"])
        return batch

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(tile_records(self.train_records(), self.train_tile), train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            records = tile_records(self.val_records(), self.val_tile)
            if self.max_val_images is not None:
                records = records[: self.max_val_images]
            self.val_dataset = self._dataset(records, train=False)
        if stage in (None, "test") and not self.test_datasets:
            if not self.test_sets:
                raise ValueError("trainer.test needs data.test_sets: {name: folder of HR images}")
            self.test_datasets = {
                name: self._dataset(folder_records(folder), train=False) for name, folder in self.test_sets.items()
            }

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle and len(dataset) >= batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.val_batch_size, shuffle=False) for ds in self.test_datasets.values()]

    def test_set_names(self) -> list[str]:
        """Names of the test loaders, in ``dataloader_idx`` order."""
        return list(self.test_sets)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ValueError("trainer.predict needs data.predict_path: an LR image file or folder")
        return DataLoader(ImageFolderInput(self.predict_path), batch_size=1, num_workers=self.num_workers)


class HRFolderDataModule(SRDataModule):
    """HR-only folders; LR images are made on the fly with MATLAB bicubic (the standard protocol).

    Args:
        train_hr: folder of HR training images.
        val_hr: folder of HR validation images.
        **kwargs: see :class:`SRDataModule`.
    """

    def __init__(self, train_hr: str, val_hr: str, **kwargs):
        super().__init__(**kwargs)
        self.train_hr, self.val_hr = train_hr, val_hr

    def train_records(self) -> list[ImageRecord]:
        return folder_records(self.train_hr)

    def val_records(self) -> list[ImageRecord]:
        return folder_records(self.val_hr)


class DIV2KDataModule(SRDataModule):
    """DIV2K-style pairs: ``train_hr/0001.png`` with ``train_lr/0001x4.png`` (LR from files, not recomputed).

    Args:
        train_hr: e.g. ``DIV2K/DIV2K_train_HR``.
        val_hr: e.g. ``DIV2K/DIV2K_valid_HR``.
        train_lr: e.g. ``DIV2K/DIV2K_train_LR_bicubic/X4``; ``None`` makes LR on the fly.
        val_lr: e.g. ``DIV2K/DIV2K_valid_LR_bicubic/X4``; ``None`` makes LR on the fly.
        train_prepared: the fast path: train on the sub-images of a ``lit-sr data prepare``
            output folder (e.g. ``DIV2K/prepared/DIV2K_train_x4``) instead of reading ``train_hr`` /
            ``train_lr``; each sub-image is a record, so ``repeat`` counts passes over sub-images
            (as BasicSR's ``dataset_enlarge_ratio`` does with its ``*_sub`` folders). When
            ``train_hr`` (and ``train_lr``) are given too, they name the folders it was prepared
            from, and a prepared folder made from other folders raises an error. A list of folders
            trains on all of them (DF2K: DIV2K's and Flickr2K's prepared folders).
        **kwargs: see :class:`SRDataModule`.
    """

    def __init__(self, train_hr: str | None = None, val_hr: str | None = None, train_lr: str | None = None,
                 val_lr: str | None = None, train_prepared: str | list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if train_hr is None and train_prepared is None:
            raise ValueError("DIV2KDataModule needs train_hr (raw folders) or train_prepared (a prepared folder)")
        if val_hr is None:
            raise ValueError("DIV2KDataModule needs val_hr (e.g. DIV2K/DIV2K_valid_HR)")
        self.train_hr, self.train_lr, self.val_hr, self.val_lr = train_hr, train_lr, val_hr, val_lr
        self.train_prepared = train_prepared

    def train_records(self) -> list[ImageRecord]:
        if self.train_prepared is not None:
            folders = [self.train_prepared] if isinstance(self.train_prepared, str) else list(self.train_prepared)
            if not folders:
                raise ValueError("train_prepared is an empty list: give one or more prepared folders")
            if self.train_hr is not None:
                if len(folders) > 1:
                    raise ValueError(f"train_hr={self.train_hr!r} names one source, but train_prepared lists "
                                     f"{len(folders)} folders: leave train_hr/train_lr out")
                self._check_prepared_sources(folders[0])
            return [rec for folder in folders for rec in prepared_records(folder, self.scale)]
        return folder_records(self.train_hr, self.train_lr, self.scale)

    def val_records(self) -> list[ImageRecord]:
        return folder_records(self.val_hr, self.val_lr, self.scale)

    def _check_prepared_sources(self, folder: str) -> None:
        config = prepared_config(folder)
        for name, given, used in (("train_hr", self.train_hr, config["hr_dir"]),
                                  ("train_lr", self.train_lr, config["lr_dir"])):
            given = None if given is None else str(Path(given).resolve())
            if given != used:
                raise PreparedDataMismatchError(
                    f"{folder} was prepared from {name}={used}, but the data module was given "
                    f"{name}={given}: prepare it from these folders or fix the paths")


class EmbeddedPhotosDataModule(SRDataModule):
    """The scikit-image colour photographs: 7 for training, 2 for validation, no download.

    Args:
        max_side: photographs larger than this are shrunk (MATLAB bicubic) so CPU runs stay quick.
        train_photos / val_photos: which photographs (names in :mod:`skimage.data`).
        **kwargs: see :class:`SRDataModule` (defaults here: patch 96, batch 16, repeat 16, no workers).
    """

    def __init__(
        self,
        max_side: int | None = 384,
        train_photos: tuple[str, ...] = EMBEDDED_TRAIN,
        val_photos: tuple[str, ...] = EMBEDDED_VAL,
        patch_size: int = 96,
        batch_size: int = 16,
        repeat: int = 16,
        num_workers: int = 0,
        **kwargs,
    ):
        super().__init__(patch_size=patch_size, batch_size=batch_size, repeat=repeat, num_workers=num_workers,
                         cache_images=True, **kwargs)
        self.max_side, self.train_photos, self.val_photos = max_side, tuple(train_photos), tuple(val_photos)

    def _records(self, names) -> list[ImageRecord]:
        return [ImageRecord(name=n, hr_tensor=load_embedded_photo(n, self.max_side)) for n in names]

    def train_records(self) -> list[ImageRecord]:
        return self._records(self.train_photos)

    def val_records(self) -> list[ImageRecord]:
        return self._records(self.val_photos)


def export_embedded_photos(folder: str | Path, split: str = "val", max_side: int | None = 384) -> list[Path]:
    """Write the embedded photographs of a split as PNG files (e.g. to use them as a ``test_sets`` folder)."""
    names = {"train": EMBEDDED_TRAIN, "val": EMBEDDED_VAL}[split]
    return [write_image(load_embedded_photo(n, max_side), Path(folder) / f"{n}.png") for n in names]
