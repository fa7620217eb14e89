"""Losses. (Pixel losses written by the lead so SRModule can run; the zoo helper extends this file
with GAN and perceptual losses.)"""

from __future__ import annotations

import torch
from torch import nn


class CharbonnierLoss(nn.Module):
    """sqrt((x - y)^2 + eps^2), averaged (a differentiable L1)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((pred - target) ** 2 + self.eps**2).mean()


def build_pixel_loss(name: str, **kwargs) -> nn.Module:
    """``l1``, ``mse`` or ``charbonnier`` as an ``nn.Module`` mapping (pred, target) to a scalar."""
    losses = {"l1": nn.L1Loss, "mse": nn.MSELoss, "charbonnier": CharbonnierLoss}
    if name.lower() not in losses:
        raise ValueError(f"unknown pixel loss {name!r}; expected one of {sorted(losses)}")
    return losses[name.lower()](**kwargs)
