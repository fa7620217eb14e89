"""GANSRModule: ESRGAN-style adversarial SR training (generator + discriminator, manual optimisation)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from lit_sr.archs import build_arch
from lit_sr.io import load_weights, save_weights
from lit_sr.losses import (
    PERCEPTUAL_PREFIX,
    Criterion,
    GANLoss,
    PerceptualLoss,
    PixelLoss,
    VggType,
    drop_frozen_perceptual,
    ragan_d_loss,
    ragan_g_loss,
    restore_frozen_perceptual,
)
from lit_sr.modules.sr_module import SRModule
from lit_sr.modules.step_logs import step_logs_due
from lit_sr.validation import check_choice, check_int, check_number, check_positive

GanModuleType = Literal["ragan", "vanilla", "lsgan", "hinge"]
Discriminator = Literal["vgg_discriminator", "unet_discriminator"]
# The SRModule's choices (checked there); typed here so that jsonargparse rejects a typo at parse time.
OptimizerName = Literal["adam", "adamw"]
SchedulerName = Literal["multistep", "cosine", "none"]
GAN_TYPES: tuple[str, ...] = get_args(GanModuleType)
DISCRIMINATORS: tuple[str, ...] = get_args(Discriminator)
# State-dict prefix of the frozen VGG: its weights come from the local torchvision file, so
# checkpoints leave them out (about 80 MB for VGG19 up to conv5_4).
_PERCEPTUAL_PREFIX = PERCEPTUAL_PREFIX


class GANSRModule(SRModule):
    """ESRGAN recipe (Wang et al., ECCV Workshops 2018): a generator from the registry trained
    against a discriminator with pixel + perceptual + adversarial losses.

    Each ``training_step`` is one BasicSR iteration (``ESRGANModel.optimize_parameters``), with
    manual optimisation:

    1. generator step (when ``iteration % net_d_iters == 0 and iteration > net_d_init_iters``,
       ``iteration`` counting from 1): ``g_loss = pixel_weight * pixel(sr, hr) +
       perceptual(sr, hr) + gan_weight * adversarial(D(sr))``, with the discriminator frozen by
       ``toggle_optimizer`` (its parameters get no gradient);
    2. discriminator step on ``hr`` and the detached ``sr``, with the generator frozen;
    3. both MultiStepLR schedulers step once (milestones therefore count iterations, as BasicSR's
       ``total_iter``), then the EMA of the generator is updated (inherited).

    Step counting: Lightning counts every ``LightningOptimizer.step`` in ``trainer.global_step``
    (two per iteration with two optimisers; Lightning issue #17958), which would halve
    ``max_steps`` and shift every step-based schedule. Here only the discriminator's step, taken
    every iteration, goes through the ``LightningOptimizer``; the generator's step goes through
    ``trainer.strategy.optimizer_step`` (the same precision-plugin path, with the
    ``on_before_optimizer_step`` hooks) so that ``global_step``, ``max_steps``, logging and checkpoint
    intervals all count iterations.

    DDP: the discriminator is a submodule, so DDP wraps and all-reduces it with the generator.
    Each backward reaches only one of the two networks (the other is frozen or detached), so
    plain ``strategy: ddp`` (``find_unused_parameters=False``) stops at the second backward with
    "parameters that were not used in producing the loss" (freezing with ``toggle_optimizer`` is
    what makes them unused). Use ``strategy: ddp_find_unused_parameters_true``, as the recipe
    config does; tests/test_gan_module.py checks two gloo ranks stay in sync with it.

    Precision: under ``bf16-mixed`` the networks run in autocast; every loss is computed in
    float32 (``GANLoss``, ``ragan_*`` and ``PerceptualLoss`` upcast, the pixel loss gets
    ``sr.float()``).

    Args:
        arch: generator, a registry name (``rrdbnet`` for ESRGAN).
        arch_kwargs: generator arguments (BasicSR names); its scale argument comes from ``scale``.
        scale: upscaling factor.
        discriminator: ``vgg_discriminator`` (ESRGAN; 128 or 256 px input, so the HR patch must
            be that size) or ``unet_discriminator`` (Real-ESRGAN; per-pixel logits, any size
            divisible by 8).
        discriminator_kwargs: discriminator arguments (default: ``num_in_ch=3, num_feat=64`` and
            ``input_size=128`` for the VGG one).
        pretrained_d: weights file for the discriminator (BasicSR ``net_d`` ``.pth``, ...).
        loss: pixel loss, ``l1`` (ESRGAN), ``mse`` or ``charbonnier``.
        pixel_weight: weight of the pixel loss (ESRGAN: 1e-2); 0 skips it.
        perceptual_layer_weights: ``{VGG layer: weight}`` (ESRGAN: ``{"conv5_4": 1.0}``, the
            features before the activation).
        perceptual_weight: overall weight of the perceptual loss (1.0); 0 builds no VGG.
        perceptual_criterion: ``l1`` (ESRGAN), ``l2`` or ``fro``.
        vgg_type: VGG variant of the perceptual loss (``vgg19``).
        vgg_weights_path: torchvision's VGG weight file (default: the torch hub cache,
            ``~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth``). Nothing is downloaded.
        perceptual_pretrained: load those VGG weights. ``True`` with no file raises
            ``FileNotFoundError`` (naming the file) here, at construction. ``False`` uses a random
            VGG: for tests only, its "perceptual" loss measures nothing.
        gan_type: ``ragan`` (relativistic average, ESRGAN), ``vanilla``, ``lsgan`` or ``hinge``.
        gan_weight: weight of the generator's adversarial loss (ESRGAN: 5e-3).
        ragan_detach_mean: for ``ragan``, stop the discriminator's gradient through the other
            set's mean logit (BasicSR's ``ESRGANModel``). ``False`` (default) is the full gradient of
            the paper's loss, as in the original ESRGAN code.
        net_d_iters: the generator is updated every ``net_d_iters`` iterations (BasicSR, 1).
        net_d_init_iters: discriminator-only warm-up iterations before the first generator update
            (BasicSR, 0).
        optimizer: ``adam`` or ``adamw`` (both networks).
        lr: generator learning rate (ESRGAN: 1e-4).
        lr_d: discriminator learning rate (``None``: ``lr``).
        betas: Adam betas of both optimisers (BasicSR: (0.9, 0.99)).
        weight_decay: weight decay of both optimisers.
        scheduler: ``multistep``, ``cosine`` or ``none``, for both optimisers, stepped once per
            iteration.
        milestones: MultiStepLR milestones in iterations (ESRGAN: [50k, 100k, 200k, 300k]).
        gamma: MultiStepLR factor (0.5).
        eta_min: cosine floor.
        ema_decay: EMA of the generator (BasicSR's ESRGAN: 0.999); validation uses it.
        pretrained: generator initialisation (ESRGAN starts from the PSNR-oriented RRDB model).
        pretrained_key: ``params`` / ``params_ema`` / ``None`` (EMA when present).
        strict_load: exact key match for ``pretrained`` and ``pretrained_d``.
        channels_last: run both networks channels-last.
        compile: ``torch.compile`` the generator.
        tile: LR tile size for evaluation.
        tile_overlap: LR overlap between tiles.
        export_weights: at the end of ``fit`` write ``weights.pth`` (generator, BasicSR format,
            with ``params_ema``) and ``weights_d.pth`` (discriminator) into the log dir.
    """

    def __init__(
        self,
        arch: str = "rrdbnet",
        arch_kwargs: dict[str, Any] | None = None,
        scale: int = 4,
        discriminator: Discriminator = "vgg_discriminator",
        discriminator_kwargs: dict[str, Any] | None = None,
        pretrained_d: str | None = None,
        loss: PixelLoss = "l1",
        pixel_weight: float = 1e-2,
        perceptual_layer_weights: dict[str, float] | None = None,
        perceptual_weight: float = 1.0,
        perceptual_criterion: Criterion = "l1",
        vgg_type: VggType = "vgg19",
        vgg_weights_path: str | None = None,
        perceptual_pretrained: bool = True,
        gan_type: GanModuleType = "ragan",
        gan_weight: float = 5e-3,
        ragan_detach_mean: bool = False,
        net_d_iters: int = 1,
        net_d_init_iters: int = 0,
        optimizer: OptimizerName = "adam",
        lr: float = 1e-4,
        lr_d: float | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        scheduler: SchedulerName = "multistep",
        milestones: list[int] | None = None,
        gamma: float = 0.5,
        eta_min: float = 1e-7,
        ema_decay: float | None = 0.999,
        pretrained: str | None = None,
        pretrained_key: str | None = None,
        strict_load: bool = True,
        channels_last: bool = False,
        compile: bool = False,
        tile: int | None = None,
        tile_overlap: int = 16,
        export_weights: bool = True,
    ):
        _validate_gan_options(discriminator, gan_type, pixel_weight, perceptual_weight, gan_weight, net_d_iters,
                              net_d_init_iters, lr, lr_d)
        if milestones is None:
            milestones = [50_000, 100_000, 200_000, 300_000]
        super().__init__(
            arch=arch, arch_kwargs=arch_kwargs, scale=scale, loss=loss, optimizer=optimizer, lr=lr, betas=betas,
            weight_decay=weight_decay, scheduler=scheduler, milestones=milestones, gamma=gamma, eta_min=eta_min,
            ema_decay=ema_decay, pretrained=pretrained, pretrained_key=pretrained_key, strict_load=strict_load,
            channels_last=channels_last, compile=compile, tile=tile, tile_overlap=tile_overlap,
            export_weights=export_weights,
        )
        if perceptual_layer_weights is None:
            perceptual_layer_weights = {"conv5_4": 1.0}
        # Recorded again so that the GAN-specific arguments (and the filled defaults) are hparams.
        self.save_hyperparameters()
        self.automatic_optimization = False

        self.net_d = build_arch(discriminator, **dict(discriminator_kwargs or {}))
        if pretrained_d:
            load_weights(self.net_d, pretrained_d, strict=strict_load)
        if channels_last:
            self.net_d = self.net_d.to(memory_format=torch.channels_last)
        # Built only when used: with perceptual_weight 0 no VGG file is needed at all.
        self.perceptual_loss = (
            PerceptualLoss(perceptual_layer_weights, vgg_type=vgg_type, perceptual_weight=perceptual_weight,
                           criterion=perceptual_criterion, weights_path=vgg_weights_path,
                           pretrained=perceptual_pretrained)
            if perceptual_weight > 0 else None
        )
        self.gan_loss = GANLoss(gan_type) if gan_type != "ragan" else None

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        """Two optimisers (generator, discriminator), each with its per-iteration scheduler."""
        hp = self.hparams
        lr_d = hp.lr if hp.lr_d is None else hp.lr_d
        configs = []
        for name, params, lr in (("g", self.net.parameters(), hp.lr), ("d", self.net_d.parameters(), lr_d)):
            opt = self._make_optimizer(params, lr)
            config: dict[str, Any] = {"optimizer": opt}
            sched = self._make_scheduler(opt)
            if sched is not None:
                config["lr_scheduler"] = {"scheduler": sched, "interval": "step", "name": f"lr_{name}"}
            configs.append(config)
        return configs

    def _make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        hp = self.hparams
        opt_cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        return opt_cls(params, lr=lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)

    # ------------------------------------------------------------------ training
    def generator_updates(self, iteration: int) -> bool:
        """Whether the generator is updated at ``iteration`` (1-based, BasicSR's rule)."""
        hp = self.hparams
        return iteration % hp.net_d_iters == 0 and iteration > hp.net_d_init_iters

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """Discriminator logits of images ``x`` (channels-last when enabled)."""
        return self.net_d(self._prepare_input(x))

    def generator_losses(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted generator losses: ``g_pix``, ``g_percep``, ``g_gan`` and their sum ``g_loss``.

        The discriminator must be frozen by the caller (its parameters get no gradient here).
        """
        hp = self.hparams
        zero = sr.new_zeros((), dtype=torch.float32)
        g_pix = hp.pixel_weight * self.pixel_loss(sr.float(), hr.float()) if hp.pixel_weight > 0 else zero
        g_percep = self.perceptual_loss(sr, hr) if self.perceptual_loss is not None else zero
        g_gan = zero
        if hp.gan_weight > 0:
            fake_pred = self.discriminate(sr)
            if hp.gan_type == "ragan":
                with torch.no_grad():
                    real_pred = self.discriminate(hr)
                g_gan = hp.gan_weight * ragan_g_loss(real_pred, fake_pred)
            else:
                g_gan = hp.gan_weight * self.gan_loss(fake_pred, True, is_disc=False)
        return {"g_loss": g_pix + g_percep + g_gan, "g_pix": g_pix, "g_percep": g_percep, "g_gan": g_gan}

    def discriminator_losses(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """``d_loss`` on real ``hr`` and fake ``sr`` (detached here), and the mean logits
        ``d_real`` / ``d_fake`` (BasicSR's ``out_d_real`` / ``out_d_fake``).

        ``ragan`` averages its two terms (ESRGAN Eq. 2); ``vanilla`` / ``lsgan`` / ``hinge`` add them
        (BasicSR's ``SRGANModel``).
        """
        real_pred = self.discriminate(hr)
        fake_pred = self.discriminate(sr.detach())
        if self.hparams.gan_type == "ragan":
            d_loss = ragan_d_loss(real_pred, fake_pred, detach_mean=self.hparams.ragan_detach_mean)
        else:
            d_loss = self.gan_loss(real_pred, True, is_disc=True) + self.gan_loss(fake_pred, False, is_disc=True)
        return {"d_loss": d_loss, "d_real": real_pred.detach().float().mean(),
                "d_fake": fake_pred.detach().float().mean()}

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """One discriminator step (and a generator step when due); returns this step's detached losses
        and statistics (``train/<name>``), which ``lit_sr.training.stop_on_nonfinite.StopOnNonFiniteLoss``
        checks every step; they are logged only on the logger's steps (:func:`step_logs_due`)."""
        opt_g, opt_d = self.optimizers()
        lr_img, hr = batch["lr"], batch["hr"]
        # global_step counts discriminator steps, one per iteration (see the class docstring).
        update_g = self.generator_updates(self.global_step + 1)
        logs: dict[str, torch.Tensor] = {}

        if update_g:
            self.toggle_optimizer(opt_g)
            sr = self(lr_img)
            g_losses = self.generator_losses(sr, hr)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_losses["g_loss"])
            # Not opt_g.step(): that would count as a second global step (class docstring).
            self.trainer.strategy.optimizer_step(opt_g.optimizer, closure=_no_closure)
            self.untoggle_optimizer(opt_g)
            logs.update({k: v.detach() for k, v in g_losses.items()})
        else:
            with torch.no_grad():
                sr = self(lr_img)

        self.toggle_optimizer(opt_d)
        d_losses = self.discriminator_losses(sr.detach(), hr)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_losses["d_loss"])
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        logs.update({k: v.detach() for k, v in d_losses.items()})

        self._step_schedulers(generator_stepped=update_g)
        n = lr_img.shape[0]
        if step_logs_due(self):  # the logger's points only: a log call costs more than a tiny step
            for name, value in logs.items():
                self.log(f"train/{name}", value, prog_bar=name in ("g_loss", "d_loss"), batch_size=n)
        return {f"train/{name}": value for name, value in logs.items()}

    def _step_schedulers(self, generator_stepped: bool) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        if not isinstance(schedulers, list):
            schedulers = [schedulers]
        with warnings.catch_warnings():
            if not generator_stepped:
                # Intended: schedules count iterations (BasicSR), including discriminator-only ones.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for sched in schedulers:
                sched.step()

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen VGG out of checkpoints; its weights come from ``vgg_weights_path``."""
        drop_frozen_perceptual(checkpoint, _PERCEPTUAL_PREFIX)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put this module's VGG weights back so that strict loading of a checkpoint succeeds."""
        restore_frozen_perceptual(checkpoint, self.perceptual_loss, _PERCEPTUAL_PREFIX)

    def export_discriminator(self, path: str | Path) -> Path:
        """Write the discriminator as BasicSR ``{'params'}`` (``.pth``) or ``.safetensors``."""
        return save_weights(self.net_d, path)

    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self.hparams.export_weights and self.trainer.is_global_zero and self.trainer.log_dir:
            self.export_discriminator(Path(self.trainer.log_dir) / "weights_d.pth")


def _no_closure() -> None:
    """The backward already ran (``manual_backward``); the optimiser step needs no closure."""
    return None


def _validate_gan_options(
    discriminator: str, gan_type: str, pixel_weight: float, perceptual_weight: float, gan_weight: float,
    net_d_iters: int, net_d_init_iters: int, lr: float, lr_d: float | None,
) -> None:
    check_choice(discriminator, "discriminator", DISCRIMINATORS)
    check_choice(gan_type, "gan_type", GAN_TYPES)
    for name, value in (("pixel_weight", pixel_weight), ("perceptual_weight", perceptual_weight),
                        ("gan_weight", gan_weight)):
        check_number(value, name, low=0)
    check_int(net_d_iters, "net_d_iters", 1)
    check_int(net_d_init_iters, "net_d_init_iters", 0)
    check_positive(lr, "lr")
    if lr_d is not None:
        check_positive(lr_d, "lr_d")


__all__ = ["DISCRIMINATORS", "GAN_TYPES", "GANSRModule"]
