"""What a repair defense is given, and how its effect is measured.

* :class:`CleanSubset`: the defender's data, a small set of clean training pairs (a stated fraction
  of the training set, 5% by default, the share classifier benchmarks such as BackdoorBench give
  their defenses). Nothing about the trigger, the target or which pairs were poisoned.
* :class:`BackdoorEvalSet`: the *evaluator's* data: clean and triggered validation inputs, the HR,
  the poisoned label each image would have been taught and the target image. A defense never
  sees it; :func:`evaluate_backdoor` measures a model on it before and after the repair.

The success metrics are those of :mod:`lit_sr.poison.asr` (one definition in the project):
pixel ASR against the target image (PSNR >= 20 dB and SSIM >= 0.7, clean-success exclusion),
label attainment and attainment-ASR, summed by :class:`lit_sr.poison.asr.SuccessTally`; the clean
quality is the Y-channel PSNR with ``crop_border = scale`` (the convention of docs/design.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lit_sr.metrics import psnr
from lit_sr.poison.asr import PSNR_THR, SSIM_THR, SuccessTally
from lit_sr.runtime import Autocast, autocast_context, frozen_eval, model_device
from lit_sr.validation import check_fraction, check_images, check_int

DEFAULT_CLEAN_FRACTION = 0.05


def _check_scale(lr: torch.Tensor, hr: torch.Tensor, lr_name: str, hr_name: str) -> int:
    check_images(lr, lr_name, value_range=True)
    check_images(hr, hr_name, value_range=True)
    if lr.shape[0] != hr.shape[0] or lr.shape[1] != hr.shape[1]:
        raise ValueError(f"{lr_name} {tuple(lr.shape)} and {hr_name} {tuple(hr.shape)} must have the same N and C")
    s = hr.shape[-1] // lr.shape[-1]
    if s < 1 or hr.shape[-1] != s * lr.shape[-1] or hr.shape[-2] != s * lr.shape[-2]:
        raise ValueError(f"{hr_name} {tuple(hr.shape[-2:])} is not an integer multiple of {lr_name} "
                         f"{tuple(lr.shape[-2:])}")
    return s


@dataclass(frozen=True)
class CleanSubset:
    """Clean training pairs the defender holds, as equal-size patches.

    Args:
        lr: ``(N, C, h, w)`` in [0, 1].
        hr: ``(N, C, s h, s w)`` in [0, 1].
        indices: the training-set indices the pairs come from (for the record).
        fraction: the share of the training set they are (for the record).
        num_train: the size of the training set they were drawn from.
    """

    lr: torch.Tensor
    hr: torch.Tensor
    indices: tuple[int, ...] = ()
    fraction: float | None = None
    num_train: int | None = None

    def __post_init__(self) -> None:
        _check_scale(self.lr, self.hr, "clean.lr", "clean.hr")
        if self.indices and len(self.indices) != self.lr.shape[0]:
            raise ValueError(f"clean.indices has {len(self.indices)} entries for {self.lr.shape[0]} pairs")

    @property
    def scale(self) -> int:
        return self.hr.shape[-1] // self.lr.shape[-1]

    def __len__(self) -> int:
        return self.lr.shape[0]

    def describe(self) -> dict:
        """What the defense used, for the report: pairs, patch sizes, indices, share of the training set."""
        return {"num_pairs": len(self), "lr_size": list(self.lr.shape[-2:]), "hr_size": list(self.hr.shape[-2:]),
                "fraction": self.fraction, "num_train": self.num_train, "indices": list(self.indices)}


def clean_subset_indices(num_train: int, fraction: float = DEFAULT_CLEAN_FRACTION, seed: int = 0) -> list[int]:
    """A seeded random ``fraction`` of ``range(num_train)``, at least one index, sorted.

    ``round(fraction * num_train)`` indices (76 tiles at 5% give 4).
    """
    num_train = check_int(num_train, "num_train", 1)
    fraction = check_fraction(fraction, "clean_fraction", allow_zero=False)
    count = max(1, round(fraction * num_train))
    g = torch.Generator().manual_seed(check_int(seed, "seed"))
    return sorted(torch.randperm(num_train, generator=g)[:count].tolist())


@dataclass(frozen=True)
class BackdoorEvalSet:
    """The evaluator's validation data (never shown to a defense).

    Args:
        lr: clean LR inputs, ``(N, C, h, w)``.
        hr: HR ground truth, ``(N, C, H, W)``.
        triggered_lr: the same inputs with the attack's trigger, like ``lr``.
        poisoned_hr: the label the poisoned training pairs would teach for these images, like ``hr``
            (the target image for a classic label, BadSR's feature-aligned HR for a stealthy one).
        target: the attacker's target image ``y_t*``, ``(N, C, H, W)`` like ``hr`` (or one image,
            resized by the metrics).
    """

    lr: torch.Tensor
    hr: torch.Tensor
    triggered_lr: torch.Tensor
    poisoned_hr: torch.Tensor
    target: torch.Tensor

    def __post_init__(self) -> None:
        _check_scale(self.lr, self.hr, "eval.lr", "eval.hr")
        if self.triggered_lr.shape != self.lr.shape:
            raise ValueError(f"eval.triggered_lr {tuple(self.triggered_lr.shape)} must match eval.lr {tuple(self.lr.shape)}")
        if self.poisoned_hr.shape != self.hr.shape:
            raise ValueError(f"eval.poisoned_hr {tuple(self.poisoned_hr.shape)} must match eval.hr {tuple(self.hr.shape)}")
        check_images(self.target if self.target.dim() == 4 else self.target.unsqueeze(0), "eval.target")

    @property
    def scale(self) -> int:
        return self.hr.shape[-1] // self.lr.shape[-1]

    def __len__(self) -> int:
        return self.lr.shape[0]


def _forward(model: nn.Module, x: torch.Tensor, batch_size: int, autocast: Autocast) -> torch.Tensor:
    device = model_device(model, torch.device("cpu"))
    outs = []
    for start in range(0, x.shape[0], batch_size):
        with autocast_context(autocast, device):
            outs.append(model(x[start : start + batch_size].to(device)).float().clamp(0, 1).cpu())
    return torch.cat(outs)


@torch.no_grad()
def evaluate_backdoor(
    model: nn.Module,
    data: BackdoorEvalSet,
    batch_size: int = 16,
    autocast: Autocast = "none",
    psnr_thr: float = PSNR_THR,
    ssim_thr: float = SSIM_THR,
    attainment_thr: float = 0.5,
) -> dict[str, float | None]:
    """The backdoor figures of ``model`` on ``data`` (the model is left as it was).

    Returns a flat dict: ``clean_psnr_y`` (dB, clean inputs vs HR, Y channel, ``crop_border =
    scale``), ``asr_pixel`` (pixel ASR vs the target image, with ``asr_pixel_success`` /
    ``asr_pixel_included``), ``attainment_mean``, ``attainment_asr`` (with its counts) and
    ``num_images``. Rates with nothing included are ``None``, never NaN.
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    with frozen_eval(model):
        clean_sr = _forward(model, data.lr, batch_size, autocast)
        triggered_sr = _forward(model, data.triggered_lr, batch_size, autocast)
    tally = SuccessTally(psnr_thr, ssim_thr, attainment_thr, means=("clean_psnr_y",))
    target = data.target if data.target.dim() == 4 else data.target.unsqueeze(0)
    target = target.expand(len(data), -1, -1, -1) if target.shape[0] == 1 else target
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        tally.update(clean_sr[sl], triggered_sr[sl], data.hr[sl], data.poisoned_hr[sl], target[sl],
                     means={"clean_psnr_y": psnr(clean_sr[sl], data.hr[sl], data.scale, y_channel=True)})
    return tally.figures()


def stack_pairs(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(lr, hr), ...]`` of ``(C, h, w)`` images to two batches; a named error when sizes differ."""
    if not pairs:
        raise ValueError(f"{name} is empty")
    sizes = {(tuple(lr.shape), tuple(hr.shape)) for lr, hr in pairs}
    if len(sizes) != 1:
        raise ValueError(f"{name}: images of different sizes {sorted(sizes)[:4]}; set a patch/crop size")
    return torch.stack([p[0] for p in pairs]).float(), torch.stack([p[1] for p in pairs]).float()
