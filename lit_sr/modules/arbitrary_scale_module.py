"""ArbitraryScaleSRModule: train and evaluate an arbitrary-scale SR network (LIIF) with Lightning.

The data path is the ordinary SR one (any SR data module, poisoned ones included): the module turns
each training batch into a pair at a scale drawn for that batch, on the batch's device, and
evaluates at extra (also non-integer) scales from the validation HR images. Everything else
(optimiser, schedule, EMA, export, the ``scale`` evaluation, the callbacks) is :class:`SRModule`'s.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torchmetrics import MeanMetric

from lit_sr.archs.liif_arch import LIIF, is_liif_checkpoint, read_liif_checkpoint
from lit_sr.modules.sr_module import EVAL_METRICS, SRModule, sr_metrics
from lit_sr.modules.step_logs import step_logs_due
from lit_sr.ops import imresize
from lit_sr.validation import check_choice, check_int

ScaleSampling = Literal["crop_hr", "resize_hr"]
LossOn = Literal["queries", "image"]


@runtime_checkable
class ArbitraryScaleNet(Protocol):
    """What the module needs from the network (:class:`lit_sr.archs.liif_arch.LIIF` is one)."""

    def query(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        """Values (N, Q, 3) in [0, 1] at (y, x) coordinates ``coord`` (N, Q, 2) in [-1, 1], cells (N, Q, 2)."""
        ...

    def forward(self, lr: torch.Tensor, scale: float | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
        """Whole images at ``scale`` or ``size``."""
        ...


def pixel_centres(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(H*W, 2) pixel-centre coordinates in [-1, 1], (y, x) order, row-major (LIIF's convention)."""
    ys = -1 + (2 * torch.arange(h, device=device, dtype=torch.float32) + 1) / h
    xs = -1 + (2 * torch.arange(w, device=device, dtype=torch.float32) + 1) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).view(-1, 2)


