"""NAD: neural attention distillation (Li et al., ICLR 2021), for SR networks.

Two stages, both on the defender's clean subset only: (1) a **teacher**, the backdoored network
fine-tuned for ``teacher_steps`` (FT); (2) the **student**, the backdoored network again, fine-tuned
with the pixel loss plus ``beta`` times an attention-distillation term per chosen layer:

    A(F) = sum_c |F_c|^p  over the channels c of a layer's ``(N, C, H, W)`` output, flattened and
           divided by its L2 norm (NAD's ``AT`` module),
    L_AT = mean over pixels and images of (A(F_student) - A(F_teacher))^2   for each layer.

The teacher is frozen during stage 2. What NAD leaves open for SR, chosen here and exposed: the
layers (``layers``, dotted module names; default in our recipes: EDSR's residual blocks
``body.0``, ``body.1``: their outputs are the feature maps the trigger must pass through), the
power ``p`` (2, NAD's) and ``beta`` (NAD used 500-5000 on CIFAR's 8x8 to 32x32 maps; the term
shrinks with the map's area, so larger maps need a larger ``beta``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lit_sr.backdoor_defenses.base import (
    FinetuneSettings,
    RepairDefense,
    finetune,
    pixel_loss,
    trainable_copy,
)
from lit_sr.backdoor_defenses.data import CleanSubset
from lit_sr.runtime import frozen_eval
from lit_sr.validation import check_int, check_names, check_number, check_positive


@dataclass
class NADConfig(FinetuneSettings):
    """NAD's settings: the student's fine-tuning (:class:`FinetuneSettings`) plus

    Args:
        layers: dotted names of the modules whose outputs are distilled (at least one).
        teacher_steps: FT steps that make the teacher (same lr, batch size and loss).
        beta: weight of each layer's attention term.
        p: power of the attention map.
    """

    layers: Sequence[str] = field(default_factory=list)
    teacher_steps: int = 200
    beta: float = 5000.0
    p: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = check_names(self.layers, "layers", "module names", "['body.0', 'body.1']")
        self.teacher_steps = check_int(self.teacher_steps, "teacher_steps", 1)
        self.beta = check_number(self.beta, "beta", 0)
        self.p = check_positive(self.p, "p")


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention: ``sum_c |F_c|^p`` per pixel, flattened to ``(N, H*W)`` and L2-normalised."""
    a = features.float().abs().pow(p).sum(dim=1).flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + 1e-8)


class FeatureTap:
    """Keeps the latest outputs of named modules (forward hooks); use as a context manager."""

    def __init__(self, model: nn.Module, names: Sequence[str], key: str = "layers"):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"{key}: {missing} are not modules of {type(model).__name__}; "
                             f"some that are: {[n for n in modules if n][:20]}")
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def store(_module, _inputs, out):
            self.outputs[name] = out
        return store

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NeuralAttentionDistillation(RepairDefense):
    """NAD: FT a teacher, then distil its attention maps into the backdoored student (module docstring)."""

    name = "nad"
    config_class = NADConfig

    def _repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        cfg: NADConfig = self.config
        FeatureTap(model, cfg.layers).close()  # a named error before any training
        teacher = trainable_copy(model)
        teacher_cfg = NADConfig(**{**cfg.as_dict(), "steps": cfg.teacher_steps})
        teacher_losses = finetune(teacher, clean, teacher_cfg, desc="NAD teacher")
        loss_fn = pixel_loss(cfg.loss)
        at_terms: list[float] = []
        with frozen_eval(teacher), FeatureTap(teacher, cfg.layers) as t_tap, FeatureTap(model, cfg.layers) as s_tap:
            def batch_loss(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, step: int) -> torch.Tensor:
                with torch.no_grad():
                    teacher(lr)
                pixel = loss_fn(net(lr).float(), hr)
                at = sum((attention_map(s_tap.outputs[n], cfg.p) - attention_map(t_tap.outputs[n], cfg.p))
                         .pow(2).mean() for n in cfg.layers)
                at_terms.append(float(at.detach()))
                return pixel + cfg.beta * at

            losses = finetune(model, clean, cfg, batch_loss=batch_loss, desc="NAD student")
        self.info = {"teacher_final_loss": teacher_losses[-1], "final_loss": losses[-1] if losses else None,
                     "final_attention_term": at_terms[-1] if at_terms else None}
        return model
