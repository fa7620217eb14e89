"""SRModule: train, validate, test and run any registered SR network with Lightning."""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from bisect import bisect_right
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric

from lit_sr.archs import arch_kwargs_with_scale, build_arch  # arch_kwargs_with_scale re-exported here
from lit_sr.io import load_weights, read_state_dict, save_weights
from lit_sr.losses import build_pixel_loss
from lit_sr.metrics import psnr, ssim
from lit_sr.modules.ema import make_ema_copy, update_ema
from lit_sr.modules.step_logs import step_logs_due
from lit_sr.ops import imresize, tiled_forward
from lit_sr.training.hook_name import PlainHookName
from lit_sr.validation import check_int, check_positive, check_same_scale

EVAL_METRICS = ("psnr_rgb", "psnr_y", "ssim_y")
# Logged metrics that the TensorBoard HPARAMS tab shows next to the hyper-parameters.
HPARAM_METRIC_PREFIXES = ("val/", "backdoor/")


def sr_metrics(sr: torch.Tensor, hr: torch.Tensor, crop_border: int) -> dict[str, torch.Tensor]:
    """The per-image evaluation metrics of the SR protocol (8-bit, crop_border = scale)."""
    return {
        "psnr_rgb": psnr(sr, hr, crop_border=crop_border),
        "psnr_y": psnr(sr, hr, crop_border=crop_border, y_channel=True),
        "ssim_y": ssim(sr, hr, crop_border=crop_border, y_channel=True),
    }


