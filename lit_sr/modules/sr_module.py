"""SRModule: train, validate, test and run any registered SR network with Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from lit_sr.archs import arch_kwargs_with_scale, build_arch  # arch_kwargs_with_scale re-exported here
from lit_sr.io import load_weights, save_weights, write_image
from lit_sr.losses import build_pixel_loss
from lit_sr.metrics import psnr, ssim
from lit_sr.modules.ema import make_ema_copy, update_ema
from lit_sr.ops import imresize, tiled_forward

EVAL_METRICS = ("psnr_rgb", "psnr_y", "ssim_y")


def sr_metrics(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> dict[str, torch.Tensor]:
    """The per-image evaluation metrics of the SR protocol (8-bit, crop_border = scale)."""
    return {
        "psnr_rgb": psnr(sr, hr, crop_border=crop_border),
        "psnr_y": psnr(sr, hr, crop_border=crop_border, y_channel=True),
        "ssim_y": ssim(sr, hr, crop_border=crop_border, y_channel=True),
    }


class SRModule(L.LightningModule):
    """Supervised single-image SR with any network of the registry.

    Args:
        arch: registry name (``edsr``, ``rcan``, ``rrdbnet``, ``swinir``, ``carn``, ``bicubic``, ...).
        arch_kwargs: constructor arguments of the network (BasicSR names); its scale argument is
            filled from ``scale``.
        scale: upscaling factor; also the ``crop_border`` of the evaluation metrics.
        loss: pixel loss, ``l1``, ``mse`` or ``charbonnier``.
        optimizer: ``adam`` or ``adamw``.
        lr: learning rate.
        betas: Adam betas (BasicSR uses (0.9, 0.99)).
        weight_decay: weight decay.
        scheduler: ``multistep`` (``milestones`` in optimiser steps, ``gamma``), ``cosine`` (to
            ``eta_min`` over the whole run) or ``none``.
        milestones: MultiStepLR milestones, in optimiser steps.
        gamma: MultiStepLR factor.
        eta_min: cosine floor.
        ema_decay: keep an EMA of the weights with this decay (BasicSR: 0.999); validation then
            uses the EMA weights, and the exported file holds them as ``params_ema``.
        pretrained: weights file to initialise the network (BasicSR ``.pth``, ``.ckpt``, ``.safetensors``).
        pretrained_key: ``params`` / ``params_ema`` / ``None`` (EMA when present).
        strict_load: require an exact key match when loading ``pretrained``.
        channels_last: run the network in channels-last memory format (faster convolutions on GPU).
        compile: ``torch.compile`` the network's forward (opt-in; compile time is minutes for deep nets).
        tile: LR tile size for validation/test/predict on large images (``None``: whole image).
        tile_overlap: LR overlap between tiles.
        predict_dir: where ``predict`` writes its PNGs.
        export_weights: at the end of ``fit``, write ``weights.pth`` (BasicSR format) into the log dir.
    """

    def __init__(
        self,
        arch: str = "edsr",
        arch_kwargs: dict[str, Any] | None = None,
        scale: int = 4,
        loss: str = "l1",
        optimizer: str = "adam",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        scheduler: str = "multistep",
        milestones: list[int] | None = None,
        gamma: float = 0.5,
        eta_min: float = 1e-7,
        ema_decay: float | None = None,
        pretrained: str | None = None,
        pretrained_key: str | None = None,
        strict_load: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        tile: int | None = None,
        tile_overlap: int = 16,
        predict_dir: str = "predictions",
        export_weights: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
        if scheduler not in ("multistep", "cosine", "none"):
            raise ValueError(f"scheduler must be 'multistep', 'cosine' or 'none', got {scheduler!r}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
        self.scale = scale
        self.net = build_arch(arch, **arch_kwargs_with_scale(arch, arch_kwargs, scale))
        if pretrained:
            load_weights(self.net, pretrained, key=pretrained_key, strict=strict_load)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net_ema = make_ema_copy(self.net) if ema_decay is not None else None
        self.pixel_loss = build_pixel_loss(loss)
        self.val_metrics = nn.ModuleDict({k: MeanMetric() for k in EVAL_METRICS})
        self.bicubic_metrics = nn.ModuleDict({k: MeanMetric() for k in EVAL_METRICS})
        self.test_metrics = nn.ModuleDict()
        self._bicubic_logged = False
        self._ema_step = -1
        # Kept out of the module tree (object.__setattr__) so that state_dict keys stay BasicSR's.
        object.__setattr__(self, "_compiled", torch.compile(self.net) if compile else None)

    # ------------------------------------------------------------------ forward
    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        net = self._compiled if self._compiled is not None else self.net
        return net(self._prepare_input(lr))

    def eval_net(self) -> nn.Module:
        """The network used for evaluation: the EMA copy when there is one."""
        return self.net_ema if self.net_ema is not None else self.net

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor) -> torch.Tensor:
        """Evaluation forward (EMA weights, tiled when ``tile`` is set), clamped to [0, 1]."""
        # Eager on purpose: evaluation images vary in size and would make a compiled net recompile.
        net = self.eval_net()
        sr = tiled_forward(lambda x: net(self._prepare_input(x)), lr, self.scale, self.hparams.tile,
                           self.hparams.tile_overlap)
        return sr.float().clamp(0, 1)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sr = self(batch["lr"])
        loss = self.pixel_loss(sr.float(), batch["hr"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Once per optimiser step, not per micro-batch when gradients are accumulated.
        if self.net_ema is not None and self.trainer.global_step != self._ema_step:
            self._ema_step = self.trainer.global_step
            update_ema(self.net_ema, self.net, self.hparams.ema_decay)

    def configure_optimizers(self):
        hp = self.hparams
        opt_cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        opt = opt_cls(self.net.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones or []), gamma=hp.gamma)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=hp.eta_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        lr, hr = batch["lr"], batch["hr"]
        sr = self.super_resolve(lr)
        n = lr.shape[0]
        for name, value in sr_metrics(sr, hr, self.scale).items():
            self.val_metrics[name].update(value)
            self.log(f"val/{name}", self.val_metrics[name], on_epoch=True, prog_bar=name == "psnr_y", batch_size=n)
        if not self._bicubic_logged and not self.trainer.sanity_checking:
            bic = imresize(lr, self.scale).clamp(0, 1)
            for name, value in sr_metrics(bic, hr, self.scale).items():
                self.bicubic_metrics[name].update(value)
                self.log(f"val/bicubic_{name}", self.bicubic_metrics[name], on_epoch=True, batch_size=n)
        return {"sr": sr}

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._bicubic_logged = True

    # ------------------------------------------------------------------ test
    def _test_set_name(self, dataloader_idx: int) -> str:
        dm = getattr(self.trainer, "datamodule", None)
        names = dm.test_set_names() if dm is not None and hasattr(dm, "test_set_names") else []
        return names[dataloader_idx] if dataloader_idx < len(names) else f"set{dataloader_idx}"

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        set_name = self._test_set_name(dataloader_idx)
        sr = self.super_resolve(batch["lr"])
        bic = imresize(batch["lr"], self.scale).clamp(0, 1)
        values = sr_metrics(sr, batch["hr"], self.scale)
        values.update({f"bicubic_{k}": v for k, v in sr_metrics(bic, batch["hr"], self.scale).items()})
        for name, value in values.items():
            key = f"{set_name}__{name}"
            if key not in self.test_metrics:
                self.test_metrics[key] = MeanMetric().to(self.device)
            self.test_metrics[key].update(value)
            self.log(f"test/{set_name}/{name}", self.test_metrics[key], on_epoch=True, add_dataloader_idx=False,
                     batch_size=sr.shape[0], metric_attribute=f"test_metrics.{key}")

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[str]:
        sr = self.super_resolve(batch["lr"])
        out_dir = Path(self.hparams.predict_dir)
        written = []
        for img, src in zip(sr, batch["path"]):
            written.append(str(write_image(img, out_dir / f"{Path(src).stem}_x{self.scale}.png")))
        return written

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path) -> Path:
        """Write the network as BasicSR ``{'params', 'params_ema'}`` (``.pth``) or ``.safetensors``."""
        return save_weights(self.net, path, ema_model=self.net_ema)

    def on_fit_end(self) -> None:
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank must make it
        if self.hparams.export_weights and self.trainer.is_global_zero and log_dir:
            self.export(Path(log_dir) / "weights.pth")
