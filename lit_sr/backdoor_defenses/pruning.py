"""FP: fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018), for SR networks.

A backdoor often lives in channels that clean inputs leave dormant. Fine-pruning measures each
output channel of a chosen convolution on the defender's clean LR patches, prunes the
``prune_ratio`` least active ones, then fine-tunes the pruned network on the same clean subset.

Choices the paper leaves open for SR, made here and exposed as parameters:

* **the layer** (``layer``, a dotted module name of an ``nn.Conv2d``): the paper prunes the last
  convolutional layer of a classifier; an SR network has no such bottleneck, so the default in our
  recipes is the inner convolution of EDSR's last residual block (``body.<last>.conv1``), whose
  channels feed only the block's second convolution. Any conv whose output goes, through an
  element-wise activation with ``act(0) = 0``, only to ``next_layer`` qualifies.
* **activity** (``activity``): ``"relu_mean"``, the mean of ``relu(conv output)`` over the clean
  patches (the paper's mean activation after the ReLU), or ``"abs_mean"`` (mean absolute output,
  for layers followed by a signed activation). Ties go to the lower channel index.
* **how a channel is pruned** (``method``):

  - ``"mask"``: the channel's weights and bias are set to zero and kept at zero through the
    fine-tuning (re-zeroed after every optimiser step). The output of the channel is then exactly
    zero, and zero after an activation with ``act(0) = 0`` (ReLU, LeakyReLU, PReLU), so the network
    computes what the physically pruned one computes; its state_dict keeps its shapes and loads
    into the original architecture.
  - ``"remove"``: the output channels are physically removed from ``layer`` and the matching input
    channels from ``next_layer`` (both replaced by smaller ``nn.Conv2d``): a smaller, faster
    network whose state_dict no longer fits the original architecture.

  Either way :attr:`FinePruning.info` lists the pruned channel indices and their activities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from lit_sr.backdoor_defenses.base import FinetuneSettings, RepairDefense, finetune
from lit_sr.backdoor_defenses.data import CleanSubset
from lit_sr.runtime import autocast_context, model_device
from lit_sr.validation import check_choice, check_fraction, check_int

PruneMethod = Literal["mask", "remove"]
PRUNE_METHODS: tuple[str, ...] = get_args(PruneMethod)
Activity = Literal["relu_mean", "abs_mean"]
ACTIVITIES: tuple[str, ...] = get_args(Activity)


@dataclass
class FPConfig(FinetuneSettings):
    """Fine-pruning's settings: the fine-tuning of :class:`FinetuneSettings` plus

    Args:
        layer: dotted name of the ``nn.Conv2d`` to prune (``body.1.conv1`` in a 2-block EDSR). Required.
        prune_ratio: share of its output channels to prune, in (0, 1); ``round(ratio * channels)``
            channels are pruned, at least one and at least one kept.
        method: ``"mask"`` (zeroed and kept at zero) or ``"remove"`` (physically removed).
        next_layer: the ``nn.Conv2d`` that reads ``layer``'s output (``body.1.conv2``); required
            for ``"remove"``.
        activity: ``"relu_mean"`` or ``"abs_mean"`` (see the module docstring).
        eval_batch_size: patches per forward pass while measuring the activity.
    """

    layer: str = ""
    prune_ratio: float = 0.2
    method: PruneMethod = "mask"
    next_layer: str | None = None
    activity: Activity = "relu_mean"
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"layer must name the nn.Conv2d to prune (e.g. 'body.1.conv1'); got {self.layer!r}")
        self.prune_ratio = check_fraction(self.prune_ratio, "prune_ratio", allow_zero=False, allow_one=False)
        self.method = check_choice(self.method, "method", PRUNE_METHODS)
        self.activity = check_choice(self.activity, "activity", ACTIVITIES)
        self.eval_batch_size = check_int(self.eval_batch_size, "eval_batch_size", 1)
        if self.method == "remove" and not (isinstance(self.next_layer, str) and self.next_layer):
            raise ValueError("next_layer must name the nn.Conv2d that reads layer's output when method='remove' "
                             f"(e.g. 'body.1.conv2'); got {self.next_layer!r}")


def get_conv(model: nn.Module, name: str, key: str) -> nn.Conv2d:
    """The ``nn.Conv2d`` called ``name`` in ``model``; a named error otherwise (``key``: the config key)."""
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"{key}={name!r} is not a module of {type(model).__name__}; its convolutions: {convs}")
    module = modules[name]
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"{key}={name!r} is a {type(module).__name__}, not an nn.Conv2d")
    return module


def num_pruned(channels: int, ratio: float) -> int:
    """``round(ratio * channels)``, at least 1 and at most ``channels - 1`` (a named error if impossible)."""
    if channels < 2:
        raise ValueError(f"cannot prune a layer with {channels} output channel(s)")
    return min(max(1, round(ratio * channels)), channels - 1)


@torch.no_grad()
def channel_activity(model: nn.Module, layer: nn.Conv2d, lr: torch.Tensor, activity: Activity = "relu_mean",
                     batch_size: int = 64, autocast: str = "none") -> torch.Tensor:
    """``(out_channels,)`` float64: each output channel's mean activity over ``lr`` (eval mode)."""
    device = model_device(model, torch.device("cpu"))
    total = torch.zeros(layer.out_channels, dtype=torch.float64)
    count = 0

    def hook(_module, _inputs, out):
        nonlocal count
        a = out.float().relu() if activity == "relu_mean" else out.float().abs()
        total.add_(a.sum(dim=(0, 2, 3)).double().cpu())
        count += out.shape[0] * out.shape[2] * out.shape[3]

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(hook)
    try:
        for start in range(0, lr.shape[0], batch_size):
            with autocast_context(autocast, device):
                model(lr[start : start + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return total / max(count, 1)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _sliced_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> nn.Conv2d:
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    bias = conv.bias.detach() if conv.bias is not None else None
    if bias is not None and out_keep is not None:
        bias = bias[out_keep]
    new = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, bias is not None, conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def remove_channels(model: nn.Module, layer: str, next_layer: str, pruned: list[int]) -> None:
    """Physically remove output channels ``pruned`` of ``layer`` and the matching inputs of ``next_layer``."""
    conv, nxt = get_conv(model, layer, "layer"), get_conv(model, next_layer, "next_layer")
    if conv.groups != 1 or nxt.groups != 1:
        raise ValueError("method='remove' supports ungrouped convolutions only (groups=1); use method='mask'")
    if nxt.in_channels != conv.out_channels:
        raise ValueError(f"next_layer={next_layer!r} reads {nxt.in_channels} channels but layer={layer!r} writes "
                         f"{conv.out_channels}: it is not the layer's consumer")
    keep = torch.tensor([c for c in range(conv.out_channels) if c not in set(pruned)], device=conv.weight.device)
    _set_module(model, layer, _sliced_conv(conv, keep, None))
    _set_module(model, next_layer, _sliced_conv(nxt, None, keep))


class FinePruning(RepairDefense):
    """FP: prune the least clean-active channels of ``layer``, then fine-tune (see the module docstring)."""

    name = "fp"
    config_class = FPConfig

    def _repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        cfg: FPConfig = self.config
        conv = get_conv(model, cfg.layer, "layer")
        if cfg.method == "remove":
            get_conv(model, cfg.next_layer, "next_layer")
        act = channel_activity(model, conv, clean.lr, cfg.activity, cfg.eval_batch_size, cfg.autocast)
        k = num_pruned(conv.out_channels, cfg.prune_ratio)
        order = sorted(range(conv.out_channels), key=lambda c: (float(act[c]), c))
        pruned = sorted(order[:k])
        self.info = {"layer": cfg.layer, "channels": conv.out_channels, "pruned": pruned,
                     "pruned_activity": [float(act[c]) for c in pruned],
                     "kept_activity_mean": float(act[[c for c in range(conv.out_channels) if c not in pruned]].mean())}
        if cfg.method == "remove":
            remove_channels(model, cfg.layer, cfg.next_layer, pruned)
            after_step = None
        else:
            index = torch.tensor(pruned, device=conv.weight.device)

            def after_step(net: nn.Module) -> None:  # keep the pruned channels dead through the fine-tuning
                c = get_conv(net, cfg.layer, "layer")
                c.weight.index_fill_(0, index, 0.0)
                if c.bias is not None:
                    c.bias.index_fill_(0, index, 0.0)

            with torch.no_grad():
                after_step(model)
        losses = finetune(model, clean, cfg, after_step=after_step, desc="FP")
        self.info["final_loss"] = losses[-1] if losses else None
        return model
