"""The partial attack of Choi et al. (Sec. 3.3, Eq. 8-10): perturb a region, damage the rest."""

from __future__ import annotations

import torch
from torch import nn

from lit_sr.attacks.base import LossFn, LossName
from lit_sr.attacks.ifgsm import IFGSM, Reference
from lit_sr.attacks.registry import register_attack
from lit_sr.runtime import Autocast


def centre_mask(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The paper's Eq. (10) mask, ``(1, 1, H, W)`` float: 1 where ``w/4 <= x < 3w/4`` and ``h/4 <= y < 3h/4``.

    Pixel indices are integers, so the bounds are ``ceil(w/4) <= x < ceil(3w/4)`` (the integer
    reading of the inequalities).
    """
    ys = torch.arange(height, device=device).view(-1, 1)
    xs = torch.arange(width, device=device).view(1, -1)
    inside = (4 * ys >= height) & (4 * ys < 3 * height) & (4 * xs >= width) & (4 * xs < 3 * width)
    return inside.float().view(1, 1, height, width)


def upscale_mask(mask: torch.Tensor, scale: int) -> torch.Tensor:
    """The HR counterpart M_H of an LR mask: each LR pixel becomes a ``scale x scale`` block."""
    return mask.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def outer_hr_mask(mask: torch.Tensor, scale: int) -> torch.Tensor:
    """``1 - M_H``: the HR region whose damage the partial attack maximises and is evaluated on."""
    return 1.0 - upscale_mask(mask, scale)


def infer_scale(lr_shape: torch.Size | tuple, sr_shape: torch.Size | tuple) -> int:
    """The integer upscaling factor between an LR and an SR shape (both dims must agree)."""
    (h, w), (sh, sw) = tuple(lr_shape[-2:]), tuple(sr_shape[-2:])
    if sh % h or sw % w or sh // h != sw // w:
        raise ValueError(f"cannot infer an integer scale from LR {h}x{w} to SR {sh}x{sw}")
    return sh // h


def _validate_mask(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor of 0/1 values, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.view(1, 1, *mask.shape)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"mask must have shape (H, W), (1, 1, H, W) or (N, 1, H, W) (one spatial mask per image), "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.detach().float()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be binary (only 0 and 1 values)")
    if not bool(mask.flatten(1).amax(dim=1).gt(0).all()):
        raise ValueError("mask selects no pixel to attack (all zeros) for at least one image")
    if not bool(mask.flatten(1).amin(dim=1).lt(1).all()):
        raise ValueError(
            "mask covers the whole image for at least one image: there is no outer region to damage"
        )
    return mask


@register_attack
class PartialAttack(IFGSM):
    """Perturb only inside a mask M and maximise the damage outside its HR counterpart (Eq. 8-9).

    Each step is Eq. (8): the sign of the gradient of
    ``L_M = || (f(X) - f(X0)) o (1 - M_H) ||`` is multiplied by the mask, followed by the usual
    clip to [0, 1] and to the eps-ball. The perturbation is therefore exactly zero outside M.
    M_H is M upscaled by nearest neighbour with the factor inferred from the output and input
    sizes. After a call, :attr:`last_outer_hr_mask` holds ``1 - M_H`` for evaluating the outer
    region (``attack_metrics(..., mask_hr=atk.last_outer_hr_mask)``); :meth:`outer_hr_mask`
    computes it for any LR size and scale.

    Args:
        model: the SR network.
        eps: L_inf budget in (0, 1].
        steps: iterations T.
        step_size: ``None`` means ``eps / steps``.
        mask: binary ``(H, W)``, ``(1, 1, H, W)`` or ``(N, 1, H, W)`` LR mask (1 = attacked), the
            same size as the inputs; ``None`` means the paper's centre half, Eq. (10), computed
            for each input size.
        random_start: uniform start inside the mask (needed with ``reference="clean"``).
        reference: ``"clean"`` (Eq. 9) or ``"hr"`` (the HR image, as the official code's loss).
        loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`.
    """

    name = "partial"
    plain = False  # its damage is measured outside the attacked region (Eq. 9), not on the whole image

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 50,
        step_size: float | None = None,
        mask: torch.Tensor | None = None,
        random_start: bool = False,
        reference: Reference = "clean",
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(
            model, eps, steps, step_size, random_start, reference,
            loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed,
        )  # fmt: skip
        self.mask = None if mask is None else _validate_mask(mask)
        self.last_outer_hr_mask: torch.Tensor | None = None

    def input_mask(self, lr: torch.Tensor) -> torch.Tensor:
        """The LR attack mask M for a batch, ``(1 or N, 1, H, W)`` on the batch's device."""
        n, _, h, w = lr.shape
        if self.mask is None:
            return centre_mask(h, w, lr.device)
        if self.mask.shape[-2:] != (h, w) or self.mask.shape[0] not in (1, n):
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit the lr batch {tuple(lr.shape)}: "
                f"expected (1 or {n}, 1, {h}, {w})"
            )
        return self.mask.to(lr.device)

    def outer_hr_mask(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        """``1 - M_H`` for an LR batch and upscaling factor: the region the metrics should use."""
        return outer_hr_mask(self.input_mask(lr), scale)

    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial LR batch, equal to ``lr`` outside the mask."""
        x0 = self.prepare(lr, "lr", self.device_for(lr))
        ref = self.reference_output(x0, hr)
        mask = self.input_mask(x0)
        outer = self.outer_hr_mask(x0, infer_scale(x0.shape, ref.shape))
        self.last_outer_hr_mask = outer
        return self.iterate(x0, ref, direction=1.0, input_mask=mask, loss_weight=outer)
