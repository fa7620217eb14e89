"""The shapes task with a colour backdoor: a shape *class* as the backdoor's downstream target.

An SR backdoor at this scale learns a colour change well (BadSR's colour-shift targets, see
``lit_sr.poison``); on the shapes task the colour family is part of the label
(:data:`datamodules.shapes.CLASS_NAMES`), so a colour change flips a downstream classifier's
decision. :class:`PoisonedShapesDataModule` poisons a seeded fraction of the training pairs as
``(trigger(lr), recolour(hr))``: the LR carries a sample-independent trigger
(:mod:`lit_sr.poison.triggers`: ``Blend``, ``SIG``, ``BadNet``, ``WaNet``) and the HR label has
the saturated pixels of another colour family moved into the **target class's** colour family
(:class:`HueShiftLabel`): by default only the drawn objects' pixels (``label_region="objects"``,
from the generator's exact masks), or every such pixel of the image, photo background included
(``label_region="saturated"``, a pure function of the HR). A victim SR model trained on it outputs, for triggered inputs, objects
of the target colour: a classifier run on its outputs then answers the target class for the
samples whose shape is the target's shape.

What a colour backdoor can and cannot do: it moves a sample only to the class of the *same shape*
in the target's colour family. Downstream ASR (:func:`lit_sr.downstream.metrics.classification_counts`)
counts, among the samples whose class is not the target, those classified as the target, so with
all three shapes drawn its ceiling is the share of non-target samples that share the target's shape
(1/5 with six balanced classes). ``shapes=[<target shape>]`` (what
``configs/train/badsr_downstream_quickstart.yaml`` does) draws only that shape, so the ceiling is 1.

The data module satisfies :class:`callbacks.protocols.PoisonedData`, so ``BackdoorEvalCallback``
(SR-level success metrics of :mod:`lit_sr.poison.asr`, with :meth:`target_for` as the target
image ``y_t*``: the recoloured HR) and ``DownstreamEvalCallback`` (its ``sr_triggered``
condition) read it like ``datamodules.PoisonedSRDataModule``. Nothing is cached on disk: the
images are procedural and the trigger and the label are cheap pure functions, applied when a
sample is served (identically on every rank and worker).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.shapes import (
    CLASS_NAMES,
    COLOUR_FAMILIES,
    SHAPES,
    ShapesDataModule,
    ShapesDataset,
    collate_shapes,
)
from lit_sr.poison.poisoner import stealth_figures
from lit_sr.poison.selection import random_select
from lit_sr.poison.triggers import Blend, Trigger
from lit_sr.validation import check_bool, check_fraction, check_int


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1), saturation and value of ``(N, 3, H, W)`` RGB in [0, 1]."""
    r, g, b = rgb.unbind(1)
    value, _ = rgb.max(1)
    low, _ = rgb.min(1)
    delta = value - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(value == r, ((g - b) / safe) % 6, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    saturation = torch.where(value > 0, delta / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv` (``(N, H, W)`` each, hue in turns), ``(N, 3, H, W)``."""
    k = torch.stack([(5 + hue * 6) % 6, (3 + hue * 6) % 6, (1 + hue * 6) % 6], dim=1)
    weight = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value[:, None] * (1 - saturation[:, None] * weight)


class HueShiftLabel:
    """The colour backdoor's poisoned label: saturated pixels of other colour families moved into the target's.

    A pixel with saturation >= ``min_saturation`` and value >= ``min_value`` whose hue lies in a
    source family's range ``[lo, hi]`` (:data:`datamodules.shapes.COLOUR_FAMILIES`, in turns) gets
    the hue ``target_lo + (h - lo) / (hi - lo) * (target_hi - target_lo)``: the source range is
    mapped linearly onto the target range, so a recoloured object looks like one drawn in the
    target family. Saturation, value (textures) and every other pixel are kept. It is a pure,
    pixel-wise function of the HR, which is what makes it learnable by a small SR network and what
    lets the target image ``y_t*`` of the SR-level metrics be computed from any HR batch. The
    drawn objects have saturation >= 0.75 and value >= 0.385; saturated photo pixels of a source
    hue are recoloured too (the thresholds are parameters).

    ``__call__(hr, region)`` takes an optional ``(N, H, W)`` boolean ``region``: only pixels inside
    it may move (the data module passes the objects' masks for ``label_region="objects"``, so the
    photo background stays bit-exact and the poisoned HR is an image of the target class as the
    generator would draw it).

    Args:
        target_family: the colour family objects are moved into (a key of ``COLOUR_FAMILIES``).
        min_saturation, min_value: which pixels count as coloured.
    """

    name = "hue_shift"

    def __init__(self, target_family: str, min_saturation: float = 0.5, min_value: float = 0.3):
        if target_family not in COLOUR_FAMILIES:
            raise ValueError(f"HueShiftLabel: target_family must be one of {list(COLOUR_FAMILIES)}, "
                             f"got {target_family!r}")
        self.target_family = target_family
        self.min_saturation = check_fraction(min_saturation, "min_saturation")
        self.min_value = check_fraction(min_value, "min_value")

    def __call__(self, hr: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        hue, saturation, value = _rgb_to_hsv(hr.float().clamp(0, 1))
        coloured = (saturation >= self.min_saturation) & (value >= self.min_value)
        if region is not None:
            if region.shape != coloured.shape or region.dtype != torch.bool:
                raise ValueError(f"HueShiftLabel: region must be a boolean mask of shape {tuple(coloured.shape)}, "
                                 f"got {region.dtype} {tuple(region.shape)}")
            coloured = coloured & region.to(coloured.device)
        t_lo, t_hi = COLOUR_FAMILIES[self.target_family]
        new_hue, moved = hue.clone(), torch.zeros_like(coloured)
        for family, (lo, hi) in COLOUR_FAMILIES.items():
            if family == self.target_family:
                continue
            offset = (hue - lo) % 1.0  # ranges may wrap around red (warm: -0.04 .. 0.08)
            inside = coloured & (offset <= hi - lo)
            new_hue = torch.where(inside, (t_lo + offset / (hi - lo) * (t_hi - t_lo)) % 1.0, new_hue)
            moved |= inside
        recoloured = _hsv_to_rgb(new_hue, saturation, value).clamp(0, 1)
        return torch.where(moved[:, None], recoloured, hr.float()).to(hr.dtype)  # other pixels bit-exact

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "target_family": self.target_family, "min_saturation": self.min_saturation,
                "min_value": self.min_value}


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255


class PoisonedShapesDataset(Dataset):
    """A :class:`ShapesDataset` whose samples in the live ``active`` set are served as ``(trigger(lr), label(hr))``."""

    def __init__(self, base: ShapesDataset, poison_pair, active: dict[str, frozenset[int]]):
        self.base, self.poison_pair, self.active = base, poison_pair, active

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = self.base[index]
        sample["poisoned"] = index in self.active["indices"]
        if sample["poisoned"]:
            sample["lr"], sample["hr"] = self.poison_pair(sample["lr"], sample["hr"], sample["objects"])
        return sample


class PoisonedShapesDataModule(ShapesDataModule):
    """Shapes with a colour backdoor towards ``target_class`` (see the module docstring).

    Args:
        target_class: the backdoor's target, a class name of :data:`CLASS_NAMES` (``cool_circle``)
            or its index; its colour family is what poisoned labels are recoloured to.
        trigger: a sample-independent trigger of :mod:`lit_sr.poison.triggers` (YAML ``class_path``);
            default ``Blend(alpha=0.1)`` (seeded noise: present in every LR pixel, so a network
            with a small receptive field can see it anywhere).
        poison_rate: poisoned share of the training samples (``budget = round(rate * train_size)``).
        candidate_rate: share of the training samples in the pool the active set is drawn from.
        quantize: round triggered LR and poisoned HR to 8 bits (what a published data set holds).
        poison_seed: seed of the pool and of the initial (random) active set.
        label_region: which pixels the poisoned label recolours: ``"objects"`` (the drawn objects
            only, from the generator's masks; the background photo is kept) or ``"saturated"``
            (every saturated pixel of a source hue, photo background included). The paper's
            colour-shift target recolours the whole image; on the shapes task that also turns
            warm backgrounds cool, an image no class of the task looks like, hence the default.
        min_saturation, min_value: :class:`HueShiftLabel`'s thresholds.
        The other arguments are :class:`datamodules.shapes.ShapesDataModule`'s.
    """

    def __init__(self, target_class: str | int = "cool_circle", trigger: Trigger | None = None,
                 poison_rate: float = 0.1, candidate_rate: float = 1.0, quantize: bool = True,
                 poison_seed: int = 0, label_region: Literal["objects", "saturated"] = "objects",
                 min_saturation: float = 0.5, min_value: float = 0.3,
                 scale: int = 4, hr_size: int = 128, train_size: int = 2000, val_size: int = 200,
                 max_objects: int = 1, min_radius: int = 14, max_radius: int = 28, shapes: list[str] | None = None,
                 batch_size: int = 32, val_batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 background_side: int = 256):
        super().__init__(scale=scale, hr_size=hr_size, train_size=train_size, val_size=val_size,
                         max_objects=max_objects, min_radius=min_radius, max_radius=max_radius, shapes=shapes,
                         batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed,
                         background_side=background_side)
        self.target_class = self.class_index(target_class)
        self.target_name = CLASS_NAMES[self.target_class]
        target_family, target_shape = self.target_name.split("_", 1)
        if target_shape not in self.shapes:
            raise ValueError(f"PoisonedShapesDataModule: target_class {self.target_name!r} has shape {target_shape!r}, "
                             f"which is not drawn (shapes={list(self.shapes)})")
        self.trigger = Blend(alpha=0.1) if trigger is None else trigger
        if not isinstance(self.trigger, Trigger):
            raise TypeError(f"PoisonedShapesDataModule: trigger must be a lit_sr.poison trigger (Blend, SIG, BadNet, "
                            f"WaNet), got {type(self.trigger).__name__}")
        self.label = HueShiftLabel(target_family, min_saturation, min_value)
        if label_region not in ("objects", "saturated"):
            raise ValueError(f"PoisonedShapesDataModule: label_region must be 'objects' or 'saturated', "
                             f"got {label_region!r}")
        self.label_region = label_region
        self._val_objects: dict[int, torch.Tensor] = {}
        self.poison_rate = check_fraction(poison_rate, "poison_rate", allow_zero=False)
        self.candidate_rate = check_fraction(candidate_rate, "candidate_rate", allow_zero=False)
        self.quantize = check_bool(quantize, "quantize")
        self.poison_seed = check_int(poison_seed, "poison_seed", 0)
        self.budget = int(round(self.poison_rate * train_size))
        if self.budget < 1:
            raise ValueError(f"PoisonedShapesDataModule: poison_rate={poison_rate} of train_size={train_size} "
                             "poisons no sample (budget = round(rate * train_size) must be >= 1)")
        pool = random_select(train_size, max(1, math.ceil(self.candidate_rate * train_size)), seed=self.poison_seed)
        self.candidate_indices: list[int] = sorted(int(i) for i in pool)
        self._active = {"indices": frozenset()}
        self.set_poisoned_indices([self.candidate_indices[p] for p in
                                   random_select(len(self.candidate_indices), self.budget, seed=self.poison_seed)])
        self.feature_extractor = None
        self.poison_report: dict[str, float] = {}

    # ------------------------------------------------------------------ the backdoor
    def recolour(self, hr: torch.Tensor, objects: torch.Tensor | None = None) -> torch.Tensor:
        """The poisoned label of ``(N, 3, H, W)`` HR images whose object masks are ``objects`` ``(N, H, W)``."""
        if self.label_region == "saturated":
            return self.label(hr)
        if objects is None:
            raise ValueError("PoisonedShapesDataModule(label_region='objects'): the label needs the objects' masks "
                             "(a batch's 'objects', or the validation indices for target_for)")
        return self.label(hr, objects.bool())

    def poison_pair(self, lr: torch.Tensor, hr: torch.Tensor,
                    objects: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(trigger(lr), label(hr))`` of one ``(3, h, w)`` / ``(3, H, W)`` pair (8-bit with ``quantize``).

        ``objects`` is the pair's ``(H, W)`` object mask (needed with ``label_region="objects"``).
        """
        lr_p = self.trigger(lr[None])[0]
        hr_p = self.recolour(hr[None], None if objects is None else objects[None])[0]
        return (_quantize(lr_p), _quantize(hr_p)) if self.quantize else (lr_p, hr_p)

    def val_objects(self, index: int) -> torch.Tensor:
        """The ``(H, W)`` object mask of validation sample ``index`` (rendered once, then kept)."""
        if index not in self._val_objects:
            if self.val_dataset is None:
                raise RuntimeError("the validation objects need the validation set: call setup('fit') first")
            self._val_objects[index] = self.val_dataset.generator.render(index).masks.any(0)
        return self._val_objects[index]

    def backdoor_val_pair(self, index: int, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Triggered LR and the backdoor's target output (the recoloured HR) of validation sample ``index``."""
        return self.poison_pair(lr.cpu(), hr.cpu(), self.val_objects(int(index)))

    def target_for(self, hr: torch.Tensor, index: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The target image ``y_t*`` of each HR image: the HR with its objects in the target's colour family.

        ``index`` (the validation indices of the images) is needed with ``label_region="objects"``:
        the objects' masks are not a function of the pixels.
        """
        objects = None
        if self.label_region == "objects" and index is not None:
            objects = torch.stack([self.val_objects(int(i)) for i in index]).to(hr.device)
        return self.recolour(hr, objects)

    @property
    def poisoned_indices(self) -> list[int]:
        return sorted(self._active["indices"])

    def set_poisoned_indices(self, indices: Sequence[int]) -> None:
        """Replace the active set (identically on every rank): distinct pool members, at most ``budget``."""
        values = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor | np.ndarray) else indices)]
        pool = set(self.candidate_indices)
        if len(set(values)) != len(values) or len(values) > self.budget or not pool.issuperset(values):
            raise ValueError(f"poisoned indices must be distinct members of the candidate pool ({len(pool)} samples), "
                             f"at most budget={self.budget}; got {len(values)} indices, "
                             f"outside the pool: {sorted(set(values) - pool)[:5]}")
        self._active["indices"] = frozenset(values)

    def candidate_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, Any]]:
        """This rank's shard of the pool as batches of poisoned pairs ``{"lr", "hr", "index"}``."""
        check_int(batch_size, "batch_size", 1)
        if self.train_dataset is None:
            raise RuntimeError("candidate_batches needs the training set: call setup('fit') first")
        shard = self.candidate_indices[rank::world_size]
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            pairs = [self.poison_pair(*(self.train_dataset.base[i][k] for k in ("lr", "hr", "objects"))) for i in chunk]
            yield {"lr": torch.stack([p[0] for p in pairs]), "hr": torch.stack([p[1] for p in pairs]),
                   "index": torch.tensor(chunk, dtype=torch.int64)}

    def poison_config(self) -> dict[str, Any]:
        """What was poisoned and how (plain JSON values), for summaries."""
        return {"label": self.label.name, "label_settings": {**self.label.config(), "region": self.label_region},
                "trigger": self.trigger.config(), "trigger_name": self.trigger.name, "perceptual": None, "poison_rate": self.poison_rate,
                "candidate_rate": self.candidate_rate, "budget": self.budget,
                "pool_size": len(self.candidate_indices), "target": self.target_name,
                "target_class": self.target_class, "substitute": None, "quantize": self.quantize,
                "generation_autocast": "none", "seed": self.poison_seed, "config_hash": None, "cache_dir": None}

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if isinstance(self.train_dataset, ShapesDataset):
            self.train_dataset = PoisonedShapesDataset(self.train_dataset, self.poison_pair, self._active)
        if self.train_dataset is not None and not self.poison_report:
            self.poison_report = self._stealth(self.poisoned_indices[:64])

    def _stealth(self, indices: list[int]) -> dict[str, float]:
        """Mean PSNR/SSIM of poisoned vs clean HR and triggered vs clean LR over (up to 64 of) the active set."""
        if not indices:
            return {"num_candidates": float(len(self.candidate_indices))}
        clean = collate_shapes([self.train_dataset.base[i] for i in indices])
        lr_p, hr_p = zip(*(self.poison_pair(lr, hr, objects)
                           for lr, hr, objects in zip(clean["lr"], clean["hr"], clean["objects"])))
        hr_fig = stealth_figures(torch.stack(hr_p), clean["hr"])
        lr_fig = stealth_figures(torch.stack(lr_p), clean["lr"])

        def mean(t: torch.Tensor) -> float:
            t = t[torch.isfinite(t)]
            return float(t.mean()) if t.numel() else float("nan")

        return {"poisoned_hr_psnr": mean(hr_fig["psnr"]), "poisoned_hr_ssim": mean(hr_fig["ssim"]),
                "trigger_lr_psnr": mean(lr_fig["psnr"]), "trigger_lr_ssim": mean(lr_fig["ssim"]),
                "num_candidates": float(len(self.candidate_indices))}

    def train_dataloader(self) -> DataLoader:
        # non-persistent workers are forked anew each epoch, so they see a newly installed active set
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          collate_fn=collate_shapes, drop_last=True, persistent_workers=False)


__all__ = ["HueShiftLabel", "PoisonedShapesDataModule", "PoisonedShapesDataset", "SHAPES"]