class SRModule(PlainHookName, L.LightningModule):
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
            ``eta_min`` over the whole run) or ``none``. Both are closed-form functions of the
            optimiser step (see :meth:`lr_factor`), so a run resumed with another length
            (``--trainer.max_epochs``/``max_steps``) or another ``lr`` follows the schedule of the new
            run from the step it resumes at, exactly as a fresh run of that length would.
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
        tile: LR tile size for validation/test on large images (``None``: whole image); also for
            ``predict`` unless a ``lit_sr.training.prediction_writer.PredictionWriter`` sets its own tiling (``train.py``
            always adds one: ``--prediction.tile``).
        tile_overlap: LR overlap between tiles (seamless when half of it covers the network's
            receptive radius, see :func:`lit_sr.ops.tiled_forward`).
        export_weights: at the end of ``fit``, write into the log dir ``weights.pth`` (BasicSR
            format, the last state: the network of ``last.ckpt``) and, when a ``ModelCheckpoint``
            monitors a metric, ``weights_best.pth`` (the network of its best checkpoint); each file
            says which it is in its ``meta`` entry (``state`` ``last``/``best``, ``global_step``;
            for the best also ``epoch``, ``monitor``, ``score`` and the checkpoint's file name).

    Predictions: ``predict_step`` returns the SR batch; writing it is the job of
    ``lit_sr.training.prediction_writer.PredictionWriter`` (where a checkpoint's hyper-parameters cannot redirect it).
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
        check_positive(lr, "lr")  # a YAML ".nan" or "-1e-4" is a float too: refused here, not at the first step
        self.scale = check_int(scale, "scale", 1)
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
        self._hparam_metrics: set[str] = set()
        self._schedule_length = 1
        self._run_base_lrs: dict[int, list[float]] = {}
        # (tile, overlap) for predict, set by lit_sr.training.prediction_writer.PredictionWriter; None: use tile/tile_overlap.
        self.predict_tiling: tuple[int | None, int] | None = None
        # Kept out of the module tree (object.__setattr__) so that state_dict keys stay BasicSR's.
        object.__setattr__(self, "_compiled", torch.compile(self.net) if compile else None)

    # ------------------------------------------------------------------ forward
    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def setup(self, stage: str) -> None:
        # before any step: a data module of another scale would fail inside the loss (a shape error)
        check_same_scale(self.scale, self.trainer.datamodule, type(self).__name__)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        net = self._compiled if self._compiled is not None else self.net
        return net(self._prepare_input(lr))

    def eval_net(self) -> nn.Module:
        """The network used for evaluation: the EMA copy when there is one."""
        return self.net_ema if self.net_ema is not None else self.net

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor, tiling: tuple[int | None, int] | None = None) -> torch.Tensor:
        """Evaluation forward (EMA weights, tiled), clamped to [0, 1].

        ``tiling`` is ``(tile, overlap)``; ``None`` uses the ``tile`` / ``tile_overlap`` hyper-parameters.
        """
        # Eager on purpose: evaluation images vary in size and would make a compiled net recompile.
        net = self.eval_net()
        tile, overlap = tiling if tiling is not None else (self.hparams.tile, self.hparams.tile_overlap)
        sr = tiled_forward(lambda x: net(self._prepare_input(x)), lr, self.scale, tile, overlap)
        return sr.float().clamp(0, 1)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sr = self(batch["lr"])
        loss = self.pixel_loss(sr.float(), batch["hr"])
        if step_logs_due(self):  # the logger's points only: a log call costs more than a tiny step
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
        sched = self._make_scheduler(opt)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _make_scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR | None:
        """The ``scheduler`` as a closed-form :class:`LambdaLR` of the optimiser step (see :meth:`lr_factor`).

        Also records ``opt``'s learning rates as this run's peak ones (``None`` for ``scheduler: none``).
        """
        # Read here, before a resumed checkpoint overwrites the optimiser's and scheduler's state.
        self._run_base_lrs[id(opt)] = [group["lr"] for group in opt.param_groups]
        if self.hparams.scheduler == "none":
            return None
        # The run's length is read in setup too, so a resumed run uses the new --trainer.max_* length.
        self._schedule_length = max(1, int(self.trainer.estimated_stepping_batches))
        # A plain function (not a bound method or object): LambdaLR leaves it out of its state_dict.
        key = id(opt)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_factor(step, self._run_base_lrs[key][0]))

    def lr_factor(self, step: int, base_lr: float | None = None) -> float:
        """Learning rate at optimiser ``step`` relative to the peak ``base_lr`` (default ``lr``).

        ``multistep``: ``gamma ** (milestones <= step)`` (MultiStepLR's values); ``cosine``:
        ``eta_min`` plus the half cosine from ``lr`` over the run's ``estimated_stepping_batches``
        (CosineAnnealingLR's closed form; it stays at ``eta_min`` past the end instead of rising
        again); ``none``: 1.
        """
        hp = self.hparams
        if hp.scheduler == "multistep":
            return hp.gamma ** bisect_right(sorted(hp.milestones or []), step)
        if hp.scheduler == "cosine":
            base = hp.lr if base_lr is None else base_lr
            floor = hp.eta_min / base if base > 0 else 0.0
            progress = min(step, self._schedule_length) / self._schedule_length
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def on_train_start(self) -> None:
        # Runs after a resumed checkpoint restored the optimisers and schedulers: their saved base
        # and current learning rates belong to the old run (its lr, its length), so put this run's
        # lr and schedule, evaluated at the step reached, back into every optimiser.
        schedulers = {id(c.scheduler.optimizer): c.scheduler for c in self.trainer.lr_scheduler_configs
                      if isinstance(c.scheduler, torch.optim.lr_scheduler.LambdaLR)}
        for opt in self.trainer.optimizers:
            bases = self._run_base_lrs.get(id(opt))
            if bases is None:
                continue
            sched = schedulers.get(id(opt))
            restored = [group.get("initial_lr", group["lr"]) for group in opt.param_groups]
            if sched is not None:
                restored = list(sched.base_lrs)
            if self.trainer.ckpt_path and not all(math.isclose(a, b) for a, b in zip(restored, bases)):
                warnings.warn(f"resuming from {self.trainer.ckpt_path} with lr {bases} (the checkpoint's run "
                              f"used {restored}): the schedule continues from the new lr", stacklevel=2)
            factor = self.lr_factor(sched.last_epoch, bases[0]) if sched is not None else 1.0
            for group, base in zip(opt.param_groups, bases):
                group["initial_lr"] = base
                group["lr"] = base * factor
            if sched is not None:
                sched.base_lrs = list(bases)
                sched._last_lr = [group["lr"] for group in opt.param_groups]

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

    def on_validation_end(self) -> None:
        # callback_metrics hold this validation's epoch values here (also the callbacks' backdoor/*).
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING:
            return
        self.log_hparams_with_metrics()

    def log_hparams_with_metrics(self) -> None:
        """Write the hyper-parameters to the logger together with the metrics they explain.

        TensorBoard's HPARAMS tab lists a run only when its hyper-parameters come with metric names
        (the recipes set ``default_hp_metric: false``, so Lightning's start-of-fit call writes none).
        The metrics are the logged ``val/*`` and ``backdoor/*`` values of this validation; the tab
        then follows their scalar series. Written again only when new metric names appear.
        """
        names = {k for k in self.trainer.callback_metrics if k.startswith(HPARAM_METRIC_PREFIXES)}
        if not names or names <= self._hparam_metrics or self.logger is None:
            return
        self._hparam_metrics |= names
        # LightningCLI's bookkeeping (_class_path, _instantiator) is no hyper-parameter
        params = {k: v for k, v in self.hparams.items() if not k.startswith("_")}
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "hparams", None):
            # the CLI stores the data configuration under one key, "data"; a key the model has too gets a prefix
            params.update({k if k not in params else f"data/{k}": v for k, v in dm.hparams.items()})
        metrics = {k: float(self.trainer.callback_metrics[k]) for k in sorted(self._hparam_metrics)
                   if k in self.trainer.callback_metrics}
        for logger in self.loggers:
            # TensorBoard's takes metrics; others (CSV, ...) already hold the hparams from the start of fit.
            if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
                logger.log_hyperparams(params, metrics=metrics, step=self.global_step)

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
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The SR batch in [0, 1]; ``lit_sr.training.prediction_writer.PredictionWriter`` writes it (and may set ``predict_tiling``)."""
        return self.super_resolve(batch["lr"], self.predict_tiling)

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write the network as BasicSR ``{'params', 'params_ema'}`` (``.pth``) or ``.safetensors``.

        ``meta`` (say which state it is: ``{"state": "last", "global_step": ...}``) is stored with it.
        """
        return save_weights(self.net, path, ema_model=self.net_ema, meta=meta)

    def export_checkpoint(self, ckpt_path: str | Path, path: str | Path, meta: dict) -> Path:
        """Write the network held by a Lightning checkpoint of this module (e.g. the best one) like :meth:`export`."""
        net = copy.deepcopy(self.net)
        net.load_state_dict(read_state_dict(ckpt_path, key="params"))
        ema = None
        if self.net_ema is not None:
            ema = copy.deepcopy(self.net_ema)
            ema.load_state_dict(read_state_dict(ckpt_path, key="params_ema"))
        return save_weights(net, path, ema_model=ema, meta=meta)

    def on_fit_end(self) -> None:
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank must make it
        if not (self.hparams.export_weights and self.trainer.is_global_zero and log_dir):
            return
        last = {"state": "last", "global_step": self.global_step}
        self.export(Path(log_dir) / "weights.pth", meta=last)
        best = self._best_checkpoint()
        if best is not None:
            callback, ckpt = best
            saved = torch.load(callback.best_model_path, map_location="cpu", weights_only=True)
            meta = {"state": "best", "monitor": callback.monitor, "score": float(callback.best_model_score),
                    "epoch": int(saved["epoch"]), "global_step": int(saved["global_step"]),
                    "checkpoint": Path(ckpt).name}
            self.export_checkpoint(ckpt, Path(log_dir) / "weights_best.pth", meta)

    def _best_checkpoint(self):
        """``(callback, path)`` of the first ModelCheckpoint that monitors a metric and saved a file, or ``None``."""
        for callback in self.trainer.checkpoint_callbacks:
            path = getattr(callback, "best_model_path", "")
            if getattr(callback, "monitor", None) and path and Path(path).is_file():
                return callback, path
        return None
