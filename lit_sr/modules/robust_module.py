"""RobustFinetuneModule: adversarial fine-tuning of an SR network on its own LR-input attacks.

Each training step crafts adversarial LR inputs with an attack of the registry
(:mod:`lit_sr.attacks.registry`: PGD / I-FGSM, the one-step "fast" FGSM with a random start of
Wong et al., "Fast is better than free", ICLR 2020, or any other plain attack) on a fraction of the batch, and trains on them together with the clean
inputs::

    loss = clean_weight * L(f(x), y)                      # all images of the batch
         + adv_weight * L(f(x_adv), y)                    # the attacked fraction
         + consistency_weight * |f(x_adv) - f(x)|_1       # TRADES-style, optional

The attack runs on ``self.net`` (the bare network, not the DDP wrapper) and differentiates only
the input, with the parameters frozen and the network in eval mode for its duration; the attack
base restores both, so no ``.grad`` is left on the model and DDP's gradient hooks never fire for
the attack's backward passes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch

from lit_sr.attacks import Attack
from lit_sr.attacks.registry import ATTACKS, plain_kinds
from lit_sr.attacks.spec import init_params
from lit_sr.io import load_weights
from lit_sr.modules.sr_module import SRModule
from lit_sr.modules.step_logs import step_logs_due
from lit_sr.runtime import Autocast
from lit_sr.validation import (
    check_bool,
    check_choice,
    check_eps,
    check_fraction,
    check_int,
    check_number,
    check_positive,
)

Reference = Literal["clean", "hr"]


class RobustFinetuneModule(SRModule):
    """Adversarial (robust) fine-tuning of any SR network of the registry.

    Every :class:`~lit_sr.modules.SRModule` argument is accepted (``arch``, ``arch_kwargs``,
    ``scale``, ``loss``, ``lr``, ``scheduler``, ``ema_decay``, ...) and means the same; validation,
    test, predict and the ``weights.pth`` export are SRModule's.

    Args:
        weights: the checkpoint to fine-tune (BasicSR ``.pth``, Lightning ``.ckpt``,
            ``.safetensors``), read with :func:`lit_sr.io.load_weights`. Loaded once at
            construction; a resumed run (``--ckpt_path``) then overwrites it with the checkpoint's
            state, so resuming does not restart from the base weights.
        weights_key: ``params`` / ``params_ema`` / ``None`` (EMA when present).
        attack: a plain attack of the registry (:func:`lit_sr.attacks.registry.plain_kinds`):
            ``"pgd"`` (random start, steps of ``2.5 * eps / steps``), ``"ifgsm"`` (Choi et al.'s
            I-FGSM, ``eps / steps``), ``"fast"`` (:class:`~lit_sr.attacks.FastFGSM`: one FGSM step
            of ``fast_step_factor * eps`` from a uniform random start: the attack's cost is one
            forward/backward), ``"square"`` or any attack registered since. ``steps``,
            ``step_size``, ``random_start``, ``reference`` and ``fast_step_factor`` (as
            ``step_factor``) go to the attack's constructor where it takes them; ``attack_kwargs``
            gives it anything else.
        eps: the L_inf budget on the [0, 1] scale once the ramp is over (8/255 = 0.0314).
        steps: attack iterations for ``pgd`` / ``ifgsm`` (``fast`` takes one step).
        step_size: ``None`` for the attack's default (see ``attack``).
        random_start: uniform start in [-eps, eps] for the attacks that take it (``pgd``,
            ``ifgsm``); ``fast`` always starts randomly.
        reference: what the attack pushes the output away from: ``"hr"`` (the training target:
            Madry-style inner maximisation of the pixel loss) or ``"clean"`` (the clean output
            f(x), the paper's Eq. 1; needs a random start).
        attack_fraction: fraction of each batch that is attacked, in (0, 1]; the first
            ``ceil(fraction * n)`` images of the (shuffled) batch.
        eps_ramp_epochs: eps rises linearly from ``eps / ramp_steps`` to ``eps`` over this many
            epochs (0: full eps from the first step). The schedule is a function of
            ``trainer.global_step`` only, so a resumed run continues it where it stopped.
        clean_weight: weight of the pixel loss on the clean inputs.
        adv_weight: weight of the pixel loss on the adversarial inputs.
        consistency_weight: weight of ``mean |f(x_adv) - f(x)|`` (TRADES-style; 0 disables it).
            Gradients flow through both outputs, as in TRADES.
        fast_step_factor: step of the ``fast`` attack in units of eps (Wong et al. use 1.25).
        attack_autocast: ``None`` follows the trainer's precision (bf16 autocast under
            ``bf16-mixed`` / ``bf16-true``), else ``"none"`` or ``"bf16"``.
        attack_kwargs: further constructor arguments of the attack class (e.g. ``{loss: l2}``,
            ``{n_queries: 100}`` for ``square``); checked against its signature at construction.
        attack_seed: seed of the attack's random starts; the seed of each step is
            ``attack_seed + global_step * world_size + global_rank`` (reproducible, different per
            step and rank). ``None`` uses the global RNG.
        **kwargs: SRModule's arguments.
    """

    def __init__(
        self,
        weights: str | None = None,
        weights_key: str | None = None,
        attack: str = "pgd",
        eps: float = 8 / 255,
        steps: int = 3,
        step_size: float | None = None,
        random_start: bool = True,
        reference: Reference = "hr",
        attack_fraction: float = 1.0,
        eps_ramp_epochs: float = 0.0,
        clean_weight: float = 1.0,
        adv_weight: float = 1.0,
        consistency_weight: float = 0.0,
        fast_step_factor: float = 1.25,
        attack_autocast: Autocast | None = None,
        attack_kwargs: dict[str, Any] | None = None,
        attack_seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.attack_kind = check_choice(attack, "attack", plain_kinds())
        self.max_eps = check_eps(eps)
        self.steps = check_int(steps, "steps", 1)
        self.step_size = None if step_size is None else check_positive(step_size, "step_size")
        self.random_start = check_bool(random_start, "random_start")
        self.reference = check_choice(reference, "reference", ("clean", "hr"))
        self.attack_fraction = check_fraction(attack_fraction, "attack_fraction", allow_zero=False)
        self.eps_ramp_epochs = check_number(eps_ramp_epochs, "eps_ramp_epochs", low=0.0)
        self.clean_weight = check_number(clean_weight, "clean_weight", low=0.0)
        self.adv_weight = check_number(adv_weight, "adv_weight", low=0.0)
        self.consistency_weight = check_number(consistency_weight, "consistency_weight", low=0.0)
        if self.clean_weight + self.adv_weight + self.consistency_weight == 0:
            raise ValueError("clean_weight, adv_weight and consistency_weight are all 0: nothing to train")
        self.fast_step_factor = check_positive(fast_step_factor, "fast_step_factor")
        if attack_autocast is not None:
            check_choice(attack_autocast, "attack_autocast", ("none", "bf16"))
        self.attack_autocast = attack_autocast
        if attack_seed is not None:
            check_int(attack_seed, "attack_seed", 0)
        self.attack_seed = attack_seed
        self.attack_kwargs = self._check_attack_kwargs(attack_kwargs)
        if weights:
            if kwargs.get("pretrained"):
                raise ValueError("give either weights or pretrained, not both (they load the same network)")
            load_weights(self.net, weights, key=weights_key, strict=kwargs.get("strict_load", True))
            if self.net_ema is not None:
                self.net_ema.load_state_dict(self.net.state_dict())

    # ------------------------------------------------------------------ the eps schedule
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one training epoch (batches / gradient accumulation, at least 1)."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not math.isfinite(batches):  # an iterable data set of unknown length: ramp in batches
            raise ValueError("eps_ramp_epochs needs a training loader with a length (num_training_batches is inf)")
        return max(1, math.ceil(batches / max(1, trainer.accumulate_grad_batches)))

    def eps_at(self, global_step: int, steps_per_epoch: int) -> float:
        """eps of the step ``global_step`` (0-based): linear ramp over ``eps_ramp_epochs``, then ``eps``."""
        ramp = self.eps_ramp_epochs * steps_per_epoch
        if ramp <= 0:
            return self.max_eps
        return self.max_eps * min(1.0, (global_step + 1) / ramp)

    def current_eps(self) -> float:
        """eps of the current training step, from ``trainer.global_step``."""
        if self.eps_ramp_epochs == 0 or self._trainer is None:
            return self.max_eps
        return self.eps_at(self.trainer.global_step, self.steps_per_epoch())

    # ------------------------------------------------------------------ the attack
    def _autocast(self) -> Autocast:
        if self.attack_autocast is not None:
            return self.attack_autocast
        precision = str(self._trainer.precision) if self._trainer is not None else "32-true"
        return "bf16" if "bf16" in precision else "none"

    def _seed(self) -> int | None:
        if self.attack_seed is None:
            return None
        if self._trainer is None:
            return self.attack_seed
        return self.attack_seed + self.trainer.global_step * self.trainer.world_size + self.trainer.global_rank

    def _check_attack_kwargs(self, attack_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """``attack_kwargs`` checked against the attack's signature, and the attack built once on a dummy model."""
        cls = ATTACKS[self.attack_kind]
        kwargs = dict(attack_kwargs or {})
        taken = {"eps", "seed", "autocast", *self._hyper_parameters()}
        unknown = sorted(set(kwargs) - set(init_params(cls)) | set(kwargs) & taken)
        if unknown:
            raise ValueError(f"attack_kwargs: {unknown} are not constructor arguments of {cls.__name__} left to set "
                             f"here; expected some of {sorted(set(init_params(cls)) - taken)}")
        self._build(torch.nn.Identity(), self.max_eps, kwargs)
        return kwargs

    def _hyper_parameters(self) -> dict[str, Any]:
        """The module's attack arguments that the attack class takes (by its constructor's names)."""
        ours = {"steps": self.steps, "step_size": self.step_size, "random_start": self.random_start,
                "reference": self.reference, "step_factor": self.fast_step_factor}
        return {k: v for k, v in ours.items() if k in init_params(ATTACKS[self.attack_kind])}

    def _build(self, model: torch.nn.Module, eps: float, extra: dict[str, Any]) -> Attack:
        return ATTACKS[self.attack_kind](model, eps=eps, autocast=self._autocast(), seed=self._seed(),
                                         **self._hyper_parameters(), **extra)

    def build_attack(self, eps: float) -> Attack:
        """The attack object of this step, on ``self.net`` (the bare network)."""
        return self._build(self.net, eps, self.attack_kwargs)

    def craft(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Adversarial versions of ``lr`` (against ``hr``) and the seconds the attack took."""
        if lr.device.type == "cuda":
            torch.cuda.synchronize(lr.device)
        start = time.perf_counter()
        adv = self.build_attack(self.current_eps())(lr, hr=hr)
        if lr.device.type == "cuda":
            torch.cuda.synchronize(lr.device)
        return adv.to(lr.dtype), time.perf_counter() - start

    def attacked_count(self, n: int) -> int:
        """How many images of a batch of ``n`` are attacked."""
        return min(n, max(1, math.ceil(self.attack_fraction * n)))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        lr, hr = batch["lr"], batch["hr"]
        n = lr.shape[0]
        k = self.attacked_count(n)
        lr_adv, attack_seconds = self.craft(lr[:k], hr[:k])
        # One forward over clean and adversarial inputs together: one pass, one set of DDP hooks.
        sr = self(torch.cat([lr, lr_adv])).float()
        sr_clean, sr_adv = sr[:n], sr[n:]
        clean_loss = self.pixel_loss(sr_clean, hr)
        adv_loss = self.pixel_loss(sr_adv, hr[:k])
        loss = self.clean_weight * clean_loss + self.adv_weight * adv_loss
        log = {"sync_dist": True, "batch_size": n, "on_step": True, "on_epoch": True}
        if self.consistency_weight > 0:
            consistency = (sr_adv - sr_clean[:k]).abs().mean()
            loss = loss + self.consistency_weight * consistency
            self.log("train/consistency", consistency, **log)
        if step_logs_due(self):  # step-only: the logger's points suffice (and spare an all-reduce under DDP)
            self.log("train/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("train/loss_clean", clean_loss, **log)
        self.log("train/loss_robust", adv_loss, **log)
        self.log("train/attack_eps", self.current_eps(), **log)
        self.log("train/attack_seconds", attack_seconds, **log)
        return {"loss": loss, "lr_adv": lr_adv.detach(), "lr_attacked": lr[:k].detach()}
