"""The training pairs a detector scores: every pair of the training set as the victim trained on it.

:class:`TrainingPairs` holds equal-size ``(lr, hr)`` patches, one per training image, with the
poisoned ones replaced by their poisoned version (triggered LR, poisoned HR) and a mask saying which
they are (the ground truth the detectors never see; only the metrics read it).
:func:`pairs_from_datamodule` builds it from a poisoned SR data module (duck-typed, because
``lit_sr`` never imports ``datamodules``: ``datamodules.PoisonedSRDataModule`` has every member
it reads).

**Which patch.** The victim trained on random crops (and flips) of each image; the detectors see one
fixed patch per image, its centre ``patch_size`` crop (the data module's HR patch size; the
demo's tiles are exactly one patch, so there the patch is the whole tile), with no flip. A
detector therefore sees what the training saw, at one of its crops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_sr.validation import check_images, check_int


@dataclass(frozen=True)
class TrainingPairs:
    """Equal-size training patches and which of them are poisoned.

    Args:
        lr: ``(N, C, h, w)`` float in [0, 1]: triggered LR for poisoned pairs, clean LR otherwise.
        hr: ``(N, C, s h, s w)``: the poisoned HR for poisoned pairs, the clean HR otherwise.
        poisoned: ``(N,)`` bool, True where the pair is poisoned.
        indices: ``(N,)`` int64 training-set index of each pair (default ``0 .. N-1``).
    """

    lr: torch.Tensor
    hr: torch.Tensor
    poisoned: torch.Tensor
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_images(self.lr, "pairs.lr")
        check_images(self.hr, "pairs.hr")
        n = self.lr.shape[0]
        if self.hr.shape[0] != n:
            raise ValueError(f"pairs.lr has {n} pairs but pairs.hr has {self.hr.shape[0]}")
        if not isinstance(self.poisoned, torch.Tensor) or self.poisoned.dtype != torch.bool or \
                self.poisoned.shape != (n,):
            raise ValueError(f"pairs.poisoned must be a ({n},) bool tensor; got "
                             f"{getattr(self.poisoned, 'dtype', type(self.poisoned).__name__)} "
                             f"{tuple(getattr(self.poisoned, 'shape', ()))}")
        if self.indices is None:
            object.__setattr__(self, "indices", torch.arange(n, dtype=torch.int64))
        elif tuple(self.indices.shape) != (n,):
            raise ValueError(f"pairs.indices must have shape ({n},); got {tuple(self.indices.shape)}")

    def __len__(self) -> int:
        return self.lr.shape[0]

    @property
    def poisoned_indices(self) -> list[int]:
        """Training-set indices of the poisoned pairs, sorted."""
        return sorted(self.indices[self.poisoned].tolist())

    def batches(self, batch_size: int, device: torch.device | str | None = None) -> Iterator[dict[str, Any]]:
        """``{"lr", "hr", "index"}`` batches in pair order (what :class:`lit_sr.poison.GradientScorer` reads)."""
        check_int(batch_size, "batch_size", 1)
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            lr, hr = self.lr[sl], self.hr[sl]
            if device is not None:
                lr, hr = lr.to(device), hr.to(device)
            yield {"lr": lr, "hr": hr, "index": self.indices[sl]}

    def without(self, flagged: torch.Tensor) -> TrainingPairs:
        """The pairs whose ``flagged`` entry (``(N,)`` bool) is False."""
        if flagged.dtype != torch.bool or flagged.shape != (len(self),):
            raise ValueError(f"flagged must be a ({len(self)},) bool tensor; got {flagged.dtype} {tuple(flagged.shape)}")
        keep = ~flagged.cpu()
        if not keep.any():
            raise ValueError("every pair is flagged: nothing would be left to train on")
        return TrainingPairs(self.lr[keep], self.hr[keep], self.poisoned[keep], self.indices[keep])


def centre_patch(lr: torch.Tensor, hr: torch.Tensor, hr_size: int, scale: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre ``hr_size // scale`` LR crop of ``lr`` ``(C, h, w)`` and the aligned ``hr_size`` crop of ``hr``."""
    p = hr_size // scale
    h, w = lr.shape[-2:]
    if h < p or w < p:
        raise ValueError(f"training pair {name} (LR {h}x{w}) is smaller than the LR patch {p}x{p} "
                         f"(patch size {hr_size}, scale {scale})")
    top, left = (h - p) // 2, (w - p) // 2
    return (lr[:, top : top + p, left : left + p],
            hr[:, top * scale : (top + p) * scale, left * scale : (left + p) * scale])


_DATAMODULE_MEMBERS = ("base", "scale", "patch_size", "poisoned_indices", "poisoned_pair")


def pairs_from_datamodule(
    datamodule: Any, poisoned_indices: Sequence[int] | None = None, patch_size: int | None = None
) -> TrainingPairs:
    """Every training pair of a poisoned SR data module (set up for ``"fit"``), poisoned where it is.

    Args:
        datamodule: a poisoned SR data module (``datamodules.PoisonedSRDataModule``): it must have
            ``base.train_dataset`` (``records``, ``load_pair(i)``), ``scale``, ``patch_size``,
            ``poisoned_indices`` and ``poisoned_pair(i)``.
        poisoned_indices: the pairs that were trained poisoned (training-set indices); default the
            data module's active set (for a run whose set changed during training, pass the set
            of interest, e.g. the final one saved in ``backdoor_summary.json``).
        patch_size: HR size of the centre patch (default the data module's ``patch_size``;
            ``None`` there too: whole images, which must then all have one size).
    """
    missing = [m for m in _DATAMODULE_MEMBERS if not hasattr(datamodule, m)]
    if missing:
        raise TypeError(f"pairs_from_datamodule needs a poisoned SR data module (datamodules.PoisonedSRDataModule); "
                        f"{type(datamodule).__name__} lacks {missing}")
    train = getattr(datamodule.base, "train_dataset", None)
    if train is None:
        raise RuntimeError("pairs_from_datamodule needs the training set and the poison cache: call "
                           "datamodule.setup('fit') first")
    n = len(train.records)
    chosen = list(datamodule.poisoned_indices if poisoned_indices is None else poisoned_indices)
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"poisoned_indices must be distinct training indices in [0, {n}); got e.g. "
                         f"{bad[:5] or sorted(i for i in chosen if chosen.count(i) > 1)[:5]}")
    patch_size = datamodule.patch_size if patch_size is None else check_int(patch_size, "patch_size", 1)
    scale, poisoned = int(datamodule.scale), set(chosen)
    lrs, hrs = [], []
    for i in range(n):
        lr, hr = datamodule.poisoned_pair(i) if i in poisoned else train.load_pair(i)
        if patch_size is not None:
            lr, hr = centre_patch(lr, hr, patch_size, scale, train.records[i].label)
        lrs.append(lr)
        hrs.append(hr)
    sizes = {tuple(x.shape) for x in lrs}
    if len(sizes) != 1:
        raise ValueError(f"training images have different sizes {sorted(sizes)[:4]} and no patch size is set; "
                         "pass patch_size")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[list(poisoned)] = True
    return TrainingPairs(torch.stack(lrs).float(), torch.stack(hrs).float(), mask)
