"""I-BAU-style adversarial unlearning (after Zeng et al., ICLR 2022), for SR networks.

I-BAU poses unlearning as a min-max problem: the inner maximisation finds a universal
perturbation that changes the network's behaviour most (a stand-in for the unknown trigger), the
outer minimisation updates the network so that the perturbed clean inputs are mapped correctly.
I-BAU solves the outer problem with an implicit hypergradient; here the two are **alternated**
(a choice of ours, the form most adversarial-unlearning baselines take): for each of ``rounds``
rounds,

1. **maximise**: a universal perturbation ``delta`` (L_inf ``eps``, one for all images) that
   maximises the output change ``sum ||f(x + delta) - f(x)||^2`` over the clean LR patches: the
   project's :class:`lit_sr.attacks.universal.UniversalAttack` with ``reference="clean"`` (Choi et
   al.'s Eq. 6 against the clean outputs, a random start, ``attack_steps`` sign steps), on the
   current network;
2. **unlearn**: ``steps_per_round`` Adam steps of
   ``(1 - adv_weight) * L(f(x), y) + adv_weight * L(f(x + delta), y)`` on the clean pairs: the
   perturbed input must give the clean HR, the clean input keeps giving it.

The trigger is never used; ``eps`` bounds how large a trigger the search can imitate (the demo's
Blend trigger moves LR pixels by up to 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lit_sr.attacks.universal import UniversalAttack
from lit_sr.backdoor_defenses.base import FinetuneSettings, RepairDefense, finetune, pixel_loss
from lit_sr.backdoor_defenses.data import CleanSubset
from lit_sr.validation import check_eps, check_fraction, check_int


@dataclass
class UnlearningConfig(FinetuneSettings):
    """Adversarial unlearning's settings: the fine-tuning of :class:`FinetuneSettings` (``steps`` is
    the total, split into ``rounds`` equal parts) plus

    Args:
        rounds: maximise/unlearn rounds (``steps`` must be a multiple of it).
        eps: L_inf budget of the universal perturbation, on the [0, 1] scale.
        attack_steps: sign steps of each perturbation search.
        adv_weight: weight of the perturbed term, in [0, 1] (the clean term gets the rest).
        attack_batch_size: patches per forward pass of the search.
    """

    steps: int = field(default=200)
    rounds: int = 5
    eps: float = 0.1
    attack_steps: int = 10
    adv_weight: float = 0.5
    attack_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rounds = check_int(self.rounds, "rounds", 1)
        if self.steps % self.rounds:
            raise ValueError(f"steps ({self.steps}) must be a multiple of rounds ({self.rounds})")
        self.eps = check_eps(self.eps, "eps")
        self.attack_steps = check_int(self.attack_steps, "attack_steps", 1)
        self.adv_weight = check_fraction(self.adv_weight, "adv_weight")
        self.attack_batch_size = check_int(self.attack_batch_size, "attack_batch_size", 1)


class AdversarialUnlearning(RepairDefense):
    """Alternate a universal output-changing perturbation with updates that undo it (module docstring)."""

    name = "ibau"
    config_class = UnlearningConfig

    def _repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        cfg: UnlearningConfig = self.config
        per_round = cfg.steps // cfg.rounds
        crop = min(clean.lr.shape[-2:])
        state: dict[str, UniversalAttack | None] = {"attack": None}
        gains: list[float] = []
        loss_fn = pixel_loss(cfg.loss)

        def refresh(net: nn.Module, step: int) -> None:
            if step % per_round:
                return
            atk = UniversalAttack(net, eps=cfg.eps, steps=cfg.attack_steps, crop_size=crop, reference="clean",
                                  random_start=True, batch_size=cfg.attack_batch_size, progress=False,
                                  loss="sse", autocast=cfg.autocast, seed=cfg.seed + step // per_round)
            atk.fit(clean.lr)
            gains.append(atk.history[-1] if atk.history else float("nan"))
            state["attack"] = atk

        def batch_loss(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, step: int) -> torch.Tensor:
            adv = state["attack"].forward(lr).detach()  # the bare forward: leaves net in train mode
            clean_term = loss_fn(net(lr).float(), hr) if cfg.adv_weight < 1 else 0.0
            adv_term = loss_fn(net(adv).float(), hr) if cfg.adv_weight > 0 else 0.0
            return (1 - cfg.adv_weight) * clean_term + cfg.adv_weight * adv_term

        losses = finetune(model, clean, cfg, batch_loss=batch_loss, before_step=refresh, desc="unlearning")
        self.info = {"output_change_per_round": gains, "final_loss": losses[-1] if losses else None,
                     "perturbation_linf": float(state["attack"].perturbation.abs().max()) if state["attack"] else None}
        return model
