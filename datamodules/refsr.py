"""Lightning data modules for reference-based SR: triplets ``{"lr", "hr", "ref", "level", "index", "path"}``.

* :class:`CUFEDDataModule`: CUFED training pairs (``train/input/000000.png`` with
  ``train/ref/000000.png``), CUFED5 evaluation (``000_0.png`` the HR image, ``000_1.png`` ...
  ``000_5.png`` its references from most to least similar), and WR-SR (``input/001.png`` with
  ``ref/001_ref.png``) as further test sets.
* :class:`EmbeddedRefPairsDataModule`: the default, built from the photographs that ship with
  scikit-image, no download: the stereo pair ``motorcycle_left`` / ``motorcycle_right`` (each the
  other's reference) and, for the other photos, references of graded similarity
  (:func:`graded_references`).

``level`` is the similarity level (1 most similar ... 5 least; 0 where the layout has none).
Evaluation and test sets are split by level, one loader each (``cufed5_l1`` ... ``cufed5_l5``),
so every metric a module logs per test set is stratified by similarity. LR images are made with
MATLAB bicubic from the mod-cropped HR image (the CUFED protocol of TTSR).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.datasets import DataError
from datamodules.sr import EMBEDDED_TRAIN, EMBEDDED_VAL, load_embedded_photo
from lit_sr.io import list_images, read_image
from lit_sr.ops import imresize, mod_crop
from lit_sr.validation import check_patch_size

LEVELS = (1, 2, 3, 4, 5)
_CUFED5_NAME = re.compile(r"^(\d+)_([0-5])$")


@dataclass
class RefRecord:
    """One HR image and its reference: files or in-memory tensors, a similarity ``level`` (0: none)."""

    name: str
    hr_path: Path | None = None
    ref_path: Path | None = None
    hr_tensor: torch.Tensor | None = None
    ref_tensor: torch.Tensor | None = None
    level: int = 0

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        hr = self.hr_tensor if self.hr_tensor is not None else read_image(self.hr_path)
        ref = self.ref_tensor if self.ref_tensor is not None else read_image(self.ref_path)
        return hr, ref


# --------------------------------------------------------------------------- layouts


def _folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def cufed_train_records(root: str | Path) -> list[RefRecord]:
    """CUFED training pairs: every ``root/input/X.png`` with ``root/ref/X.png`` (a missing partner raises)."""
    root = _folder(root, "CUFED training")
    ref_dir = _folder(root / "ref", "CUFED training reference (expected <root>/ref)")
    records = []
    for hr in list_images(_folder(root / "input", "CUFED training input (expected <root>/input)")):
        ref = ref_dir / hr.name
        if not ref.is_file():
            raise FileNotFoundError(f"CUFED: no reference for {hr}: expected {ref}")
        records.append(RefRecord(name=hr.stem, hr_path=hr, ref_path=ref))
    return records


def cufed5_records(root: str | Path, level: int) -> list[RefRecord]:
    """CUFED5 groups ``NNN_0.png`` (HR) with ``NNN_<level>.png`` (reference), sorted by group number."""
    if level not in LEVELS:
        raise ValueError(f"CUFED5 similarity level must be one of {LEVELS}, got {level!r}")
    root = _folder(root, "CUFED5")
    groups: dict[str, dict[int, Path]] = {}
    for path in list_images(root):
        match = _CUFED5_NAME.match(path.stem)
        if match is None:
            raise DataError(f"CUFED5: unexpected file {path}; expected names like 000_0.png (HR) ... 000_5.png")
        groups.setdefault(match.group(1), {})[int(match.group(2))] = path
    records = []
    for group in sorted(groups, key=int):
        files = groups[group]
        missing = [i for i in (0, level) if i not in files]
        if missing:
            raise FileNotFoundError(
                f"CUFED5 group {group} in {root} lacks {', '.join(f'{group}_{i}.png' for i in missing)}"
            )
        records.append(RefRecord(name=f"{group}_l{level}", hr_path=files[0], ref_path=files[level], level=level))
    return records


def wrsr_records(root: str | Path) -> list[RefRecord]:
    """WR-SR: ``root/input/NNN.png`` with ``root/ref/NNN_ref.png``."""
    root = _folder(root, "WR-SR")
    ref_dir = _folder(root / "ref", "WR-SR reference (expected <root>/ref)")
    records = []
    for hr in list_images(_folder(root / "input", "WR-SR input (expected <root>/input)")):
        ref = ref_dir / f"{hr.stem}_ref{hr.suffix}"
        if not ref.is_file():
            raise FileNotFoundError(f"WR-SR: no reference for {hr}: expected {ref}")
        records.append(RefRecord(name=hr.stem, hr_path=hr, ref_path=ref))
    return records


# --------------------------------------------------------------------------- the dataset


def _crop(img: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return img[..., top : top + size, left : left + size]


def _relative(offset: int, span: int, other_span: int) -> int:
    """The offset in ``other_span`` at the same relative position as ``offset`` in ``span``."""
    return 0 if span <= 0 else round(offset / span * other_span)


class RefSRDataset(Dataset):
    """HR/reference records served as RefSR triplets.

    Training (``patch_size`` set): an HR patch of ``patch_size`` (its LR patch aligned), and a
    reference patch of ``ref_patch_size`` at the same relative position in the reference, so that
    same-scene references keep their overlap with the patch; the same random flips and 90-degree
    rotations on all three (as TTSR's data pipeline). Evaluation: whole images.

    Args:
        records: the HR/reference records.
        scale: upscaling factor (4 for TTSR).
        patch_size: HR training patch, a multiple of ``scale``; ``None`` for whole images.
        ref_patch_size: reference training patch (default ``patch_size``).
        augment: random flips and transposes (training).
        repeat: each record appears this many times per epoch.
        cache: keep decoded images in memory.

    Crops and flips are drawn from torch's global generator (see :class:`datamodules.datasets.SRPairDataset`).
    """

    def __init__(
        self,
        records: Sequence[RefRecord],
        scale: int = 4,
        patch_size: int | None = None,
        ref_patch_size: int | None = None,
        augment: bool = False,
        repeat: int = 1,
        cache: bool = True,
    ):
        if not records:
            raise DataError("RefSRDataset got no images")
        if patch_size is not None:
            patch_size = check_patch_size(patch_size, scale)
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.records, self.scale, self.patch_size = list(records), scale, patch_size
        self.ref_patch_size = ref_patch_size if ref_patch_size is not None else patch_size
        self.augment, self.repeat, self.cache = augment, repeat, cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole ``(lr, hr, ref)`` of record ``i``: HR mod-cropped, LR by MATLAB bicubic (8-bit rounded)."""
        if i in self._cache:
            return self._cache[i]
        rec = self.records[i]
        hr, ref = rec.read()
        where = rec.hr_path or rec.name
        if min(hr.shape[-2:]) < self.scale:
            raise DataError(f"image {where} is {hr.shape[-2]}x{hr.shape[-1]}: smaller than the scale x{self.scale}")
        if min(ref.shape[-2:]) < 1:
            raise DataError(f"reference {rec.ref_path or rec.name} of {where} is empty ({tuple(ref.shape)})")
        hr = mod_crop(hr, self.scale)
        lr = (imresize(hr, 1 / self.scale).clamp(0, 1) * 255).round() / 255
        if self.cache:
            self._cache[i] = (lr, hr, ref)
        return lr, hr, ref

    def _train_crop(self, rec: RefRecord, lr, hr, ref, rng: random.Random):
        p, s, pr = self.patch_size, self.scale, self.ref_patch_size
        if hr.shape[-2] < p or hr.shape[-1] < p or ref.shape[-2] < pr or ref.shape[-1] < pr:
            raise DataError(
                f"{rec.hr_path or rec.name}: HR {hr.shape[-2]}x{hr.shape[-1]} and reference "
                f"{rec.ref_path or rec.name} {ref.shape[-2]}x{ref.shape[-1]} must be at least the patches "
                f"{p}x{p} (HR) and {pr}x{pr} (reference)"
            )
        top = rng.randint(0, (hr.shape[-2] - p) // s) * s
        left = rng.randint(0, (hr.shape[-1] - p) // s) * s
        ref_top = _relative(top, hr.shape[-2] - p, ref.shape[-2] - pr)
        ref_left = _relative(left, hr.shape[-1] - p, ref.shape[-1] - pr)
        lr = _crop(lr, top // s, left // s, p // s)
        return lr, _crop(hr, top, left, p), _crop(ref, ref_top, ref_left, pr)

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.records)
        rec = self.records[i]
        lr, hr, ref = self.load(i)
        if self.patch_size is not None or self.augment:
            rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))
            if self.patch_size is not None:
                lr, hr, ref = self._train_crop(rec, lr, hr, ref, rng)
            if self.augment:
                for op in ("hflip", "vflip", "transpose"):
                    if rng.random() < 0.5:
                        lr, hr, ref = (_augment(x, op) for x in (lr, hr, ref))
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "ref": ref.contiguous(), "level": rec.level,
                "index": i, "path": str(rec.hr_path or rec.name)}


