"""Exponential moving average of a network's weights (BasicSR's ``params_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema_copy(net: nn.Module) -> nn.Module:
    """A frozen deep copy of ``net`` in eval mode, to hold the averaged weights."""
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * net`` for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    net_params = [p.detach() for p in net.parameters()]
    torch._foreach_lerp_(ema_params, net_params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
