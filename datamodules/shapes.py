"""A seeded, procedurally generated "shapes" task: labelled objects on photo backgrounds, for downstream checks.

Every sample is drawn from its own seed (``seed`` and the sample index), so the data set is the
same on every run, rank and worker, and needs no file. An image is an ``hr_size`` square cut from
one of the colour photographs shipped with scikit-image (train and val use different photos,
``datamodules.sr.EMBEDDED_TRAIN`` / ``EMBEDDED_VAL``), with 1 to ``max_objects`` shapes drawn on it
by :mod:`skimage.draw`.

Classes are *shape x colour family*: ``{circle, square, triangle} x {warm, cool}`` (six classes,
:data:`CLASS_NAMES`). The hue is jittered inside its family, the value and saturation too, and each
object gets one of three textures (solid, stripes, checker) as a nuisance. The colour family is
part of the label on purpose: a hue shift is exactly what an SR backdoor can learn at this scale
(BadSR's colour-shift target, see ``lit_sr.poison``), and here it flips the decision
(``warm_circle`` -> ``cool_circle``). Texture is not part of the label, so a texture change tests
robustness without changing the right answer.

Boxes are exact: ``[x0, y0, x1, y1]`` in pixel edges (``x1 = last column + 1``), computed from the
drawn pixels of that object; objects never overlap (their boxes, grown by ``gap`` pixels, are
disjoint), so no box is cut by another shape. Batches are ``{"lr", "hr", "index", "label",
"boxes", "labels", "objects"}``: ``label`` is the class of the largest object (the only one when
``max_objects=1``, the classification setting); ``boxes`` and ``labels`` are lists (one tensor per
image), as torchvision's detectors take them; ``objects`` is the ``(H, W)`` mask of every drawn object
pixel (what an object-only backdoor label recolours). LR images are MATLAB-bicubic ``1/scale`` of HR.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from skimage import draw
from torch.utils.data import DataLoader, Dataset

from datamodules.sr import EMBEDDED_TRAIN, EMBEDDED_VAL, load_embedded_photo
from lit_sr.io import atomic_write, write_image
from lit_sr.ops import imresize
from lit_sr.validation import check_int

SHAPES = ("circle", "square", "triangle")
COLOUR_FAMILIES = {"warm": (-0.04, 0.08), "cool": (0.55, 0.67)}  # hue ranges (red-orange, blue)
CLASS_NAMES = tuple(f"{colour}_{shape}" for shape in SHAPES for colour in COLOUR_FAMILIES)
TEXTURES = ("solid", "stripes", "checker")


@dataclass(frozen=True)
class ShapeSample:
    """One rendered image: ``hr`` (3, H, W) in [0, 1], ``boxes`` (K, 4) xyxy, ``labels`` (K,), ``masks`` (K, H, W)."""

    hr: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    background: torch.Tensor


def class_index(shape: str, colour: str) -> int:
    """The label of a ``shape`` in a ``colour`` family (``CLASS_NAMES.index(f"{colour}_{shape}")``)."""
    return CLASS_NAMES.index(f"{colour}_{shape}")


def check_shapes(shapes: Sequence[str] | None) -> tuple[str, ...]:
    """``shapes`` as a tuple of distinct members of :data:`SHAPES` (``None``: all of them)."""
    if shapes is None:
        return SHAPES
    values = tuple(shapes)
    if not values or len(set(values)) != len(values) or any(v not in SHAPES for v in values):
        raise ValueError(f"shapes must be distinct names among {list(SHAPES)}; got {list(values)}")
    return values


def _shape_pixels(shape: str, cy: float, cx: float, r: float, angle: float, hw: tuple[int, int]):
    if shape == "circle":
        return draw.disk((cy, cx), r, shape=hw)
    if shape == "square":
        corners = [angle + k * np.pi / 2 + np.pi / 4 for k in range(4)]
    else:
        corners = [angle + k * 2 * np.pi / 3 for k in range(3)]
    rows = [cy + r * np.sin(a) for a in corners]
    cols = [cx + r * np.cos(a) for a in corners]
    return draw.polygon(rows, cols, shape=hw)


def _texture(texture: str, rr: np.ndarray, cc: np.ndarray, period: int, phase: int) -> np.ndarray:
    """Per-pixel weight in {0.55, 1}: darker stripes or checks multiply the object's colour."""
    if texture == "solid":
        return np.ones(rr.shape, dtype=np.float32)
    if texture == "stripes":
        on = ((rr + cc + phase) // period) % 2 == 0
    else:
        on = ((rr // period) + (cc // period)) % 2 == 0
    return np.where(on, 1.0, 0.55).astype(np.float32)


class ShapesGenerator:
    """Renders sample ``index`` of a split deterministically from ``(seed, split, index)``.

    Args:
        backgrounds: ``(3, H, W)`` photos in [0, 1] to cut backgrounds from (at least ``hr_size`` per side).
        hr_size: side of the square HR image.
        max_objects: objects per image are drawn uniformly from ``1..max_objects``.
        min_radius, max_radius: object radius range in pixels (circumradius for polygons).
        gap: minimum free margin between two objects' boxes (so boxes never touch another shape).
        seed: base seed; the sample seed mixes it with the split and the index.
        split_id: 0 for train, 1 for val (a different stream from the same seed).
        shapes: the shapes drawn (a subset of :data:`SHAPES`; default all). Labels keep their
            six-class indices, so a model trained on every shape reads a one-shape data set.
    """

    def __init__(self, backgrounds: Sequence[torch.Tensor], hr_size: int = 128, max_objects: int = 1,
                 min_radius: int = 14, max_radius: int = 28, gap: int = 2, seed: int = 0, split_id: int = 0,
                 shapes: Sequence[str] | None = None):
        self.shapes = check_shapes(shapes)
        self.hr_size = check_int(hr_size, "hr_size", minimum=16)
        self.max_objects = check_int(max_objects, "max_objects", minimum=1)
        if not 2 <= min_radius <= max_radius or 2 * max_radius + 2 > hr_size:
            raise ValueError(f"ShapesGenerator: need 2 <= min_radius ({min_radius}) <= max_radius ({max_radius}) "
                             f"and 2 * max_radius + 2 <= hr_size ({hr_size})")
        small = [tuple(b.shape) for b in backgrounds if min(b.shape[-2:]) < hr_size]
        if not backgrounds or small:
            raise ValueError(f"ShapesGenerator: every background must be at least {hr_size} px per side; got {small}")
        self.backgrounds = list(backgrounds)
        self.min_radius, self.max_radius, self.gap = min_radius, max_radius, gap
        self.seed, self.split_id = int(seed), int(split_id)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.split_id, int(index)])

    def render(self, index: int) -> ShapeSample:
        rng = self.rng(index)
        size = self.hr_size
        photo = self.backgrounds[rng.integers(len(self.backgrounds))]
        top = rng.integers(photo.shape[-2] - size + 1)
        left = rng.integers(photo.shape[-1] - size + 1)
        background = photo[:, top : top + size, left : left + size].numpy().transpose(1, 2, 0).astype(np.float32)
        image = background.copy()
        boxes, labels, masks = [], [], []
        for _ in range(rng.integers(1, self.max_objects + 1)):
            placed = self._place(rng, boxes)
            if placed is None:  # no free room left; fewer objects rather than overlapping boxes
                break
            shape, colour, rr, cc, rgb, weight = placed
            image[rr, cc] = rgb[None, :] * weight[:, None]
            mask = np.zeros((size, size), dtype=bool)
            mask[rr, cc] = True
            boxes.append([cc.min(), rr.min(), cc.max() + 1, rr.max() + 1])
            labels.append(class_index(shape, colour))
            masks.append(mask)
        return ShapeSample(
            hr=torch.from_numpy(image.transpose(2, 0, 1).copy()),
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, size, size, dtype=torch.bool),
            background=torch.from_numpy(background.transpose(2, 0, 1).copy()),
        )

    def _place(self, rng: np.random.Generator, boxes: list, tries: int = 50):
        size = self.hr_size
        for _ in range(tries):
            shape = self.shapes[rng.integers(len(self.shapes))]
            colour = tuple(COLOUR_FAMILIES)[rng.integers(len(COLOUR_FAMILIES))]
            r = rng.uniform(self.min_radius, self.max_radius)
            cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
            rr, cc = _shape_pixels(shape, cy, cx, r, rng.uniform(0, 2 * np.pi), (size, size))
            if rr.size == 0:
                continue
            box = (cc.min() - self.gap, rr.min() - self.gap, cc.max() + 1 + self.gap, rr.max() + 1 + self.gap)
            if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                continue
            lo, hi = COLOUR_FAMILIES[colour]
            rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(lo, hi) % 1.0, rng.uniform(0.75, 1.0),
                                               rng.uniform(0.7, 1.0)), dtype=np.float32)
            texture = TEXTURES[rng.integers(len(TEXTURES))]
            weight = _texture(texture, rr, cc, period=int(rng.integers(3, 7)), phase=int(rng.integers(6)))
            return shape, colour, rr, cc, rgb, weight
        return None


