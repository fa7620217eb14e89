"""Stop training at the first non-finite loss, with a message, so a diverged run never looks finished."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped and exported nothing."""


class StopOnNonFiniteLoss(L.Callback):
    """Raises :class:`NonFiniteLossError` after the first training step whose loss is NaN or infinite.

    Without it ``--model.init_args.lr 1e9`` trained to the end with a NaN loss, wrote NaN weights
    as ``weights.pth`` and reported nothing (issue 24). Lightning's own switch,
    ``EarlyStopping(check_finite=True)``, looks only at a monitored metric at epoch or validation
    ends, and stops quietly; this looks after every step and fails the run (non-zero exit), so no
    ``on_fit_end`` export runs. The weights export refuses NaN weights too
    (:func:`lit_sr.io.save_weights`), whatever stopped the run.

    The loss is the one ``training_step`` returns: a tensor, a mapping's ``loss``, or else every
    tensor of the returned mapping whose name holds ``loss`` (the GAN and RefSR modules, with manual
    optimisation, return theirs: ``train/g_loss``, ``train/d_loss``, ...). A module that returns
    none has its logged ``train/*loss*`` values read instead (those of the last step it logged:
    Lightning updates them after this hook). Under DDP the ranks agree (one all-reduce of a
    flag), so every rank stops at the same step.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        losses = _losses(outputs, trainer)
        bad = {name: value for name, value in losses.items() if not _finite(value)}
        if trainer.strategy.reduce_boolean_decision(not bad, all=True):
            return
        where = (", ".join(f"{name} = {value.float().mean().item()}" for name, value in bad.items())
                 if bad else "the loss of another rank")
        lr = getattr(pl_module, "hparams", {}).get("lr")
        hint = f" (model.init_args.lr is {lr:g})" if isinstance(lr, float) else ""
        raise NonFiniteLossError(
            f"training stopped at step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx}): "
            f"{where} is not finite. The run diverged{hint}: lower the learning rate or clip gradients "
            "(--trainer.gradient_clip_val 1.0). No weights were exported.")


def _finite(value: torch.Tensor) -> bool:
    """Whether every element of ``value`` is finite; a one-element loss through ``item`` (a step's usual case)."""
    if value.numel() == 1:  # one .item() costs ~0.5 us on a CPU tensor, isfinite + all + bool ~10 us
        return math.isfinite(value.item())
    return bool(torch.isfinite(value).all())


def _losses(outputs: Any, trainer: L.Trainer) -> dict[str, torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return {"loss": outputs.detach()}
    if isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), torch.Tensor):
        return {"loss": outputs["loss"].detach()}
    if isinstance(outputs, Mapping):  # manual optimisation: the losses the step returned (GAN, RefSR)
        losses = {name: value.detach() for name, value in outputs.items()
                  if "loss" in name and isinstance(value, torch.Tensor)}
        if losses:
            return losses
    return {name: value.detach() for name, value in trainer.callback_metrics.items()
            if name.startswith("train/") and "loss" in name and isinstance(value, torch.Tensor)}
