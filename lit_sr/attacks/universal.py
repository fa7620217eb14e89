"""The universal attack of Choi et al. (Sec. 3.2, Eq. 5-7): one perturbation for a whole data set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.attacks.base import Attack, LossFn, LossName, uniform_like
from lit_sr.attacks.ifgsm import REFERENCES, Reference, _zero_gradient_error
from lit_sr.attacks.partial import infer_scale
from lit_sr.attacks.registry import register_attack
from lit_sr.runtime import Autocast, model_device
from lit_sr.validation import check_bool, check_choice, check_int, check_positive


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` window of ``(..., H, W)`` images (top-left offset ``(H - size) // 2``)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} image; lower crop_size")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    return x.unsqueeze(0) if x.dim() == 3 else x


@register_attack
class UniversalAttack(Attack):
    """One image-agnostic perturbation Delta of shape ``(1, C, h, w)`` for a data set (Eq. 5-7).

    :meth:`fit` centre-crops every LR image to ``crop_size`` (the official code uses 80, i.e.
    320 px HR crops at x4), then runs ``steps`` iterations of
    ``Delta <- clip_[-eps,eps](Delta + step_size * sign(grad F(Delta)))`` where
    ``F(Delta) = 1/K sum_k L(clip_[0,1](X0_k + Delta), ref_k)`` is the loss averaged over all K
    images: the gradient of every batch is accumulated before the single sign step.

    Calling the fitted attack, ``atk(lr)``, adds Delta to the centre ``crop_size`` window of each
    image (the same window ``fit`` used; outside it the input is unchanged) and clips to [0, 1].
    Images smaller than ``crop_size`` raise. :meth:`region_hr_mask` gives the SR pixels of that
    window, where the damage is measured (the report does; the whole-image PSNR is diluted).

    Args:
        model: the SR network.
        eps: L_inf budget of Delta in (0, 1].
        steps: iterations T.
        step_size: ``None`` means ``eps / steps``.
        crop_size: side of the LR centre crop, and of Delta.
        reference: ``"clean"`` (Eq. 6 with the clean outputs; needs ``random_start=True``) or
            ``"hr"`` (centre crops of the HR images, ``scale * crop_size`` wide).
        random_start: start from Delta uniform in [-eps, eps] instead of 0.
        batch_size: images per forward pass while fitting.
        progress: show a tqdm bar over the steps.
        loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`.

    Memory: the LR crops and their references are kept on the CPU and moved batch by batch.
    """

    name = "universal"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 50,
        step_size: float | None = None,
        crop_size: int = 80,
        reference: Reference = "clean",
        random_start: bool = False,
        batch_size: int = 16,
        progress: bool = True,
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(model, eps, loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed)
        self.steps = check_int(steps, "steps", 1)
        self.step_size = check_positive(
            self.eps / self.steps if step_size is None else step_size, "step_size"
        )
        self.crop_size = check_int(crop_size, "crop_size", 1)
        self.reference = check_choice(reference, "reference", REFERENCES)
        self.random_start = check_bool(random_start, "random_start")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.progress = check_bool(progress, "progress")
        if self.reference == "clean" and not self.random_start:
            raise _zero_gradient_error(type(self).__name__)
        self.perturbation: torch.Tensor | None = None
        self.history: list[float] = []

    def _describe(self) -> dict:
        return {
            **super()._describe(),
            "steps": self.steps,
            "step_size": self.step_size,
            "crop_size": self.crop_size,
            "reference": self.reference,
            "random_start": self.random_start,
        }

    # ------------------------------------------------------------------ data

    def _split_item(self, item) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(item, Mapping):
            if "lr" not in item:
                raise ValueError(f"dict batches must hold an 'lr' entry, got keys {sorted(item)}")
            return _as_batch(item["lr"], "batch['lr']"), (
                _as_batch(item["hr"], "batch['hr']") if item.get("hr") is not None else None
            )
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return _as_batch(item[0], "lr"), _as_batch(item[1], "hr")
        return _as_batch(item, "data"), None

    def _collect_crops(
        self, data, hr: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Centre crops of all LR images (and HR images, for ``reference="hr"``), on the CPU."""
        if isinstance(data, torch.Tensor):
            items: Iterable = [(data, hr)] if hr is not None else [data]
        elif isinstance(data, Iterable):
            if hr is not None:
                raise ValueError(
                    "pass hr only with a tensor of LR images; loaders carry 'hr' in their batches"
                )
            items = data
        else:
            raise TypeError(
                f"data must be a tensor or an iterable of tensors / dict batches, got {type(data).__name__}"
            )
        lr_crops, hr_crops = [], []
        for item in items:
            lr, hr_batch = self._split_item(item)
            lr = self.prepare(lr, "lr", torch.device("cpu"))
            lr_crops.append(center_crop(lr, self.crop_size))
            if self.reference == "hr":
                if hr_batch is None:
                    raise ValueError(
                        "UniversalAttack(reference='hr') needs HR images: dict batches with 'hr' or fit(lr, hr=hr)"
                    )
                hr_batch = self.prepare(hr_batch, "hr", torch.device("cpu"))
                scale = infer_scale(lr.shape, hr_batch.shape)
                hr_crops.append(self._hr_crop(hr_batch, lr.shape[-2:], scale))
        if not lr_crops:
            raise ValueError("UniversalAttack.fit got an empty data set")
        lr_all = torch.cat(lr_crops)
        return lr_all, (torch.cat(hr_crops) if hr_crops else None)

    def _hr_crop(self, hr: torch.Tensor, lr_hw: tuple[int, int], scale: int) -> torch.Tensor:
        # The HR window that corresponds exactly to the LR centre crop (offsets times the scale).
        h, w = lr_hw
        top, left = (h - self.crop_size) // 2, (w - self.crop_size) // 2
        size = self.crop_size * scale
        return hr[..., top * scale : top * scale + size, left * scale : left * scale + size]

    def _clean_references(self, lr: torch.Tensor, device: torch.device) -> torch.Tensor:
        refs = [
            self.clean_output(lr[i : i + self.batch_size].to(device)).cpu()
            for i in range(0, lr.shape[0], self.batch_size)
        ]
        return torch.cat(refs)

    # ------------------------------------------------------------------ fitting

    def fit(self, data, hr: torch.Tensor | None = None) -> UniversalAttack:
        """Find Delta on ``data`` and return ``self`` (Delta in :attr:`perturbation`).

        Args:
            data: a ``(N, C, H, W)`` LR tensor, or an iterable (e.g. a DataLoader) of LR tensors,
                ``(lr, hr)`` pairs or dict batches with ``"lr"`` (and ``"hr"``). Images of
                different sizes are fine: only their centre crops are used.
            hr: the HR tensor matching a tensor ``data`` (``reference="hr"`` only).
        """
        with self.attack_mode():
            device = model_device(self.model, torch.device("cpu"))
            lr, hr_crops = self._collect_crops(data, hr, device)
            refs = hr_crops if self.reference == "hr" else self._clean_references(lr, device)
            self.perturbation = self._optimise(lr, refs, device)
        return self

    def _optimise(self, lr: torch.Tensor, refs: torch.Tensor, device: torch.device) -> torch.Tensor:
        count = lr.shape[0]
        delta = torch.zeros((1, *lr.shape[1:]), device=device)
        if self.random_start:
            delta = uniform_like(delta, -self.eps, self.eps, self.generator(device))
        self.history = []
        for _ in tqdm(range(self.steps), desc="universal attack", disable=not self.progress, leave=False):
            grad = torch.zeros_like(delta)
            total = 0.0
            for start in range(0, count, self.batch_size):
                x0 = lr[start : start + self.batch_size].to(device, non_blocking=True)
                ref = refs[start : start + self.batch_size].to(device, non_blocking=True)
                step_grad, step_loss = self._batch_gradient(delta, x0, ref, count)
                grad += step_grad
                total += step_loss
            self.history.append(total)
            delta = (delta + self.step_size * grad.sign()).clamp(-self.eps, self.eps)
        return delta.detach()

    def _batch_gradient(
        self, delta: torch.Tensor, x0: torch.Tensor, ref: torch.Tensor, count: int
    ) -> tuple[torch.Tensor, float]:
        """Gradient of this batch's share of F (Eq. 6: the loss summed, divided by K) w.r.t. Delta."""
        delta = delta.detach().requires_grad_(True)
        grad = torch.zeros_like(delta)
        value = 0.0
        for _ in range(self.eot_samples):
            x = (x0 + delta).clamp(0, 1)
            loss = self.per_sample_loss(x, ref).sum() / (count * self.eot_samples)
            grad += torch.autograd.grad(loss, delta)[0]
            value += loss.item()
        return grad, value

    # ------------------------------------------------------------------ the attacked region

    def region_hr_mask(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        """``(1, 1, scale * H, scale * W)`` float mask of the SR pixels of the attacked centre window.

        Delta only covers the LR centre ``crop_size`` window, so a PSNR over the whole output is
        diluted by the untouched border (32 px LR, 16 px crop, 8/255: 36.90 dB on the full image vs
        31.46 dB on the crop). Choi et al. measure on the attacked region: pass this mask to
        :func:`lit_sr.attacks.attack_metrics` (``mask_hr``). The SR window is the LR window times
        ``scale``, the same correspondence :meth:`fit` uses for the HR crops.
        """
        h, w = lr.shape[-2:]
        size = self.crop_size
        if h < size or w < size:
            raise ValueError(f"lr images ({h}x{w}) are smaller than the universal perturbation ({size}x{size})")
        top, left = (h - size) // 2, (w - size) // 2
        mask = torch.zeros(1, 1, h * scale, w * scale, device=lr.device)
        mask[..., top * scale : (top + size) * scale, left * scale : (left + size) * scale] = 1
        return mask

    # ------------------------------------------------------------------ applying

    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """Add the fitted Delta to the centre window of every image; ``hr`` is accepted and ignored."""
        if self.perturbation is None:
            raise RuntimeError("UniversalAttack has no perturbation yet: call fit(data) first")
        x0 = self.prepare(lr, "lr", self.device_for(lr))
        if x0.shape[1] != self.perturbation.shape[1]:
            raise ValueError(f"lr has {x0.shape[1]} channels, the perturbation {self.perturbation.shape[1]}")
        h, w = x0.shape[-2:]
        size = self.crop_size
        if h < size or w < size:
            raise ValueError(
                f"lr images ({h}x{w}) are smaller than the universal perturbation ({size}x{size})"
            )
        top, left = (h - size) // 2, (w - size) // 2
        x = x0.clone()
        window = x[..., top : top + size, left : left + size]
        window.add_(self.perturbation.to(x.device)).clamp_(0, 1)
        return x