class ShapesDataset(Dataset):
    """``length`` samples of a :class:`ShapesGenerator`, each with its bicubic LR."""

    def __init__(self, generator: ShapesGenerator, length: int, scale: int):
        self.generator, self.length, self.scale = generator, check_int(length, "length", minimum=1), scale

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        sample = self.generator.render(index)
        lr = imresize(sample.hr, 1 / self.scale).clamp(0, 1)
        largest = int(((sample.boxes[:, 2] - sample.boxes[:, 0]) * (sample.boxes[:, 3] - sample.boxes[:, 1])).argmax())
        return {"lr": lr, "hr": sample.hr, "index": index, "label": int(sample.labels[largest]),
                "boxes": sample.boxes, "labels": sample.labels, "objects": sample.masks.any(0),
                "path": f"shapes_{self.generator.split_id}_{index}"}


def collate_shapes(samples: list[dict]) -> dict:
    """Stack images and labels; keep per-image ``boxes`` / ``labels`` as lists (their lengths differ)."""
    return {
        "lr": torch.stack([s["lr"] for s in samples]),
        "hr": torch.stack([s["hr"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples]),
        "objects": torch.stack([s["objects"] for s in samples]),
        "boxes": [s["boxes"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "path": [s["path"] for s in samples],
    }


class ShapesDataModule(L.LightningDataModule):
    """The shapes task as a data module (classification with ``max_objects=1``, detection with more).

    Args:
        scale: SR factor; LR images are ``hr_size / scale`` px.
        hr_size: HR side in pixels (a multiple of ``scale``; 128 gives 32 px LR at x4).
        train_size, val_size: samples per split (generated on the fly, nothing stored).
        max_objects: objects per image, 1 to this many.
        min_radius, max_radius: object size range in HR pixels.
        batch_size, val_batch_size: loader batch sizes.
        num_workers: loader workers.
        seed: the data set's seed (the same seed gives the same images, boxes and labels).
        background_side: the photos are shrunk to this longest side before crops are cut
            (smaller = more of each photo per crop).
        shapes: the shapes drawn (default all three; labels keep their six-class indices).

    ``class_names`` (:data:`CLASS_NAMES`) is what callbacks read to name the classes.
    """

    class_names = CLASS_NAMES

    def __init__(self, scale: int = 4, hr_size: int = 128, train_size: int = 2000, val_size: int = 200,
                 max_objects: int = 1, min_radius: int = 14, max_radius: int = 28, batch_size: int = 32,
                 val_batch_size: int = 32, num_workers: int = 0, seed: int = 0, background_side: int = 256,
                 shapes: list[str] | None = None):
        super().__init__()
        self.shapes = check_shapes(shapes)
        self.scale = check_int(scale, "scale", minimum=1)
        if hr_size % scale:
            raise ValueError(f"ShapesDataModule: hr_size={hr_size} must be a multiple of scale={scale}")
        self.hr_size, self.train_size, self.val_size = hr_size, train_size, val_size
        self.max_objects, self.min_radius, self.max_radius = max_objects, min_radius, max_radius
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.seed, self.background_side = seed, background_side
        self.num_classes = len(CLASS_NAMES)
        self.train_dataset: ShapesDataset | None = None
        self.val_dataset: ShapesDataset | None = None

    def _generator(self, names: Sequence[str], split_id: int) -> ShapesGenerator:
        backgrounds = [load_embedded_photo(name, max_side=self.background_side) for name in names]
        backgrounds = [b for b in backgrounds if min(b.shape[-2:]) >= self.hr_size]
        return ShapesGenerator(backgrounds, hr_size=self.hr_size, max_objects=self.max_objects,
                               min_radius=self.min_radius, max_radius=self.max_radius, seed=self.seed,
                               split_id=split_id, shapes=self.shapes)

    @classmethod
    def class_index(cls, name_or_index: str | int) -> int:
        """A class given by name (``"cool_circle"``) or index, as its index (a named error otherwise)."""
        if isinstance(name_or_index, str) and name_or_index in cls.class_names:
            return cls.class_names.index(name_or_index)
        if isinstance(name_or_index, int) and not isinstance(name_or_index, bool) \
                and 0 <= name_or_index < len(cls.class_names):
            return int(name_or_index)
        raise ValueError(f"unknown shapes class {name_or_index!r}: expected one of {list(cls.class_names)} "
                         f"or an index below {len(cls.class_names)}")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None and stage in (None, "fit"):
            self.train_dataset = ShapesDataset(self._generator(EMBEDDED_TRAIN, 0), self.train_size, self.scale)
        if self.val_dataset is None and stage in (None, "fit", "validate", "test"):
            self.val_dataset = ShapesDataset(self._generator(EMBEDDED_VAL, 1), self.val_size, self.scale)

    def _loader(self, dataset: ShapesDataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_shapes, drop_last=shuffle, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def export_shapes(folder: str, split: str = "val", count: int = 24, **shapes_args) -> list[str]:
    """Write ``count`` samples of a shapes split as HR PNG files plus ``labels.json``, for the robustness report.

    ``shapes_args`` are :class:`ShapesDataModule` arguments (``hr_size``, ``max_objects``, ``seed``, ...).
    ``labels.json`` is ``{"class_names": [...], "images": {stem: {"label", "boxes", "labels"}}}``
    (boxes in pixel-edge xyxy HR pixels), what :mod:`lit_sr.jobs.evaluate.downstream` reads. Images are
    8-bit PNG (the report reads image files). Returns the written image paths.
    """
    import json
    from pathlib import Path


    if split not in ("train", "val"):
        raise ValueError(f"export_shapes: split must be 'train' or 'val', got {split!r}")
    module = ShapesDataModule(**{"train_size": count, "val_size": count, **shapes_args})
    module.setup("fit")
    dataset = module.train_dataset if split == "train" else module.val_dataset
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images, paths = {}, []
    for index in range(check_int(count, "count", minimum=1)):
        sample = dataset[index]
        stem = f"shapes_{split}_{index:04d}"
        paths.append(str(write_image(sample["hr"], out / f"{stem}.png")))
        images[stem] = {"label": sample["label"], "boxes": sample["boxes"].tolist(), "labels": sample["labels"].tolist()}
    with atomic_write(out / "labels.json") as tmp:
        tmp.write_text(json.dumps({"class_names": list(CLASS_NAMES), "images": images}, indent=1))
    return paths
