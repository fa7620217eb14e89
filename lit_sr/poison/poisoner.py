"""The Poisoner: a trigger and a label maker turning clean pairs into poisoned ones, pure tensors.

``Poisoner(trigger, label_maker).poison(lr, hr, ids) -> (lr', hr', stats)`` is the whole of
poison generation: no Lightning, no files, no process group. The poisoned data module feeds it
batches of equal-size pairs and stores what it returns (:mod:`lit_sr.poison.cache`).

Label makers (the poisoned HR a triggered input is trained towards):

* :class:`TargetLabel`: the classic SR backdoor: the target image itself, resized to the HR size.
* :class:`FeatureAlignedLabel`: BadSR's stealthy label (Guo et al., arXiv 2505.15308, Eq. 13):
  the clean HR moved within an ``eps`` ball towards the target in the substitute's feature space
  (:func:`lit_sr.poison.make_poisoned_hr`).
* :class:`CleanLabel`: the clean HR unchanged: only the input is triggered. A control: a model
  trained on it learns no target, which measures what the trigger alone does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from lit_sr.metrics import psnr
from lit_sr.poison.asr import stealth
from lit_sr.poison.cache import to_float, to_stored
from lit_sr.poison.poisoned_hr import NORMS, STEP_RULES, make_poisoned_hr, resize_target, step_rule_setting
from lit_sr.poison.triggers import Trigger
from lit_sr.runtime import Autocast
from lit_sr.validation import check_bool, check_choice, check_images, check_int, check_positive

TriggerReference = Literal["hr", "clean_output"]


def stealth_figures(modified: torch.Tensor, original: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR and SSIM (RGB, 8-bit, :mod:`lit_sr.metrics`) of a modification; SSIM is NaN
    for images under 11x11 pixels, where the SSIM window does not fit."""
    if min(modified.shape[-2:]) >= 11:
        return stealth(modified, original)
    return {"psnr": psnr(modified, original).cpu(), "ssim": torch.full((modified.shape[0],), float("nan"))}


@runtime_checkable
class LabelMaker(Protocol):
    """``hr (N, C, H, W) -> poisoned hr`` of the same shape, in [0, 1]."""

    name: str

    def __call__(self, hr: torch.Tensor) -> torch.Tensor: ...

    def config(self) -> dict[str, Any]: ...


