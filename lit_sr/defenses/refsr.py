"""A similarity-aware defense of reference-based SR against attacks on the reference (beyond RefSR-Adv).

RefSR-Adv works because the network copies textures from the reference wherever its relevance
search finds a match: a perturbed reference is a perturbed texture source. The defense here
trusts the reference only as far as it is relevant to the LR image, and first strips the
high-frequency band that an L_inf perturbation lives in. :class:`SimilarityGatedTTSR` wraps a
TTSR and changes two things of its forward pass, both configurable:

1. **Purification of the reference** (``purify``): ``"resize"`` shrinks the reference by
   ``purify_scale`` (MATLAB bicubic, antialiased) and restores it, a low-pass that removes most
   of a sign-pattern perturbation (and some fine texture: the price, measured by the clean PSNR);
   ``"bit_depth"`` quantises it to ``purify_bits`` bits (rounding is not differentiable: the
   backward pass is the identity, BPDA, so adaptive attacks still see a gradient); ``"none"``.
2. **Relevance gating of the texture transfer**: TTSR weights the transferred textures by its soft
   attention ``S`` (the cosine relevance of the best reference patch, in [-1, 1]). The defense
   uses ``S * sigmoid((S - threshold) / temperature)`` instead, so a reference patch with a
   relevance below ``threshold`` contributes (almost) nothing and the output falls back to the
   network's single-image path there (with ``S = 0`` TTSR's fusion adds no texture at all). The
   relevance is computed on Ref-down-up, a heavily low-passed reference, which an L_inf
   perturbation moves little: an attacker cannot cheaply open the gate of an irrelevant patch.

Why not other choices: gating by the *change* of relevance between the raw and the purified
reference would be a detector, and a detector is beaten by an attack that keeps that change small;
purifying by JPEG is available for LR inputs in :mod:`lit_sr.defenses` and behaves like
``bit_depth`` here (non-differentiable, BPDA). The paper (RefSR-Adv) proposes no defense.

Evaluation (:func:`evaluate_refsr_defense`) follows :mod:`lit_sr.defenses`: the **naive** attack is
RefSR-Adv computed on the bare network and fed to the defended one; the **adaptive** attack is
RefSR-Adv run through the defended model end to end (it knows the purification and the gate;
BPDA for the quantiser and, with ``purify_gradient="bpda"``, for the resize; TTSR's
hard-attention argmax is piecewise constant in both, as in any argmax, so its index is held by
both attacks between steps), continuing from the naive attack's reference and keeping each
image's best iterate. Report the worst case.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lit_sr.archs.ttsr_arch import TTSR
from lit_sr.attacks.refsr_adv import RefSRAdv, check_pair, refsr_output
from lit_sr.metrics import psnr
from lit_sr.ops import imresize
from lit_sr.runtime import Autocast, frozen_eval, model_device
from lit_sr.validation import check_bool, check_choice, check_int, check_number, check_positive

Purify = Literal["none", "resize", "bit_depth"]
PURIFY_CHOICES: tuple[str, ...] = ("none", "resize", "bit_depth")


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (y - x).detach()


def purify_reference(ref: torch.Tensor, purify: Purify, scale: float = 4.0, bits: int = 5) -> torch.Tensor:
    """The reference after the defense's purification (see the module docstring).

    Args:
        ref: ``(N, 3, H, W)`` references in [0, 1].
        purify: ``"none"``, ``"resize"`` (shrink by ``scale`` and restore, differentiable) or
            ``"bit_depth"`` (``bits`` bits per channel, straight-through gradient).
        scale: shrink factor of ``"resize"`` (> 1).
        bits: bits per channel of ``"bit_depth"`` (1-8).
    """
    if purify == "none":
        return ref
    if purify == "resize":
        h, w = ref.shape[-2:]
        small = (max(1, round(h / scale)), max(1, round(w / scale)))
        return imresize(imresize(ref, size=small), size=(h, w)).clamp(0, 1)
    if purify == "bit_depth":
        levels = 2**bits - 1
        return straight_through(ref, torch.round(ref.clamp(0, 1) * levels) / levels)
    raise ValueError(f"purify must be one of {list(PURIFY_CHOICES)}, got {purify!r}")


class SimilarityGatedTTSR(nn.Module):
    """A TTSR whose texture transfer is gated by the LR-Ref relevance, on a purified reference.

    Called as ``defended(lr, ref)`` like the network; the same output shape, not clamped. With
    ``purify="none"`` and ``threshold=None`` it is exactly the wrapped network (a test checks
    it), so every difference in its numbers comes from the two parts of the defense.

    Args:
        model: the TTSR to protect (:class:`lit_sr.archs.ttsr_arch.TTSR`: the defense needs its
            soft attention, so other RefSR networks are refused with a ``TypeError``).
        threshold: relevance below which a reference patch is shut out (cosine, in [-1, 1]);
            ``None`` disables the gate. The paper's levels are not calibrated to a relevance, so
            this is a parameter: the RefSR report measures its cost (clean PSNR) and benefit.
        temperature: softness of the gate (> 0); 0.1 makes it go from 12% to 88% open over
            +-0.2 around the threshold. A steep gate is itself an attack surface: it multiplies
            the output's sensitivity to the relevance by up to ``1 / (4 * temperature)``.
        purify: ``"none"``, ``"resize"`` or ``"bit_depth"`` (see :func:`purify_reference`).
        purify_scale: shrink factor of ``"resize"`` (4: the x4 model's own scale).
        purify_bits: bits of ``"bit_depth"`` (5).
        purify_gradient: the backward pass of ``"resize"``: ``"true"`` (its own gradient, a
            low-pass of the output's) or ``"bpda"`` (the identity: the attack steers by the network's
            gradient at the purified reference, Athalye et al.'s BPDA, often the stronger guide
            for a purifier). ``"bit_depth"`` always uses BPDA.
        hard: a step gate (0 below the threshold, 1 above) in the forward pass, whose backward
            pass is the soft gate's (BPDA with the sigmoid as the surrogate). A soft gate of a small
            temperature multiplies the output's sensitivity to the relevance by up to
            ``1 / (4 * temperature)``, which an adaptive attack uses (measured: the README's RefSR
            report); a step only changes the output where a patch crosses the threshold.
    """

    def __init__(
        self,
        model: nn.Module,
        threshold: float | None = 0.5,
        temperature: float = 0.1,
        purify: Purify = "resize",
        purify_scale: float = 4.0,
        purify_bits: int = 5,
        hard: bool = False,
        purify_gradient: Literal["true", "bpda"] = "true",
    ):
        super().__init__()
        if not isinstance(model, TTSR):
            raise TypeError(
                f"SimilarityGatedTTSR needs a TTSR (lit_sr.archs.ttsr_arch.TTSR), got {type(model).__name__}: "
                "the gate reads TTSR's soft attention"
            )
        self.model = model
        self.threshold = None if threshold is None else check_number(threshold, "threshold", -1, 1)
        self.temperature = check_positive(temperature, "temperature")
        self.purify: Purify = check_choice(purify, "purify", PURIFY_CHOICES)
        self.purify_scale = check_number(purify_scale, "purify_scale", 1, low_inclusive=False)
        self.purify_bits = check_int(purify_bits, "purify_bits", 1, 8)
        self.hard = check_bool(hard, "hard")
        self.purify_gradient = check_choice(purify_gradient, "purify_gradient", ("true", "bpda"))
        self.upscale = model.upscale

    def openness(self, soft: torch.Tensor) -> torch.Tensor:
        """How far the gate lets each patch's texture through: ``sigmoid((S - threshold) / temperature)``."""
        if self.threshold is None:
            return torch.ones_like(soft)
        smooth = torch.sigmoid((soft - self.threshold) / self.temperature)
        return straight_through(smooth, (soft >= self.threshold).to(soft.dtype)) if self.hard else smooth

    def gate(self, soft: torch.Tensor) -> torch.Tensor:
        """The gated soft attention ``S * openness(S)`` (``S`` itself without a threshold)."""
        return soft if self.threshold is None else soft * self.openness(soft)

    def search(self, lr: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(gated S, T_lv3, T_lv2, T_lv1, index, raw S)`` on the purified reference."""
        purified = purify_reference(ref, self.purify, self.purify_scale, self.purify_bits)
        ref = straight_through(ref, purified) if self.purify_gradient == "bpda" else purified
        soft, t_lv3, t_lv2, t_lv1, index = self.model.search(lr, ref)
        return self.gate(soft), t_lv3, t_lv2, t_lv1, index, soft

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        gated, t_lv3, t_lv2, t_lv1, _, _ = self.search(lr, ref)
        return (self.model.MainNet(lr * 2 - 1, gated, t_lv3, t_lv2, t_lv1) + 1) / 2


def evaluate_refsr_defense(
    model: nn.Module,
    defense: nn.Module,
    lr: torch.Tensor,
    ref: torch.Tensor,
    hr: torch.Tensor | None = None,
    *,
    eps: float = 8 / 255,
    steps: int = 50,
    step_size: float | None = None,
    crop_border: int = 4,
    y_channel: bool = True,
    autocast: Autocast = "none",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Naive and adaptive RefSR-Adv against a reference defense, per image (float64 ``(N,)`` CPU tensors).

    Keys (the ``*_hr_psnr`` ones only with ``hr``):
        ``undefended_sr_psnr``: RefSR-Adv on the bare network, measured on it (the baseline).
        ``naive_sr_psnr``: that adversarial reference fed to the defended model.
        ``adaptive_sr_psnr``: RefSR-Adv run through the defended model, measured on it. It starts
        from the naive attack's reference (an attacker who knows the defense knows the naive
        attack too) and keeps each image's best iterate, so it is never weaker than the naive
        one in its own loss (the L2 distance; the PSNR below is of the clamped, 8-bit, Y output,
        so it can differ by rounding). Measured: from a random start, neither the naive nor the
        adaptive attack was the stronger on every image.
        ``worst_sr_psnr``: the per-image minimum of naive and adaptive (the number to report).
        ``clean_hr_psnr`` / ``defended_clean_hr_psnr``: clean quality of the bare and the
        defended model (the defense's cost); ``worst_hr_psnr``: the defended model's HR PSNR
        under the worse of the two attacks.
        ``gate_open``: :class:`SimilarityGatedTTSR` only: the mean of its ``openness`` over the
        image for the clean reference (1: the reference fully used, 0: shut out).
    SR PSNR is against the same (bare or defended) model's output for the clean reference.

    Args:
        model: the bare RefSR network.
        defense: the defended model (e.g. :class:`SimilarityGatedTTSR` around ``model``).
        lr, ref, hr: batches in [0, 1].
        eps, steps, step_size: RefSR-Adv's budget and schedule, the same for both attacks.
        crop_border, y_channel: SR-side PSNR convention.
        autocast: ``"none"`` or ``"bf16"`` for the forward passes.
        seed: seed of the naive attack's random start.
    """
    check_pair(lr, ref)
    steps = check_int(steps, "steps", 1)
    device = model_device(model, lr.device)
    lr, ref = lr.to(device).float(), ref.to(device).float()
    hr = None if hr is None else hr.to(device).float()
    kw = {"crop_border": crop_border, "y_channel": y_channel}
    with frozen_eval(model), frozen_eval(defense):
        naive_ref = RefSRAdv(model, eps, steps, step_size, autocast=autocast, seed=seed)(lr, ref)
        adaptive_ref = RefSRAdv(defense, eps, steps, step_size, autocast=autocast, seed=seed, keep_best=True)(
            lr, ref, start=naive_ref)
        bare_clean, defended_clean = refsr_output(model, lr, ref, autocast), refsr_output(defense, lr, ref, autocast)
        bare_adv = refsr_output(model, lr, naive_ref, autocast)
        naive_out, adaptive_out = refsr_output(defense, lr, naive_ref, autocast), refsr_output(defense, lr, adaptive_ref, autocast)
        naive, adaptive = psnr(naive_out, defended_clean, **kw), psnr(adaptive_out, defended_clean, **kw)
        out = {
            "undefended_sr_psnr": psnr(bare_adv, bare_clean, **kw),
            "naive_sr_psnr": naive,
            "adaptive_sr_psnr": adaptive,
            "worst_sr_psnr": torch.minimum(naive, adaptive),
        }
        if isinstance(defense, SimilarityGatedTTSR):
            soft = defense.search(lr, ref)[-1]
            out["gate_open"] = defense.openness(soft).flatten(1).mean(1)
        if hr is not None:
            worst_out = torch.where((adaptive <= naive).view(-1, 1, 1, 1), adaptive_out, naive_out)
            out.update(clean_hr_psnr=psnr(bare_clean, hr, **kw), defended_clean_hr_psnr=psnr(defended_clean, hr, **kw),
                       worst_hr_psnr=psnr(worst_out, hr, **kw))
    return {k: v.detach().double().cpu() for k, v in out.items()}
