"""ANP: adversarial neuron perturbation, then pruning by mask (Wu and Wang, NeurIPS 2021), for SR networks.

Backdoored neurons are the ones whose small perturbation changes the output most. ANP learns a mask
``m_c`` in [0, 1] per output channel ("neuron") of chosen convolutions, the network's weights
frozen, by

    min_m  alpha * L(f_{m}(x), y) + (1 - alpha) * max_{|delta|, |xi| <= eps} L(f_{m + delta, xi}(x), y)

on the clean subset, where the perturbed channel ``c`` computes ``(m_c + delta_c) * (w_c * x) +
(1 + xi_c) * b_c`` (a multiplicative perturbation of its weights and bias), the inner maximisation
being ``pgd_steps`` signed steps from a uniform random start (ANP's ``anp_steps``, 1 by default) and
the outer one SGD with momentum 0.9 on ``m``, clipped to [0, 1]. The channels whose mask ends below
``threshold`` (ANP's pruning by threshold, 0.2) -- or, with ``prune: fraction``, the
``prune_ratio`` lowest -- are then pruned (weights and bias zeroed: the network keeps its shapes),
and the masks are dropped; there is no fine-tuning, as in ANP.

What ANP leaves open for SR, chosen here: the layers (``layers``: convolutions; ANP perturbs the
BatchNorm neurons of a classifier, EDSR has none, so our recipes take the inner convolutions of
the residual blocks, ``body.<i>.conv1``), and the loss (the pixel loss of the fine-tuning settings
in place of the cross-entropy). ``steps``, ``lr`` (the mask's SGD rate), ``batch_size``,
``augment``, ``seed`` and ``autocast`` are those of :class:`FinetuneSettings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.backdoor_defenses.base import FinetuneSettings, RepairDefense, draw_batch, pixel_loss
from lit_sr.backdoor_defenses.data import CleanSubset
from lit_sr.backdoor_defenses.pruning import get_conv
from lit_sr.runtime import autocast_context, model_device
from lit_sr.validation import check_choice, check_fraction, check_int, check_names, check_number

PruneBy = Literal["threshold", "fraction"]
PRUNE_BY: tuple[str, ...] = get_args(PruneBy)


@dataclass
class ANPConfig(FinetuneSettings):
    """ANP's settings (see the module docstring): :class:`FinetuneSettings` (``lr`` is the mask's SGD
    rate, ANP's 0.2) plus

    Args:
        layers: dotted names of the ``nn.Conv2d`` whose output channels get masks (at least one).
        eps: budget of the multiplicative perturbations ``delta``, ``xi`` (ANP's 0.4).
        pgd_steps: signed ascent steps of the inner maximisation.
        alpha: weight of the unperturbed term, in [0, 1] (ANP's 0.2).
        prune: ``"threshold"`` (masks below ``threshold``) or ``"fraction"`` (the ``prune_ratio`` lowest).
        threshold: mask value below which a channel is pruned.
        prune_ratio: share of all masked channels pruned with ``prune: fraction``.
    """

    steps: int = field(default=200)
    lr: float = field(default=0.2)
    layers: Sequence[str] = field(default_factory=list)
    eps: float = 0.4
    pgd_steps: int = 1
    alpha: float = 0.2
    prune: PruneBy = "threshold"
    threshold: float = 0.2
    prune_ratio: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = check_names(self.layers, "layers", "nn.Conv2d names", "['body.0.conv1']")
        self.eps = check_number(self.eps, "eps", 0)
        self.pgd_steps = check_int(self.pgd_steps, "pgd_steps", 1)
        self.alpha = check_fraction(self.alpha, "alpha")
        self.prune = check_choice(self.prune, "prune", PRUNE_BY)
        self.threshold = check_fraction(self.threshold, "threshold")
        self.prune_ratio = check_fraction(self.prune_ratio, "prune_ratio", allow_zero=False, allow_one=False)


class _PerturbedChannels:
    """Mask ``m`` and perturbations ``delta``, ``xi`` of one conv's output channels, applied by a forward hook."""

    def __init__(self, conv: nn.Conv2d):
        c, device = conv.out_channels, conv.weight.device
        self.conv = conv
        self.mask = torch.ones(c, device=device, requires_grad=True)
        self.delta = torch.zeros(c, device=device)
        self.xi = torch.zeros(c, device=device)
        self.perturb = False
        self.handle = conv.register_forward_hook(self._hook)

    def _hook(self, module: nn.Conv2d, _inputs, out: torch.Tensor) -> torch.Tensor:
        scale = self.mask + self.delta if self.perturb else self.mask
        view = (1, -1, 1, 1)
        if module.bias is None:
            return out * scale.view(view).to(out.dtype)
        bias = module.bias.view(view).to(out.dtype)
        bias_scale = (1 + self.xi) if self.perturb else torch.ones_like(self.xi)
        return (out - bias) * scale.view(view).to(out.dtype) + bias * bias_scale.view(view).to(out.dtype)


class AdversarialNeuronPruning(RepairDefense):
    """ANP: learn per-channel masks under adversarial neuron perturbation, prune the low ones (module docstring)."""

    name = "anp"
    config_class = ANPConfig

    def _repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        cfg: ANPConfig = self.config
        convs = {name: get_conv(model, name, "layers") for name in cfg.layers}
        for p in model.parameters():
            p.requires_grad_(False)
        units = {name: _PerturbedChannels(conv) for name, conv in convs.items()}
        try:
            masks = self._learn_masks(model, clean, list(units.values()))
        finally:
            for u in units.values():
                u.handle.remove()
        pruned = self._choose(masks)
        with torch.no_grad():
            for name, channels in pruned.items():
                conv = convs[name]
                index = torch.tensor(channels, dtype=torch.long, device=conv.weight.device)
                conv.weight.index_fill_(0, index, 0.0)
                if conv.bias is not None:
                    conv.bias.index_fill_(0, index, 0.0)
        self.info = {"masks": {n: m.tolist() for n, m in masks.items()}, "pruned": pruned,
                     "num_pruned": sum(len(c) for c in pruned.values()),
                     "num_channels": sum(len(m) for m in masks.values())}
        return model

    def _learn_masks(self, model: nn.Module, clean: CleanSubset, units: list[_PerturbedChannels]) -> dict:
        cfg: ANPConfig = self.config
        device = model_device(model, torch.device("cpu"))
        gen = torch.Generator().manual_seed(cfg.seed)
        loss_fn = pixel_loss(cfg.loss)
        opt = torch.optim.SGD([u.mask for u in units], lr=cfg.lr, momentum=0.9)
        model.eval()  # ANP perturbs a frozen network (EDSR has no BatchNorm whose mode would matter)

        def loss(lr: torch.Tensor, hr: torch.Tensor, perturb: bool) -> torch.Tensor:
            for u in units:
                u.perturb = perturb
            with autocast_context(cfg.autocast, device):
                return loss_fn(model(lr).float(), hr)

        for _ in tqdm(range(cfg.steps), desc="ANP", disable=not cfg.progress, leave=False):
            lr, hr = draw_batch(clean, cfg, gen, device)
            if cfg.eps > 0:
                self._maximise(units, loss, lr, hr, gen)
            total = cfg.alpha * loss(lr, hr, False)
            if cfg.alpha < 1:
                total = total + (1 - cfg.alpha) * loss(lr, hr, True)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            with torch.no_grad():
                for u in units:
                    u.mask.clamp_(0, 1)
        return {name: u.mask.detach().cpu() for name, u in zip(self.config.layers, units)}

    def _maximise(self, units: list[_PerturbedChannels], loss, lr: torch.Tensor, hr: torch.Tensor,
                  gen: torch.Generator) -> None:
        eps, steps = self.config.eps, self.config.pgd_steps
        for u in units:  # a uniform random start in [-eps, eps], drawn by the seeded generator
            u.delta = ((torch.rand(u.delta.shape, generator=gen) * 2 - 1) * eps).to(u.mask.device).requires_grad_(True)
            u.xi = ((torch.rand(u.xi.shape, generator=gen) * 2 - 1) * eps).to(u.mask.device).requires_grad_(True)
        for _ in range(steps):
            grads = torch.autograd.grad(loss(lr, hr, True), [t for u in units for t in (u.delta, u.xi)])
            with torch.no_grad():
                for i, u in enumerate(units):
                    u.delta = (u.delta + eps / steps * grads[2 * i].sign()).clamp(-eps, eps).requires_grad_(True)
                    u.xi = (u.xi + eps / steps * grads[2 * i + 1].sign()).clamp(-eps, eps).requires_grad_(True)
        for u in units:
            u.delta, u.xi = u.delta.detach(), u.xi.detach()

    def _choose(self, masks: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        cfg: ANPConfig = self.config
        if cfg.prune == "threshold":
            return {n: (m < cfg.threshold).nonzero().flatten().tolist() for n, m in masks.items()}
        flat = [(float(v), n, c) for n, m in masks.items() for c, v in enumerate(m.tolist())]
        k = max(1, round(cfg.prune_ratio * len(flat)))
        chosen = sorted(flat)[:k]
        return {n: sorted(c for _, name, c in chosen if name == n) for n in masks}
