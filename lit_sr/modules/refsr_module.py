"""RefSRModule: train, validate and test reference-based SR networks (TTSR, MASA, DATSR, SSMTF).

Batches are ``{"lr", "ref", "hr"}`` (see :mod:`datamodules.refsr`). Two loss sets, as the RefSR
literature: ``"rec"`` (L1 only, the "-rec" models) or ``"full"`` (L1 + perceptual +
transferal perceptual + WGAN-GP), the full model being the one RefSR-Adv finds more vulnerable.
Metrics are those of :class:`~lit_sr.modules.sr_module.SRModule` (Y-channel PSNR/SSIM,
crop_border = scale), per evaluation set, so a data module that splits its sets by similarity
level gets every metric stratified by level. With ``test_attack`` the test loop also runs
RefSR-Adv and its contrasts (:func:`lit_sr.attacks.refsr_adv.refsr_attack_report`) and writes
the table by set (``refsr_adv_by_set.md``) into the log directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from lit_sr.archs import build_arch
from lit_sr.archs.ttsr_arch import TTSRDiscriminator
from lit_sr.attacks.refsr_adv import refsr_attack_report
from lit_sr.io import atomic_write, load_weights, save_weights
from lit_sr.losses import (
    PERCEPTUAL_PREFIX,
    Criterion,
    PerceptualLoss,
    drop_frozen_perceptual,
    restore_frozen_perceptual,
)
from lit_sr.modules.sr_module import EVAL_METRICS, arch_kwargs_with_scale, sr_metrics
from lit_sr.modules.step_logs import step_logs_due
from lit_sr.runtime import Autocast, grad_enabled_outside_inference
from lit_sr.tables import fmt, markdown_lines
from lit_sr.training.hook_name import PlainHookName
from lit_sr.validation import check_eps, check_int, check_number, check_positive, check_same_scale

_PERCEPTUAL_PREFIX = PERCEPTUAL_PREFIX
_ALL = "all"  # the set name of the means over every evaluation loader
ATTACK_ROWS = ("clean", "refsr_adv", "ref_noise", "ref_square", "lr_pgd")


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): ``mean((||grad critic(x_hat)||_2 - 1)^2)`` on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    grad = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)[0]
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def transferal_perceptual_loss(sr_feats, textures, soft_attention: torch.Tensor) -> torch.Tensor:
    """TTSR's Eq. 11: MSE between the LTE features of the output and the transferred textures,
    weighted by ``sigmoid(S)`` upsampled to each level, averaged over the three levels."""
    loss = soft_attention.new_zeros((), dtype=torch.float32)
    for level, (feat, texture) in enumerate(zip(sr_feats, textures)):
        factor = 2 ** (2 - level)  # lv1 at x4 of S, lv2 at x2, lv3 at x1
        s = soft_attention if factor == 1 else F.interpolate(soft_attention, scale_factor=factor, mode="bicubic")
        weight = torch.sigmoid(s)
        loss = loss + F.mse_loss((feat * weight).float(), (texture * weight).float())
    return loss / 3


class RefSRModule(PlainHookName, L.LightningModule):
    """Reference-based SR with a network of the registry called as ``net(lr, ref)``.

    Args:
        arch: registry name (``ttsr``, ``masa``, ``datsr``, ``ssmtf``).
        arch_kwargs: constructor arguments (``n_feats``, ``num_res_blocks``, ``vgg_weights`` ...);
            its ``upscale`` is filled from ``scale``.
        scale: upscaling factor (4), also the metrics' crop_border.
        losses: ``"rec"`` (L1 only) or ``"full"`` (L1 + perceptual + transferal perceptual +
            WGAN-GP, TTSR's weights below).
        rec_weight, perceptual_weight, tpl_weight, adv_weight, gp_weight: TTSR's loss weights
            (1, 1e-2, 1e-2, 1e-3; gradient penalty 10).
        warmup_epochs: with ``"full"``, the first epochs train on L1 only (TTSR's num_init_epochs, 2).
        vgg_weights: torchvision VGG19 file of the perceptual loss (relu5_1, MSE, as TTSR); default
            the torch hub cache. Missing with ``losses="full"``: ``FileNotFoundError`` naming it.
        perceptual_criterion: distance of the perceptual loss on relu5_1: ``"l2"`` (TTSR's MSE),
            ``"fro"`` (DATSR's Frobenius norm of the difference over the batch) or ``"l1"``.
        perceptual_pretrained: ``False`` builds the perceptual VGG at random (tests only: its
            "perceptual" loss then measures nothing).
        disc_size: input side of the discriminator (the HR training patch; TTSR's discriminator).
        disc_arch: registry name of another discriminator (``image_discriminator``, DATSR's);
            ``None``: TTSR's (:class:`~lit_sr.archs.ttsr_arch.TTSRDiscriminator`).
        disc_kwargs: its constructor arguments.
        lr: learning rate of the backbone; ``lr_texture``: of the texture extractor (TTSR: 1e-5);
            ``lr_disc``: of the discriminator.
        lr_groups: ``{pattern: lr}``: parameters of the network whose name matches a pattern
            (``fnmatch``, the first match wins) get that rate, e.g. DATSR's offset rates
            ``{"*small*offset*": 1e-6, "*medium*offset*": 1e-5}``. Frozen parameters
            (``requires_grad=False``: DATSR's VGG and extractor) are never optimised.
        betas: Adam betas of the network (TTSR: 0.9, 0.999).
        disc_betas: Adam betas of the discriminator (TTSR's WGAN-GP: 0, 0.9).
        disc_steps: critic updates per iteration, on the same generated batch (TTSR's GAN_k: 2).
        milestones, gamma: MultiStepLR (in optimiser steps) of all optimisers; none by default.
        pretrained: weights file for the network (``.pth``/``.ckpt``/``.safetensors``).
        strict_load: exact key match when loading ``pretrained``.
        test_attack: run RefSR-Adv and its contrasts on every test batch.
        attack_eps, attack_steps: budget and PGD steps of those attacks (8/255, 50).
        attack_square_queries: query budget of the black-box reference attack row (0: left out).
        autocast: ``"none"`` or ``"bf16"`` for the attacks' forward passes.
        export_weights: write ``weights.pth`` (BasicSR ``{'params'}``) into the log dir after ``fit``.
    """

    def __init__(
        self,
        arch: str = "ttsr",
        arch_kwargs: dict[str, Any] | None = None,
        scale: int = 4,
        losses: Literal["rec", "full"] = "rec",
        rec_weight: float = 1.0,
        perceptual_weight: float = 1e-2,
        tpl_weight: float = 1e-2,
        adv_weight: float = 1e-3,
        gp_weight: float = 10.0,
        warmup_epochs: int = 2,
        vgg_weights: str | None = None,
        perceptual_pretrained: bool = True,
        perceptual_criterion: Criterion = "l2",
        disc_size: int = 160,
        disc_arch: str | None = None,
        disc_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        lr_texture: float = 1e-5,
        lr_disc: float = 1e-4,
        lr_groups: dict[str, float] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        disc_betas: tuple[float, float] = (0.0, 0.9),
        disc_steps: int = 2,
        milestones: list[int] | None = None,
        gamma: float = 0.5,
        pretrained: str | None = None,
        strict_load: bool = True,
        test_attack: bool = False,
        attack_eps: float = 8 / 255,
        attack_steps: int = 50,
        attack_square_queries: int = 0,
        autocast: Autocast = "none",
        export_weights: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        if losses not in ("rec", "full"):
            raise ValueError(f"losses must be 'rec' or 'full', got {losses!r}")
        for name in ("rec_weight", "perceptual_weight", "tpl_weight", "adv_weight", "gp_weight"):
            check_number(getattr(self.hparams, name), name, low=0)
        check_int(warmup_epochs, "warmup_epochs", 0)
        check_int(disc_steps, "disc_steps", 1)
        for name in ("lr", "lr_texture", "lr_disc"):  # a YAML ".nan" is a float too
            check_positive(getattr(self.hparams, name), name)
        check_eps(attack_eps, "attack_eps")
        check_int(attack_steps, "attack_steps", 1)
        check_int(attack_square_queries, "attack_square_queries", 0)
        self.automatic_optimization = False
        self.scale = scale
        self.net = build_arch(arch, **arch_kwargs_with_scale(arch, arch_kwargs, scale))
        if pretrained:
            load_weights(self.net, pretrained, strict=strict_load)
        self.full = losses == "full"
        for pattern, rate in (lr_groups or {}).items():
            check_number(rate, f"lr_groups[{pattern!r}]", low=0)
        if self.full and tpl_weight > 0 and not callable(getattr(self.net, "forward_with_textures", None)):
            raise ValueError(f"tpl_weight={tpl_weight} needs a network with TTSR's transferred textures "
                             f"(forward_with_textures); arch {arch!r} has none: set tpl_weight: 0")
        self.net_d = None
        if self.full and adv_weight > 0:
            self.net_d = (TTSRDiscriminator(disc_size) if disc_arch is None
                          else build_arch(disc_arch, **(disc_kwargs or {})))
        self.perceptual_loss = (
            PerceptualLoss({"relu5_1": 1.0}, perceptual_weight=1.0, criterion=perceptual_criterion, weights_path=vgg_weights,
                           pretrained=perceptual_pretrained)
            if self.full and perceptual_weight > 0 else None
        )
        self.eval_metrics = nn.ModuleDict()

    # ------------------------------------------------------------------ forward
    def setup(self, stage: str) -> None:
        # before any step: a data module of another scale would fail inside the loss (a shape error)
        check_same_scale(self.scale, self.trainer.datamodule, type(self).__name__)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.net(lr, ref)

    @torch.no_grad()
    def super_resolve(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Evaluation forward, clamped to [0, 1]."""
        return self.net(lr, ref).float().clamp(0, 1)

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        hp = self.hparams
        rates: dict[float, list] = {}
        for name, param in self.net.named_parameters():
            if param.requires_grad:
                rates.setdefault(self._param_lr(name), []).append(param)
        groups = [{"params": params, "lr": rate} for rate, params in rates.items()]
        optimisers = [torch.optim.Adam(groups, betas=tuple(hp.betas))]
        if self.net_d is not None:
            optimisers.append(torch.optim.Adam(self.net_d.parameters(), lr=hp.lr_disc, betas=tuple(hp.disc_betas)))
        configs = []
        for opt in optimisers:
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones or []), gamma=hp.gamma)
            configs.append({"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}})
        return configs

    def _param_lr(self, name: str) -> float:
        """Learning rate of one network parameter: ``lr_groups``' first match, the texture extractor's, or ``lr``."""
        hp = self.hparams
        for pattern, rate in (hp.lr_groups or {}).items():
            if fnmatchcase(name, pattern):
                return float(rate)
        return float(hp.lr_texture if name.startswith("LTE.") else hp.lr)

    # ------------------------------------------------------------------ training
    def in_warmup(self) -> bool:
        """L1-only epochs of the full model (TTSR trains its first ``warmup_epochs`` epochs on L1)."""
        return self.current_epoch < self.hparams.warmup_epochs

    def generator_losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The weighted generator losses of one batch and the output."""
        hp = self.hparams
        lr, ref, hr = batch["lr"], batch["ref"], batch["hr"]
        adversarial = self.full and not self.in_warmup()
        if adversarial and hp.tpl_weight > 0:
            sr, soft, *textures = self.net.forward_with_textures(lr, ref)
        else:
            sr, soft, textures = self.net(lr, ref), None, None
        sr = sr.float()
        losses = {"rec": hp.rec_weight * F.l1_loss(sr, hr)}
        if adversarial:
            if self.perceptual_loss is not None:
                losses["per"] = hp.perceptual_weight * self.perceptual_loss(sr, hr)
            if textures is not None:
                # textures come as (T_lv3, T_lv2, T_lv1); the extractor returns (lv1, lv2, lv3)
                feats = self.net.texture_features(sr)
                losses["tpl"] = hp.tpl_weight * transferal_perceptual_loss(feats, textures[::-1], soft)
            if self.net_d is not None:
                losses["adv"] = -hp.adv_weight * self.net_d(sr).float().mean()
        return losses, sr

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        optimisers = self.optimizers()
        opt_g, opt_d = (optimisers[0], optimisers[1]) if isinstance(optimisers, list) else (optimisers, None)
        n = batch["lr"].shape[0]
        if opt_d is not None:
            self.toggle_optimizer(opt_g)
        losses, sr = self.generator_losses(batch)
        loss = sum(losses.values())
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()
        if opt_d is not None:
            self.untoggle_optimizer(opt_g)
        logs = {f"train/{k}": v.detach() for k, v in losses.items()}
        logs["train/loss"] = loss.detach()
        if opt_d is not None and not self.in_warmup():
            for _ in range(self.hparams.disc_steps):
                logs.update(self._discriminator_step(opt_d, sr.detach(), batch["hr"]))
        for sched in self._schedulers():
            sched.step()
        if step_logs_due(self):  # the logger's points only: a log call costs more than a tiny step
            self.log_dict(logs, prog_bar=False, batch_size=n)
            self.log("train/loss_pbar", loss.detach(), prog_bar=True, logger=False, batch_size=n)
        return logs  # checked every step by lit_sr.training.stop_on_nonfinite.StopOnNonFiniteLoss

    def _discriminator_step(self, opt_d, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """One WGAN-GP critic step: ``D(fake) - D(real) + gp_weight * GP``."""
        self.toggle_optimizer(opt_d)
        d_real, d_fake = self.net_d(hr).float().mean(), self.net_d(sr).float().mean()
        gp = gradient_penalty(self.net_d, hr, sr)
        d_loss = d_fake - d_real + self.hparams.gp_weight * gp
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        # Through the strategy, not opt_d.step(): one global step per iteration (the generator's).
        self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None)
        self.untoggle_optimizer(opt_d)
        return {"train/d_loss": d_loss.detach(), "train/d_gp": gp.detach(), "train/d_wdist": (d_real - d_fake).detach()}

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return []
        return schedulers if isinstance(schedulers, list) else [schedulers]

    # ------------------------------------------------------------------ evaluation
    def _set_name(self, dataloader_idx: int, stage: str) -> str:
        dm = getattr(self.trainer, "datamodule", None)
        getter = getattr(dm, f"{stage}_set_names", None) if dm is not None else None
        names = getter() if getter is not None else []
        return names[dataloader_idx] if dataloader_idx < len(names) else f"set{dataloader_idx}"

    def _update(self, stage: str, set_name: str, name: str, value: torch.Tensor, n: int) -> None:
        key = f"{stage}__{set_name}__{name}".replace("/", "_")
        if key not in self.eval_metrics:
            self.eval_metrics[key] = MeanMetric().to(self.device)
        self.eval_metrics[key].update(value.to(self.device, torch.float32))
        if set_name == _ALL:
            return  # one key fed by every loader: logged once at the epoch's end (_log_overall)
        self.log(f"{stage}/{set_name}/{name}", self.eval_metrics[key], on_epoch=True, add_dataloader_idx=False,
                 batch_size=n, metric_attribute=f"eval_metrics.{key}")

    def _log_overall(self, stage: str) -> None:
        """Log the means over every loader of the epoch (``val/all/psnr_y``, the checkpoint monitor)."""
        for name in EVAL_METRICS:
            key = f"{stage}__{_ALL}__{name}"
            if key in self.eval_metrics and self.eval_metrics[key].update_count:
                self.log(f"{stage}/{_ALL}/{name}", self.eval_metrics[key].compute(), prog_bar=name == "psnr_y")
                self.eval_metrics[key].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_overall("val")

    def _evaluate(self, batch: dict, stage: str, dataloader_idx: int) -> dict[str, torch.Tensor]:
        set_name = self._set_name(dataloader_idx, stage)
        sr = self.super_resolve(batch["lr"], batch["ref"])
        n = sr.shape[0]
        for name, value in sr_metrics(sr, batch["hr"], self.scale).items():
            self._update(stage, set_name, name, value, n)
            self._update(stage, _ALL, name, value, n)
        return {"sr": sr}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)
        if not self.hparams.test_attack:
            return
        hp = self.hparams
        set_name = self._set_name(dataloader_idx, "test")
        with grad_enabled_outside_inference():
            lr, ref, hr = (batch[k].clone() for k in ("lr", "ref", "hr"))
            rows = refsr_attack_report(
                self.net, lr, ref, hr, eps=hp.attack_eps, steps=hp.attack_steps, crop_border=self.scale,
                square_queries=hp.attack_square_queries, autocast=hp.autocast, seed=batch_idx,
            )
        for row, cols in rows.items():
            for col, value in cols.items():
                self._update("test", set_name, f"{row}/{col}", value, lr.shape[0])

    def on_test_epoch_end(self) -> None:
        if not self.hparams.test_attack:
            self._log_overall("test")
            return
        values = {key: metric.compute().item() for key, metric in self.eval_metrics.items()  # collective
                  if key.startswith("test__")}
        log_dir = self.trainer.log_dir
        if self.trainer.is_global_zero and log_dir:
            write_attack_table(values, Path(log_dir) / "refsr_adv_by_set.md", self.hparams.attack_eps)
        self._log_overall("test")

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen VGG out of checkpoints; its weights come from ``vgg_weights``."""
        drop_frozen_perceptual(checkpoint, _PERCEPTUAL_PREFIX)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put this module's VGG weights back so that strict loading of a checkpoint succeeds."""
        restore_frozen_perceptual(checkpoint, self.perceptual_loss, _PERCEPTUAL_PREFIX)

    def export(self, path: str | Path) -> Path:
        """Write the network as BasicSR ``{'params'}`` (``.pth``) or ``.safetensors``."""
        return save_weights(self.net, path)

    def on_fit_end(self) -> None:
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank makes it
        if self.hparams.export_weights and self.trainer.is_global_zero and log_dir:
            self.export(Path(log_dir) / "weights.pth")


def attack_table_rows(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{set: {"<row>_<col>": mean}}`` from the ``test__<set>__<row>_<col>`` metric keys (sets other than ``all``)."""
    table: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        stage, set_name, name = key.split("__", 2)
        if stage == "test" and set_name != _ALL and any(name.startswith(f"{row}_") for row in ATTACK_ROWS):
            table.setdefault(set_name, {})[name] = value
    return table


def write_attack_table(values: Mapping[str, float], path: Path, eps: float) -> Path:
    """Markdown table of RefSR-Adv and its contrasts by test set (rows: sets, e.g. similarity levels)."""
    table = attack_table_rows(values)
    columns = [
        ("clean_hr_psnr", "clean PSNR vs HR"),
        ("refsr_adv_hr_psnr", "RefSR-Adv PSNR vs HR"),
        ("refsr_adv_sr_psnr", "RefSR-Adv PSNR vs clean SR"),
        ("refsr_adv_sr_ssim", "RefSR-Adv SSIM vs clean SR"),
        ("refsr_adv_ref_psnr", "ref stealth PSNR"),
        ("ref_noise_sr_psnr", "noise PSNR vs clean SR"),
        ("ref_square_sr_psnr", "Square (ref) PSNR vs clean SR"),
        ("lr_pgd_sr_psnr", "LR-PGD PSNR vs clean SR"),
        ("lr_pgd_lr_psnr", "LR stealth PSNR"),
    ]
    cells = [[set_name, *(fmt(table[set_name].get(k), ".4g") for k, _ in columns)] for set_name in sorted(table)]
    lines = [f"RefSR-Adv, eps = {eps * 255:.3g}/255, Y-channel PSNR (dB) / SSIM, means per test set", "",
             *markdown_lines(["set", *(title for _, title in columns)], cells)]
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