def sample_queries(target: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``count`` distinct random pixels per image: ``(coord, cell, rgb)``, (N, Q, 2), (N, Q, 2), (N, Q, C).

    The authors' ``sample_q``: pixels drawn without replacement, their centres as coordinates and
    the target's pixel size ``(2 / H, 2 / W)`` as cell.
    """
    n, c, h, w = target.shape
    if count > h * w:
        raise ValueError(f"sample_q={count} exceeds the {h}x{w} = {h * w} pixels of the target")
    keys = torch.rand(n, h * w, generator=generator).to(target.device)
    index = keys.topk(count, dim=1).indices  # (N, Q): a uniform draw without replacement
    coord = pixel_centres(h, w, target.device)[index]
    cell = target.new_tensor([2 / h, 2 / w]).expand(n, count, 2)
    rgb = target.flatten(2).gather(2, index.unsqueeze(1).expand(n, c, count)).transpose(1, 2)
    return coord, cell, rgb


def lr_at_scale(hr: torch.Tensor, scale: float, quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lr, hr_crop)`` for a non-integer scale, the authors' way: ``h = floor(H / s)``, the HR cropped
    to ``round(h * s)``, LR = MATLAB bicubic of that crop to ``h x w`` (rounded to 8 bit by default,
    as the benchmarks' LR files are)."""
    h, w = math.floor(hr.shape[-2] / scale + 1e-9), math.floor(hr.shape[-1] / scale + 1e-9)
    if h < 1 or w < 1:
        raise ValueError(f"an HR image of {tuple(hr.shape[-2:])} is too small for scale {scale}")
    crop = hr[..., : round(h * scale), : round(w * scale)]
    lr = imresize(crop, size=(h, w)).clamp(0, 1)
    return ((lr * 255).round() / 255 if quantize else lr), crop


def scale_tag(scale: float) -> str:
    """``x3.5``, ``x4``: the metric-name tag of an evaluation scale."""
    return f"x{scale:g}"


class ArbitraryScaleSRModule(SRModule):
    """SR at any scale with one network (LIIF): a scale drawn per training batch, evaluation at several.

    Training pairs (``scale_sampling``, a choice the papers leave to the data loader):

    * ``"crop_hr"`` (the authors' ``sr-implicit-downsampled``): from each HR patch of the batch, a
      random ``round(inp_size * s)`` crop; the LR input is its MATLAB-bicubic resize to
      ``inp_size`` (the authors resize with PIL bicubic on uint8). The data's LR is not used, so
      the HR patches (``data.patch_size``) must be at least ``round(inp_size * s_max)``.
    * ``"resize_hr"``: the data's LR is kept as it is (a poisoned LR keeps its trigger) and the
      target is the HR resized (MATLAB bicubic, antialiased) to ``round(h * s) x round(w * s)``,
      so ``s`` must not exceed the data's ``scale``. This is how a backdoor is trained on LIIF.

    The scale of a batch is drawn uniformly in ``[train_scale_min, train_scale_max]``, or from
    ``train_scales`` when given (e.g. ``[2, 3, 4]``), from a generator seeded with ``seed`` plus
    the global rank. The loss (``loss_on``) is taken on ``sample_q`` random pixels of each target
    (``"queries"``, the authors': 2304 = 48^2, the MLP decodes only them) or on the whole target
    image (``"image"``); it is the ``loss`` of :class:`SRModule` on the [0, 1] scale (the authors'
    L1 is on [-1, 1], twice as large: halve nothing, the optimiser's Adam is scale-invariant).

    Evaluation: the data module's pairs at ``scale`` as in :class:`SRModule` (``val/psnr_y``, ...;
    ``forward(lr)`` and ``super_resolve`` run at the network's ``upscale`` = ``scale``, so the
    attack, backdoor and image callbacks work unchanged), plus, for each of ``val_scales``, LR
    images made from the validation HR images (:func:`lr_at_scale`) and ``val/x3.5/psnr_y``,
    ``val/x3.5/bicubic_psnr_y``, ... with ``crop_border = ceil(s)``.

    Args:
        arch: an arbitrary-scale network of the registry (``liif``).
        scale: the data module's scale and the network's ``upscale`` (the fixed-scale calls).
        scale_sampling: ``"crop_hr"`` or ``"resize_hr"`` (above).
        train_scale_min: lower end of the uniform scale range (1: the authors').
        train_scale_max: upper end (4: the authors').
        train_scales: a list of scales to draw from instead of the range.
        inp_size: LR side of a ``"crop_hr"`` training pair (48: the authors').
        loss_on: ``"queries"`` or ``"image"``.
        sample_q: pixels per target for ``loss_on="queries"`` (2304).
        val_scales: extra evaluation scales (e.g. ``[2, 3.5, 6]``).
        seed: seed of the scale draws, the crop offsets and the query pixels.
        **kwargs: :class:`SRModule`'s arguments (``arch_kwargs``, ``loss``, ``lr``, ``ema_decay``, ...);
            ``pretrained`` may be the authors' LIIF file (``{'model': {'name', 'args', 'sd'}}``):
            its weights load strictly and its ``local_ensemble``/``feat_unfold``/``cell_decode``
            must equal ``arch_kwargs``'.
    """

    def __init__(
        self,
        arch: str = "liif",
        scale: int = 4,
        scale_sampling: ScaleSampling = "crop_hr",
        train_scale_min: float = 1.0,
        train_scale_max: float = 4.0,
        train_scales: list[float] | None = None,
        inp_size: int = 48,
        loss_on: LossOn = "queries",
        sample_q: int = 2304,
        val_scales: list[float] | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(arch=arch, scale=scale, **kwargs)
        check_choice(scale_sampling, "scale_sampling", ("crop_hr", "resize_hr"))
        check_choice(loss_on, "loss_on", ("queries", "image"))
        check_int(inp_size, "inp_size", minimum=1)
        check_int(sample_q, "sample_q", minimum=1)
        check_int(seed, "seed", minimum=0)
        if not isinstance(self.net, ArbitraryScaleNet):
            raise TypeError(f"arch {arch!r} is not an arbitrary-scale network (it needs query(lr, coord, cell) "
                            "and forward(lr, scale=, size=)); use arch 'liif'")
        pretrained = kwargs.get("pretrained")
        if pretrained and isinstance(self.net, LIIF) and is_liif_checkpoint(pretrained):
            # load_weights took the authors' model['sd']; their decoding switches must match too
            self.net.check_args(read_liif_checkpoint(pretrained)[0], str(pretrained))
        scales = list(train_scales) if train_scales is not None else [train_scale_min, train_scale_max]
        for value in scales + list(val_scales or []):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"scales must be positive numbers, got {value!r}")
        if train_scales is None and train_scale_min > train_scale_max:
            raise ValueError(f"train_scale_min={train_scale_min} exceeds train_scale_max={train_scale_max}")
        if train_scales is not None and not train_scales:
            raise ValueError("train_scales is empty: give scales, or None for the range")
        if scale_sampling == "resize_hr" and max(scales) > scale + 1e-9:
            raise ValueError(f"scale_sampling='resize_hr' makes targets by shrinking the data's x{scale} HR: "
                             f"training scales {scales} must not exceed it")
        self.val_scales = [float(s) for s in (val_scales or [])]
        self.scale_metrics = nn.ModuleDict({
            f"{scale_tag(s).replace('.', '_')}__{prefix}{name}": MeanMetric()
            for s in self.val_scales for prefix in ("", "bicubic_") for name in EVAL_METRICS})
        self._rng: random.Random | None = None
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ training pairs
    def _generators(self) -> tuple[random.Random, torch.Generator]:
        if self._rng is None or self._generator is None:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._rng = random.Random(self.hparams.seed + rank)
            self._generator = torch.Generator().manual_seed(self.hparams.seed + rank)
        return self._rng, self._generator

    def draw_scale(self) -> float:
        """This batch's scale: from ``train_scales``, else uniform in the range."""
        rng, _ = self._generators()
        hp = self.hparams
        if hp.train_scales is not None:
            return float(rng.choice(list(hp.train_scales)))
        return rng.uniform(hp.train_scale_min, hp.train_scale_max)

    def training_pair(self, batch: dict, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, target)`` of a batch at ``scale`` (see the class docstring)."""
        lr, hr = batch["lr"], batch["hr"]
        if self.hparams.scale_sampling == "resize_hr":
            size = (max(1, round(lr.shape[-2] * scale)), max(1, round(lr.shape[-1] * scale)))
            target = hr if tuple(hr.shape[-2:]) == size else imresize(hr, size=size).clamp(0, 1)
            return lr, target
        rng, _ = self._generators()
        side = round(self.hparams.inp_size * scale)
        if side > min(hr.shape[-2:]):
            raise ValueError(f"scale_sampling='crop_hr' needs HR patches of at least round(inp_size * s) = {side} px "
                             f"(inp_size {self.hparams.inp_size}, s {scale:.3g}); the batch has "
                             f"{tuple(hr.shape[-2:])}: raise data.patch_size or lower inp_size")
        crops = []
        for image in hr:
            top, left = rng.randint(0, image.shape[-2] - side), rng.randint(0, image.shape[-1] - side)
            crops.append(image[:, top : top + side, left : left + side])
        target = torch.stack(crops)
        size = self.hparams.inp_size
        return imresize(target, size=(size, size)).clamp(0, 1), target

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = self.draw_scale()
        lr, target = self.training_pair(batch, scale)
        lr = self._prepare_input(lr)
        if self.hparams.loss_on == "image":
            loss = self.pixel_loss(self.net(lr, size=target.shape[-2:]).float(), target)
        else:
            coord, cell, rgb = sample_queries(target, self.hparams.sample_q, self._generators()[1])
            loss = self.pixel_loss(self.net.query(lr, coord, cell).float(), rgb)
        n = lr.shape[0]
        if step_logs_due(self):  # the logger's points only: a log call costs more than a tiny step
            self.log("train/loss", loss, prog_bar=True, batch_size=n)
            self.log("train/scale", scale, batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation at other scales
    @torch.no_grad()
    def super_resolve_at(self, lr: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Evaluation forward at an output ``size`` (EMA weights), clamped to [0, 1]."""
        return self.eval_net()(self._prepare_input(lr), size=tuple(size)).float().clamp(0, 1)

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        out = super().validation_step(batch, batch_idx)
        for s in self.val_scales:
            lr, hr = lr_at_scale(batch["hr"], s)
            sr = self.super_resolve_at(lr, hr.shape[-2:])
            bic = imresize(lr, size=tuple(hr.shape[-2:])).clamp(0, 1)
            border = math.ceil(s)
            values = sr_metrics(sr, hr, border)
            values.update({f"bicubic_{k}": v for k, v in sr_metrics(bic, hr, border).items()})
            tag = scale_tag(s)
            for name, value in values.items():
                key = f"{tag.replace('.', '_')}__{name}"
                self.scale_metrics[key].update(value)
                self.log(f"val/{tag}/{name}", self.scale_metrics[key], on_epoch=True, batch_size=lr.shape[0],
                         metric_attribute=f"scale_metrics.{key}")
        return out