class TargetLabel:
    """The classic SR backdoor label: the target image resized (MATLAB bicubic) to each HR's size.

    Args:
        target: the target image ``(C, h, w)`` in [0, 1].
    """

    name = "target"

    def __init__(self, target: torch.Tensor):
        self.target = target
        self._sizes: dict[tuple[int, int, int], torch.Tensor] = {}

    def __call__(self, hr: torch.Tensor) -> torch.Tensor:
        n, c, h, w = hr.shape
        if (c, h, w) not in self._sizes:  # resized once per size: it does not depend on the image
            self._sizes[(c, h, w)] = resize_target(self.target, 1, h, w, c).contiguous()
        return self._sizes[(c, h, w)].to(device=hr.device, dtype=hr.dtype).expand(n, -1, -1, -1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class CleanLabel:
    """The clean HR unchanged (only the LR is triggered): a control without a backdoor target."""

    name = "clean"

    def __call__(self, hr: torch.Tensor) -> torch.Tensor:
        return hr.clone()

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class FeatureAlignedLabel:
    """BadSR's stealthy label: the HR moved towards the target in the substitute's feature space.

    Args:
        feature_net: ``image -> features`` (a :class:`lit_sr.poison.FeatureExtractor` around the
            substitute), already on the generation device.
        target: the target image ``(C, h, w)`` in [0, 1].
        eps: the ball's radius in units of ``norm`` (:func:`lit_sr.poison.make_poisoned_hr`).
        steps: PGD iterations.
        norm: ``"pixel"``, ``"rms"`` or ``"l2"``.
        autocast: ``"none"`` or ``"bf16"`` for the feature network.
        step_rule: the PGD step, ``"l2"`` (default) or ``"sign"``.
    """

    name = "badsr"

    def __init__(self, feature_net: nn.Module, target: torch.Tensor, eps: float = 0.05, steps: int = 100,
                 norm: str = "pixel", autocast: Autocast = "none", step_rule: str = "l2"):
        self.feature_net, self.target = feature_net, target
        self.eps = check_positive(eps, "eps")
        self.steps = check_int(steps, "poisoned_hr_steps", 0)
        self.norm = check_choice(norm, "poisoned_hr_norm", NORMS)
        self.step_rule = check_choice(step_rule, "poisoned_hr_step_rule", STEP_RULES)
        self.autocast = autocast

    def __call__(self, hr: torch.Tensor) -> torch.Tensor:
        y_p, _ = make_poisoned_hr(self.feature_net, hr, self.target, eps=self.eps, steps=self.steps,
                                  norm=self.norm, autocast=self.autocast, step_rule=self.step_rule)
        return y_p

    def config(self) -> dict[str, Any]:
        settings = {"name": self.name, "eps": self.eps, "steps": self.steps, "norm": self.norm}
        return settings | step_rule_setting(self.step_rule)


class Poisoner:
    """Trigger + label maker: clean ``(lr, hr)`` batches to poisoned ones and their stealth figures.

    Args:
        trigger: any :class:`lit_sr.poison.Trigger` (``trigger(lr, hr, sample_ids)``).
        label_maker: a :class:`LabelMaker` (``hr -> poisoned hr``).
        trigger_reference: what the BadSR trigger's reconstruction error is measured against:
            ``"hr"`` (the sample's HR, the paper's ``y``) or ``"clean_output"`` (``hr`` is not
            passed: the substitute's own clean output, an attacker with only the LR image).
        quantize: round both outputs to 8 bits, as a published poisoned data set would hold them.
    """

    def __init__(self, trigger: Trigger, label_maker: LabelMaker, trigger_reference: TriggerReference = "hr",
                 quantize: bool = True):
        if not isinstance(trigger, Trigger):
            raise TypeError(f"trigger must be a lit_sr.poison.Trigger; got {type(trigger).__name__}")
        if not callable(label_maker):
            raise TypeError(f"label_maker must be callable (hr -> poisoned hr); got {type(label_maker).__name__}")
        self.trigger, self.label_maker = trigger, label_maker
        self.trigger_reference = check_choice(trigger_reference, "trigger_reference", ("hr", "clean_output"))
        self.quantize = check_bool(quantize, "quantize")

    def triggered(self, lr: torch.Tensor, hr: torch.Tensor | None, ids: Sequence[int]) -> torch.Tensor:
        """The triggered LR batch as stored (uint8 when ``quantize``, else float32)."""
        ref = hr if self.trigger_reference == "hr" else None
        return to_stored(self.trigger(lr, hr=ref, sample_ids=torch.as_tensor(list(ids))), self.quantize)

    def poison(self, lr: torch.Tensor, hr: torch.Tensor, ids: Sequence[int]
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Poison one batch of equal-size pairs.

        Args:
            lr: clean LR ``(N, C, h, w)`` in [0, 1].
            hr: clean HR ``(N, C, H, W)`` in [0, 1].
            ids: the samples' dataset indices (seed the BadSR trigger's per-sample random start, so
                a sample gets the same trigger in any batch, on any rank).

        Returns:
            ``(lr', hr', stats)``: the triggered LR and the poisoned HR as stored (uint8 when
            ``quantize``), and per-image CPU tensors ``trigger_lr_psnr``, ``trigger_lr_ssim``
            (triggered vs clean LR), ``label_psnr``, ``label_ssim`` (poisoned vs clean HR).
        """
        check_images(lr, "lr")
        check_images(hr, "hr")
        if not (lr.shape[0] == hr.shape[0] == len(ids)):
            raise ValueError(f"lr, hr and ids must have one entry per sample; got {lr.shape[0]}, {hr.shape[0]}, "
                             f"{len(ids)}")
        lr_out = self.triggered(lr, hr, ids)
        hr_out = to_stored(self.label_maker(hr), self.quantize)
        lr_st, hr_st = stealth_figures(to_float(lr_out), lr), stealth_figures(to_float(hr_out), hr)
        stats = {"trigger_lr_psnr": lr_st["psnr"], "trigger_lr_ssim": lr_st["ssim"],
                 "label_psnr": hr_st["psnr"], "label_ssim": hr_st["ssim"]}
        return lr_out, hr_out, stats
