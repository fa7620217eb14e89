"""Flips and 90-degree rotations of whole batches on the device (instead of per sample in the workers)."""

from __future__ import annotations

import torch


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def augment_batch(
    lr: torch.Tensor,
    hr: torch.Tensor,
    hflip: bool = True,
    rot: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flips and transpose per sample on ``lr`` and ``hr`` (BasicSR's ``augment``).

    Each sample draws three coin flips, as :func:`datamodules.datasets.augment_pair` does: a
    horizontal flip (``hflip``), a vertical flip and a transpose (``rot``; the two together give
    the four 90-degree rotations and their mirrors, the 8 symmetries of the square). The draws come
    from ``generator`` (default: the global generator of the batch's device, which
    ``seed_everything`` seeds), so a seeded run is reproducible.

    Args:
        lr: ``(N, C, h, w)`` LR patches.
        hr: ``(N, C, H, W)`` HR patches (``H = s h``), on the same device.
        hflip: allow horizontal flips.
        rot: allow vertical flips and transposes; needs square patches.
        generator: random generator on the batch's device.

    Returns:
        ``(lr, hr)`` augmented, new tensors.
    """
    if lr.dim() != 4 or hr.dim() != 4 or lr.shape[0] != hr.shape[0]:
        raise ValueError(f"augment_batch expects (N, C, H, W) batches of equal N, got lr {tuple(lr.shape)} "
                         f"and hr {tuple(hr.shape)}")
    if rot and (lr.shape[-1] != lr.shape[-2] or hr.shape[-1] != hr.shape[-2]):
        raise ValueError(f"rotations need square patches, got lr {tuple(lr.shape[-2:])} and hr {tuple(hr.shape[-2:])}")
    coins = torch.rand(lr.shape[0], 3, device=lr.device, generator=generator) < 0.5
    if hflip:
        lr, hr = _where(coins[:, 0], lr.flip(-1), lr), _where(coins[:, 0], hr.flip(-1), hr)
    if rot:
        lr, hr = _where(coins[:, 1], lr.flip(-2), lr), _where(coins[:, 1], hr.flip(-2), hr)
        lr = _where(coins[:, 2], lr.transpose(-1, -2), lr)
        hr = _where(coins[:, 2], hr.transpose(-1, -2), hr)
    return lr.contiguous(), hr.contiguous()