def _augment(x: torch.Tensor, op: str) -> torch.Tensor:
    if op == "hflip":
        return x.flip(-1)
    if op == "vflip":
        return x.flip(-2)
    return x.transpose(-1, -2)


# --------------------------------------------------------------------------- the embedded default


def _shifted_crop(img: torch.Tensor, frac: float, shift: float, zoom: float = 1.0) -> torch.Tensor:
    """The window of ``frac`` of each side, ``zoom`` times larger, moved by ``shift`` of each side, resized to the window."""
    h, w = img.shape[-2:]
    ch, cw = round(h * frac), round(w * frac)
    wh, ww = min(h, round(ch * zoom)), min(w, round(cw * zoom))
    top = min(max(0, (h - wh) // 2 + round(shift * h)), h - wh)
    left = min(max(0, (w - ww) // 2 + round(shift * w)), w - ww)
    window = img[..., top : top + wh, left : left + ww]
    if (wh, ww) != (ch, cw):
        window = imresize(window, size=(ch, cw)).clamp(0, 1)
    return window


def _recolour(img: torch.Tensor) -> torch.Tensor:
    """A fixed colour cast and gamma: the same scene under other light (channel gains 1.15/0.95/0.8, gamma 1.3)."""
    gains = torch.tensor([1.15, 0.95, 0.8]).view(3, 1, 1)
    return (img.clamp(0, 1).pow(1.3) * gains).clamp(0, 1)


def graded_references(photo: torch.Tensor, others: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``(hr, {level: reference})`` for one photograph: levels 1-3 the same scene, 4-5 other scenes.

    The HR image is the central 80% window of ``photo``. Documented choices (the paper's CUFED5
    levels come from SIFT-match counts, which these mimic by construction):

    * level 1: the same window shifted by 5% of each side;
    * level 2: shifted by 10% and seen from 1.25x further (a larger window shrunk to the HR size),
      so textures appear at another scale;
    * level 3: as level 2, shifted by 15%, with a colour cast and gamma (:func:`_recolour`);
    * level 4: the central window of ``others[0]``, another photograph;
    * level 5: the central window of ``others[1]``, another photograph.

    Every reference is quantised to 8 bits, as a file would hold it.
    """
    if len(others) < 2:
        raise ValueError(f"graded_references needs two other photographs for levels 4-5, got {len(others)}")
    hr = _shifted_crop(photo, 0.8, 0.0)
    refs = {
        1: _shifted_crop(photo, 0.8, 0.05),
        2: _shifted_crop(photo, 0.8, 0.10, zoom=1.25),
        3: _recolour(_shifted_crop(photo, 0.8, 0.15, zoom=1.25)),
        4: _shifted_crop(others[0], 0.8, 0.0),
        5: _shifted_crop(others[1], 0.8, 0.0),
    }
    return hr, {k: (v * 255).round() / 255 for k, v in refs.items()}


def embedded_records(
    photos: Sequence[str], levels: Sequence[int], max_side: int | None, pool: Sequence[str]
) -> list[RefRecord]:
    """Records for ``photos`` at ``levels``; the stereo pair gets its partner view (level 1) instead.

    ``pool`` lists the photographs that may serve as the "other scenes" of levels 4-5 (the two
    that follow the photo in ``pool``, cyclically, skipping itself and its stereo partner).
    """
    cache: dict[str, torch.Tensor] = {}

    def photo(name: str) -> torch.Tensor:
        if name not in cache:
            cache[name] = load_embedded_photo(name, max_side)
        return cache[name]

    records = []
    for name in photos:
        if name.startswith("motorcycle_"):
            partner = "motorcycle_right" if name.endswith("left") else "motorcycle_left"
            records.append(RefRecord(name=f"{name}_stereo", hr_tensor=photo(name), ref_tensor=photo(partner), level=1))
            continue
        candidates = [p for p in pool if p != name and not p.startswith("motorcycle_")]
        if len(candidates) < 2:
            raise ValueError(
                f"embedded reference pairs: {name!r} needs two other photographs (not the stereo pair) for its "
                f"level 4-5 references, but the pool {list(pool)} has {candidates}; add photographs"
            )
        start = pool.index(name) + 1 if name in pool else 0
        others = [candidates[(start + k) % len(candidates)] for k in range(2)]
        hr, refs = graded_references(photo(name), [photo(o) for o in others])
        for level in levels:
            records.append(RefRecord(name=f"{name}_l{level}", hr_tensor=hr, ref_tensor=refs[level], level=level))
    return records


# --------------------------------------------------------------------------- data modules


def _check_levels(levels: Sequence[int] | Literal["all"]) -> tuple[int, ...]:
    if levels == "all":
        return LEVELS
    levels = tuple(levels)
    bad = [lv for lv in levels if lv not in LEVELS]
    if not levels or bad:
        raise ValueError(f"levels must be 'all' or a non-empty list of similarity levels from {LEVELS}, got {levels!r}")
    return levels


class RefSRDataModule(L.LightningDataModule):
    """Shared loaders of the RefSR data modules; subclasses give the records.

    Validation and test batches are whole images (``val_batch_size`` 1, as sizes differ); each
    evaluation set is split by similarity level into loaders named ``<set>_l<level>``.

    Args:
        scale: upscaling factor (4).
        patch_size: HR training patch (CUFED: 160, the whole training image).
        ref_patch_size: reference training patch (default ``patch_size``).
        batch_size: training batch per device.
        val_batch_size: evaluation batch.
        num_workers: loader workers.
        augment: flips and transposes for training.
        repeat: training records repeated per epoch.
    """

    def __init__(
        self,
        scale: int = 4,
        patch_size: int = 160,
        ref_patch_size: int | None = None,
        batch_size: int = 9,
        val_batch_size: int = 1,
        num_workers: int = 4,
        augment: bool = True,
        repeat: int = 1,
    ):
        super().__init__()
        patch_size = check_patch_size(patch_size, scale)
        self.scale, self.patch_size, self.ref_patch_size = scale, patch_size, ref_patch_size
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.augment, self.repeat = augment, repeat
        self.train_dataset: RefSRDataset | None = None
        self.val_datasets: dict[str, RefSRDataset] = {}
        self.test_datasets: dict[str, RefSRDataset] = {}

    def train_records(self) -> list[RefRecord]:
        raise NotImplementedError

    def val_sets(self) -> dict[str, list[RefRecord]]:
        raise NotImplementedError

    def test_sets(self) -> dict[str, list[RefRecord]]:
        return self.val_sets()

    def _eval_dataset(self, records) -> RefSRDataset:
        return RefSRDataset(records, self.scale)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = RefSRDataset(self.train_records(), self.scale, self.patch_size, self.ref_patch_size,
                                              augment=self.augment, repeat=self.repeat)
        if stage in (None, "fit", "validate") and not self.val_datasets:
            self.val_datasets = {k: self._eval_dataset(v) for k, v in self.val_sets().items()}
        if stage in (None, "test") and not self.test_datasets:
            self.test_datasets = {k: self._eval_dataset(v) for k, v in self.test_sets().items()}

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), drop_last=shuffle and len(dataset) >= batch_size,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.val_batch_size, shuffle=False) for ds in self.val_datasets.values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, self.val_batch_size, shuffle=False) for ds in self.test_datasets.values()]

    def val_set_names(self) -> list[str]:
        """Names of the validation loaders, in ``dataloader_idx`` order."""
        return list(self.val_datasets or self.val_sets())

    def test_set_names(self) -> list[str]:
        """Names of the test loaders, in ``dataloader_idx`` order."""
        return list(self.test_datasets or self.test_sets())


class CUFEDDataModule(RefSRDataModule):
    """CUFED training, CUFED5 validation/test by similarity level, optional WR-SR test set.

    Args:
        train_root: the CUFED training folder holding ``input/`` and ``ref/``.
        cufed5_root: the CUFED5 folder (``000_0.png`` ... ``125_5.png``).
        levels: similarity levels of CUFED5 to evaluate, a list from 1-5 or ``"all"``; one
            loader per level (``cufed5_l1`` ...).
        val_levels: levels used during ``fit``'s validation (default: level 1 only, cheap).
        wrsr_root: optional WR-SR folder (``input/``, ``ref/``), added to the test sets as ``wrsr``.
        max_val_images: evaluate only the first N groups of each level during ``fit``.
        **kwargs: see :class:`RefSRDataModule`.
    """

    def __init__(
        self,
        train_root: str,
        cufed5_root: str,
        levels: list[int] | Literal["all"] = "all",
        val_levels: list[int] | Literal["all"] = (1,),
        wrsr_root: str | None = None,
        max_val_images: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.train_root, self.cufed5_root, self.wrsr_root = train_root, cufed5_root, wrsr_root
        self.levels, self.val_levels = _check_levels(levels), _check_levels(val_levels)
        self.max_val_images = max_val_images

    def train_records(self) -> list[RefRecord]:
        return cufed_train_records(self.train_root)

    def val_sets(self) -> dict[str, list[RefRecord]]:
        return {f"cufed5_l{lv}": cufed5_records(self.cufed5_root, lv)[: self.max_val_images] for lv in self.val_levels}

    def test_sets(self) -> dict[str, list[RefRecord]]:
        sets = {f"cufed5_l{lv}": cufed5_records(self.cufed5_root, lv) for lv in self.levels}
        if self.wrsr_root is not None:
            sets["wrsr"] = wrsr_records(self.wrsr_root)
        return sets


class EmbeddedRefPairsDataModule(RefSRDataModule):
    """RefSR triplets from scikit-image's photographs (no download): the default data set.

    Training: the stereo pair (each view the other's reference) and the other training photos at
    every level of ``train_levels``; evaluation: ``val_photos`` at every level of ``levels``, one
    loader per level (``embedded_l1`` ... ``embedded_l5``), the "other scenes" of levels 4-5
    taken from the training photographs. See :func:`graded_references` for the levels.

    Args:
        max_side: photographs are shrunk (MATLAB bicubic) to this longest side.
        train_photos / val_photos: names in :mod:`skimage.data` (``motorcycle_left``/``_right``
            are the stereo pair).
        train_levels: similarity levels of the training references.
        levels: similarity levels evaluated (a list from 1-5 or ``"all"``).
        **kwargs: see :class:`RefSRDataModule` (defaults here: patch 64, batch 8, repeat 8, no workers).
    """

    def __init__(
        self,
        max_side: int | None = 192,
        train_photos: tuple[str, ...] = EMBEDDED_TRAIN,
        val_photos: tuple[str, ...] = EMBEDDED_VAL,
        train_levels: list[int] | Literal["all"] = "all",
        levels: list[int] | Literal["all"] = "all",
        patch_size: int = 64,
        batch_size: int = 8,
        repeat: int = 8,
        num_workers: int = 0,
        **kwargs,
    ):
        super().__init__(patch_size=patch_size, batch_size=batch_size, repeat=repeat, num_workers=num_workers,
                         **kwargs)
        self.max_side, self.train_photos, self.val_photos = max_side, tuple(train_photos), tuple(val_photos)
        self.train_levels, self.levels = _check_levels(train_levels), _check_levels(levels)

    def train_records(self) -> list[RefRecord]:
        return embedded_records(self.train_photos, self.train_levels, self.max_side, self.train_photos)

    def val_sets(self) -> dict[str, list[RefRecord]]:
        pool = self.val_photos + self.train_photos
        records = embedded_records(self.val_photos, self.levels, self.max_side, pool)
        return {f"embedded_l{lv}": [r for r in records if r.level == lv] for lv in self.levels}
