"""Attack success rates and stealth figures of SR backdoors.

Each rate comes with its counts (``num_success``, ``num_included``) so that a distributed run can
sum the counts over ranks and divide once, rather than averaging per-rank rates. Following the
classification convention (a sample already of the target class is not counted), samples whose
*clean* output already meets the success criterion are left out of both counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from lit_sr.poison.poisoned_hr import resize_target
from lit_sr.poison.triggers import check_images, check_number


class ASRResult(NamedTuple):
    """One ASR measurement.

    Attributes:
        rate: ``num_success / num_included`` (NaN when no sample is included).
        success: ``(N,)`` bool, the criterion met by the triggered output (also for excluded samples).
        included: ``(N,)`` bool, the sample counts (its clean output did not already succeed).
        num_success: successes among the included samples.
        num_included: included samples.
    """

    rate: float
    success: torch.Tensor
    included: torch.Tensor
    num_success: int
    num_included: int


def _result(success: torch.Tensor, included: torch.Tensor) -> ASRResult:
    success, included = success.cpu(), included.cpu()
    num_included = int(included.sum())
    num_success = int((success & included).sum())
    rate = num_success / num_included if num_included else float("nan")
    return ASRResult(rate, success, included, num_success, num_included)


def _as_batch(target: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    n, c, h, w = like.shape
    t = target if isinstance(target, torch.Tensor) and target.shape == like.shape else None
    if t is None:
        t = resize_target(target, n, h, w, c, name=name)
    return t.to(device=like.device, dtype=like.dtype)


def pixel_success(
    sr: torch.Tensor,
    target_sr: torch.Tensor,
    psnr_thr: float = 20.0,
    ssim_thr: float = 0.7,
    crop_border: int = 0,
    y_channel: bool = False,
) -> torch.Tensor:
    """``(N,)`` bool: ``PSNR(sr, target_sr) >= psnr_thr`` and ``SSIM(sr, target_sr) >= ssim_thr``
    (:mod:`lit_sr.metrics`: 8-bit rounded, BasicSR's SSIM). Arguments as in :func:`pixel_asr`."""
    from lit_sr.metrics import psnr, ssim

    p = psnr(sr, target_sr, crop_border=crop_border, y_channel=y_channel)
    s = ssim(sr, target_sr, crop_border=crop_border, y_channel=y_channel)
    return (p >= psnr_thr) & (s >= ssim_thr)


def pixel_asr(
    triggered_sr: torch.Tensor,
    target_sr: torch.Tensor,
    clean_sr: torch.Tensor | None = None,
    psnr_thr: float = 20.0,
    ssim_thr: float = 0.7,
    crop_border: int = 0,
    y_channel: bool = False,
) -> ASRResult:
    """Pixel ASR: the triggered output reproduces the backdoor's target image.

    A sample succeeds when its triggered output is within ``PSNR >= psnr_thr`` dB **and**
    ``SSIM >= ssim_thr`` of the target output (the criterion of the SR-backdoor literature:
    20 dB and 0.7). A sample whose clean output (``clean_sr``, the model on the untriggered
    input) already meets the same criterion is excluded: the backdoor cannot take credit for it.
    Without ``clean_sr`` every sample is included.

    Args:
        triggered_sr: model outputs on triggered LR inputs, ``(N, C, H, W)`` in [0, 1].
        target_sr: the target output: ``(N, C, H, W)``, or one image ``(C, h, w)`` /
            ``(1, C, h, w)`` for all, resized to the output size if needed.
        clean_sr: model outputs on the clean LR inputs, like ``triggered_sr`` (optional).
        psnr_thr: PSNR threshold in dB. Default 20.
        ssim_thr: SSIM threshold. Default 0.7.
        crop_border: pixels cropped from each side before measuring.
        y_channel: measure on the BT.601 Y channel.

    Returns:
        :class:`ASRResult`.
    """
    check_images(triggered_sr, "triggered_sr")
    check_number(psnr_thr, "psnr_thr")
    check_number(ssim_thr, "ssim_thr", -1.0, 1.0)
    target = _as_batch(target_sr, triggered_sr, "target_sr")
    success = pixel_success(triggered_sr, target, psnr_thr, ssim_thr, crop_border, y_channel)
    if clean_sr is None:
        included = torch.ones_like(success)
    else:
        check_images(clean_sr, "clean_sr")
        if clean_sr.shape != triggered_sr.shape:
            raise ValueError(f"clean_sr has shape {tuple(clean_sr.shape)}; expected {tuple(triggered_sr.shape)}")
        included = ~pixel_success(clean_sr, target, psnr_thr, ssim_thr, crop_border, y_channel)
    return _result(success, included)


def _feature_sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


@torch.no_grad()
def feature_asr(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    triggered_sr: torch.Tensor,
    target: torch.Tensor,
    clean_sr: torch.Tensor,
    hr: torch.Tensor | None = None,
) -> ASRResult:
    """Feature ASR: in the substitute's feature space the triggered output looks like the target.

    With ``F = feature_fn`` and ``d`` the mean squared feature distance, a sample succeeds when
    ``d(F(triggered_sr), F(target)) < d(F(triggered_sr), F(clean_sr))``: the triggered output is
    closer to the target than to what the model produces without the trigger. The clean output
    is the reference of the criterion, so it cannot be tested against itself; when the HR ground
    truth ``hr`` is given, a sample is excluded if its clean output is already closer to the
    target than to ``hr`` (``d(F(clean_sr), F(target)) < d(F(clean_sr), F(hr))``). Without
    ``hr`` every sample is included.

    Args:
        feature_fn: ``images -> features``, e.g. :class:`lit_sr.poison.FeatureExtractor` around
            the substitute (the features BadSR's poisoned labels were aligned in).
        triggered_sr: outputs on triggered inputs, ``(N, C, H, W)`` in [0, 1].
        target: the target image, ``(N, C, H, W)`` or one image, resized to the output size.
        clean_sr: outputs on the clean inputs, like ``triggered_sr``.
        hr: HR ground truth, like ``triggered_sr`` (optional, for the exclusion).

    Returns:
        :class:`ASRResult`.
    """
    check_images(triggered_sr, "triggered_sr")
    check_images(clean_sr, "clean_sr")
    if clean_sr.shape != triggered_sr.shape:
        raise ValueError(f"clean_sr has shape {tuple(clean_sr.shape)}; expected {tuple(triggered_sr.shape)}")
    goal = _as_batch(target, triggered_sr, "target")
    f_trig, f_goal, f_clean = feature_fn(triggered_sr), feature_fn(goal), feature_fn(clean_sr)
    success = _feature_sq_distance(f_trig, f_goal) < _feature_sq_distance(f_trig, f_clean)
    if hr is None:
        included = torch.ones_like(success)
    else:
        check_images(hr, "hr")
        if hr.shape != triggered_sr.shape:
            raise ValueError(f"hr has shape {tuple(hr.shape)}; expected {tuple(triggered_sr.shape)}")
        f_hr = feature_fn(hr)
        included = ~(_feature_sq_distance(f_clean, f_goal) < _feature_sq_distance(f_clean, f_hr))
    return _result(success, included)


@torch.no_grad()
def stealth(
    modified: torch.Tensor, original: torch.Tensor, crop_border: int = 0, y_channel: bool = False
) -> dict[str, torch.Tensor]:
    """Stealth of a modification (a poisoned HR label or a triggered LR input): per-image
    ``psnr`` and ``ssim`` of ``modified`` against ``original`` (:mod:`lit_sr.metrics`
    conventions), plus ``linf`` and ``rms`` of the raw difference on the [0, 1] scale.

    Args:
        modified: ``(N, C, H, W)`` in [0, 1].
        original: same shape.
        crop_border: pixels cropped from each side for PSNR/SSIM.
        y_channel: PSNR/SSIM on the Y channel.
    """
    from lit_sr.metrics import psnr, ssim

    check_images(modified, "modified")
    check_images(original, "original")
    if modified.shape != original.shape:
        raise ValueError(f"modified has shape {tuple(modified.shape)} but original has {tuple(original.shape)}")
    diff = (modified.float() - original.float()).flatten(1)
    return {
        "psnr": psnr(modified, original, crop_border, y_channel).cpu(),
        "ssim": ssim(modified, original, crop_border, y_channel).cpu(),
        "linf": diff.abs().amax(dim=1).cpu(),
        "rms": diff.pow(2).mean(dim=1).sqrt().cpu(),
    }
