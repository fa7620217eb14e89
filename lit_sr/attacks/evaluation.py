"""Per-image metrics of an attack: stealth on the LR side, damage on the SR side (Choi et al. Sec. 4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lit_sr.metrics import masked_psnr, psnr, ssim, ssim_map
from lit_sr.runtime import Autocast, autocast_context, frozen_eval, model_device
from lit_sr.validation import check_images, check_int

_SSIM_WINDOW = 11


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border else x


def _check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    if mask.dim() == 2:
        mask = mask.view(1, 1, *mask.shape)
    if (
        mask.dim() != 4
        or mask.shape[1] != 1
        or mask.shape[-2:] != image.shape[-2:]
        or mask.shape[0] not in (1, image.shape[0])
    ):
        raise ValueError(
            f"mask_hr must have shape (H, W) or (1 or N, 1, H, W) matching the SR output {tuple(image.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask.to(image.device, torch.float64)


def masked_ssim(
    sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, crop_border: int = 0, y_channel: bool = False
) -> torch.Tensor:
    """Per-image SSIM averaged over the windows whose centre lies in ``mask``.

    Same protocol as :func:`lit_sr.metrics.ssim` (8-bit rounding, 11x11 Gaussian window,
    sigma 1.5, valid region, BasicSR constants, mean over channels); only the final average is
    restricted to the window centres where the mask is 1. Windows near the mask's edge see some
    pixels outside it, which is inherent to a windowed measure.

    Args:
        sr, hr: ``(N, C, H, W)`` in [0, 1].
        mask: ``(H, W)`` or ``(1 or N, 1, H, W)`` binary mask at the images' resolution.
        crop_border: pixels removed from every side of images and mask first.
        y_channel: measure BT.601 Y instead of RGB.
    """
    if sr.shape != hr.shape or sr.dim() != 4:
        raise ValueError(
            f"masked_ssim needs two (N,C,H,W) tensors of one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    mask = _crop(_check_mask(mask, sr), crop_border)
    smap = ssim_map(sr, hr, crop_border=crop_border, y_channel=y_channel)
    half = _SSIM_WINDOW // 2
    centres = mask[..., half:-half, half:-half].expand(smap.shape[0], 1, *smap.shape[-2:])
    count = centres.flatten(1).sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError("masked_ssim: the mask leaves no valid 11x11 window for at least one image")
    return (smap.mean(dim=1, keepdim=True) * centres).flatten(1).sum(dim=1) / count


def _psnr(
    a: torch.Tensor, b: torch.Tensor, crop_border: int, y_channel: bool, mask: torch.Tensor | None
) -> torch.Tensor:
    if mask is None:
        return psnr(a, b, crop_border=crop_border, y_channel=y_channel)
    return masked_psnr(
        _crop(a, crop_border), _crop(b, crop_border), _crop(mask, crop_border), y_channel=y_channel
    )


def _ssim(
    a: torch.Tensor, b: torch.Tensor, crop_border: int, y_channel: bool, mask: torch.Tensor | None
) -> torch.Tensor:
    if mask is None:
        return ssim(a, b, crop_border=crop_border, y_channel=y_channel)
    return masked_ssim(a, b, mask, crop_border=crop_border, y_channel=y_channel)


def attack_metrics(
    model: nn.Module,
    lr: torch.Tensor,
    lr_adv: torch.Tensor,
    hr: torch.Tensor | None = None,
    crop_border: int = 0,
    y_channel: bool = False,
    mask_hr: torch.Tensor | None = None,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    autocast: Autocast = "none",
) -> dict[str, torch.Tensor]:
    """Per-image metrics of an attack, each a float64 ``(N,)`` tensor on the CPU.

    Keys:
        ``lr_psnr``: attacked vs clean LR input (stealth; no border crop on the LR side).
        ``sr_psnr``, ``sr_ssim``: SR of the attacked input vs SR of the clean input (the paper's
        measure of damage).
        ``hr_psnr``, ``hr_ssim``, ``clean_hr_psnr``: attacked SR vs HR, and clean SR vs HR (with
        ``hr``).
        ``sr_lpips`` (and ``hr_lpips`` with ``hr``): with an ``lpips`` callable, e.g.
        :func:`lit_sr.metrics.build_lpips` (LPIPS is never computed on a random backbone here).

    Args:
        model: the SR network (or a defense wrapping it); run in eval mode without gradient,
            its modes restored afterwards.
        lr, lr_adv: clean and attacked ``(N, C, H, W)`` LR batches in [0, 1].
        hr: optional HR batch.
        crop_border: SR-side border crop (the convention is the scale); PSNR/SSIM on 8-bit
            rounded values as in :mod:`lit_sr.metrics`.
        y_channel: BT.601 Y instead of RGB (both sides).
        mask_hr: ``(H, W)`` or ``(1 or N, 1, H, W)`` SR-resolution mask: SR-side PSNR and SSIM are
            taken only where it is 1, e.g. the outer region of the partial attack
            (``PartialAttack.last_outer_hr_mask``). LPIPS ignores it.
        lpips: optional ``(x, y) -> (N,)`` perceptual distance on [0, 1] images.
        autocast: ``"none"`` (float32) or ``"bf16"`` for the two forward passes.
    """
    check_images(lr, "lr", value_range=True)
    check_images(lr_adv, "lr_adv", value_range=True)
    if lr.shape != lr_adv.shape:
        raise ValueError(f"lr {tuple(lr.shape)} and lr_adv {tuple(lr_adv.shape)} differ in shape")
    crop_border = check_int(crop_border, "crop_border", 0)
    with torch.no_grad(), frozen_eval(model):
        device = model_device(model, lr.device)
        with autocast_context(autocast, device):
            sr_clean = model(lr.to(device)).float()
            sr_adv = model(lr_adv.to(device)).float()
    mask = None if mask_hr is None else _check_mask(mask_hr, sr_adv)
    lr_adv = lr_adv.to(lr.device)
    out = {
        "lr_psnr": psnr(lr_adv, lr, y_channel=y_channel),
        "sr_psnr": _psnr(sr_adv, sr_clean, crop_border, y_channel, mask),
        "sr_ssim": _ssim(sr_adv, sr_clean, crop_border, y_channel, mask),
    }
    if hr is not None:
        hr = hr.to(device)
        if hr.shape != sr_adv.shape:
            raise ValueError(f"hr {tuple(hr.shape)} does not match the SR output {tuple(sr_adv.shape)}")
        out["hr_psnr"] = _psnr(sr_adv, hr, crop_border, y_channel, mask)
        out["hr_ssim"] = _ssim(sr_adv, hr, crop_border, y_channel, mask)
        out["clean_hr_psnr"] = _psnr(sr_clean, hr, crop_border, y_channel, mask)
    if lpips is not None:
        with torch.no_grad():
            out["sr_lpips"] = lpips(sr_adv.clamp(0, 1), sr_clean.clamp(0, 1)).double().flatten()
            if hr is not None:
                out["hr_lpips"] = lpips(sr_adv.clamp(0, 1), hr).double().flatten()
    return {key: value.detach().cpu() for key, value in out.items()}
