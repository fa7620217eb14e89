"""What every repair defense shares: its fine-tuning settings, the training loop, the defense object,
and :func:`run_defense`, which measures a repair before and after.

**Why a plain PyTorch loop, not Lightning.** docs/design.md keeps Lightning out of the library's attack and
poison code ("no Lightning inside"); a repair is a few hundred optimiser steps on a few clean
patches held in memory, with per-step hooks (a pruning mask re-applied, an attention-distillation
term, an unlearning perturbation refreshed) that a Trainer would only hide. It runs on the model's
device with the one ``autocast`` argument, and is deterministic with its ``seed``: the batches,
their flips and rotations and every random start come from generators seeded by it. A repair runs
in one process: it holds a few clean patches and communicates with no other rank (under DDP, run it
on rank 0 and broadcast the weights, or give each rank the same seed and data).

**The contract** (tested for every defense): ``defense.repair(model, clean)`` gets the
backdoored network and a :class:`~lit_sr.backdoor_defenses.data.CleanSubset`, and nothing about
the trigger, the target or the poisoned pairs; it returns a **new** network (a deep copy, repaired)
and leaves the input exactly as it was (weights, mode, ``requires_grad``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.backdoor_defenses.data import BackdoorEvalSet, CleanSubset, evaluate_backdoor
from lit_sr.data.augment import augment_batch
from lit_sr.runtime import AUTOCAST_CHOICES, Autocast, autocast_context, model_device
from lit_sr.validation import check_bool, check_choice, check_int, check_module, check_positive

PixelLossName = Literal["l1", "l2"]
PIXEL_LOSSES: tuple[str, ...] = get_args(PixelLossName)


@dataclass
class FinetuneSettings:
    """The fine-tuning part every repair shares (validated on construction).

    Args:
        steps: optimiser steps on the clean subset.
        lr: Adam learning rate (constant).
        batch_size: pairs per step, drawn with replacement from the clean subset (it may hold fewer).
        loss: pixel loss, ``"l1"`` (EDSR's) or ``"l2"``.
        augment: random flips and transposes of every batch (BasicSR's augmentation).
        seed: seeds the batches, the augmentation and any random start: same seed, same model.
        autocast: ``"none"`` (float32) or ``"bf16"``.
        progress: a tqdm bar over the steps.
    """

    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 16
    loss: PixelLossName = "l1"
    augment: bool = True
    seed: int = 0
    autocast: Autocast = "none"
    progress: bool = False

    def __post_init__(self) -> None:
        self.steps = check_int(self.steps, "steps", 0)
        self.lr = check_positive(self.lr, "lr")
        self.batch_size = check_int(self.batch_size, "batch_size", 1)
        self.loss = check_choice(self.loss, "loss", PIXEL_LOSSES)
        self.augment = check_bool(self.augment, "augment")
        self.seed = check_int(self.seed, "seed", 0)
        self.autocast = check_choice(self.autocast, "autocast", AUTOCAST_CHOICES)
        self.progress = check_bool(self.progress, "progress")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pixel_loss(name: PixelLossName) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return nn.functional.l1_loss if name == "l1" else nn.functional.mse_loss


def draw_batch(clean: CleanSubset, settings: FinetuneSettings, gen: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` clean pairs drawn with replacement by ``gen``, flipped/transposed when ``augment``."""
    idx = torch.randint(len(clean), (settings.batch_size,), generator=gen)
    lr, hr = clean.lr[idx], clean.hr[idx]
    if settings.augment:
        lr, hr = augment_batch(lr, hr, rot=lr.shape[-1] == lr.shape[-2], generator=gen)
    return lr.to(device), hr.to(device)


BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def finetune(
    model: nn.Module,
    clean: CleanSubset,
    settings: FinetuneSettings,
    batch_loss: BatchLoss | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    before_step: Callable[[nn.Module, int], None] | None = None,
    desc: str = "fine-tune",
) -> list[float]:
    """Train ``model`` in place on ``clean`` for ``settings.steps`` Adam steps; return the losses.

    Each step draws ``batch_size`` pairs with replacement (a seeded generator), flips/transposes
    them when ``augment``, and minimises ``batch_loss(model, lr, hr, step)``, by default the pixel
    loss ``pixel(model(lr), hr)`` (NAD adds its attention term, unlearning its perturbed inputs).
    ``before_step(model, step)`` runs before each step (a perturbation refreshed) and
    ``after_step(model)`` after each optimiser step, under ``no_grad`` (a pruning mask re-applied).
    """
    device = model_device(model, torch.device("cpu"))
    gen = torch.Generator().manual_seed(settings.seed)
    loss_fn = pixel_loss(settings.loss)
    if batch_loss is None:
        def batch_loss(net: nn.Module, lr: torch.Tensor, hr: torch.Tensor, step: int) -> torch.Tensor:
            return loss_fn(net(lr).float(), hr)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to fine-tune")
    opt = torch.optim.Adam(params, lr=settings.lr)
    model.train()
    history: list[float] = []
    for step in tqdm(range(settings.steps), desc=desc, disable=not settings.progress, leave=False):
        if before_step is not None:
            before_step(model, step)
            model.train()
        lr, hr = draw_batch(clean, settings, gen, device)
        with autocast_context(settings.autocast, device):
            loss = batch_loss(model, lr, hr, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            with torch.no_grad():
                after_step(model)
        history.append(float(loss.detach()))
    model.eval()
    return history


def trainable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parameter trainable (the input is not touched)."""
    check_module(model, "model", "the backdoored SR network")
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin


class RepairDefense:
    """Base of the repair defenses: ``defense.repair(model, clean) -> new model``.

    Subclasses set ``name`` (their key in configs and in :data:`lit_sr.backdoor_defenses.REPAIRS`), ``config_class`` (a dataclass with validated
    fields) and implement :meth:`_repair` on a trainable deep copy. After :meth:`repair`,
    :attr:`info` holds what the repair decided (pruned channels, losses), plain values for JSON.

    Args:
        config: the defense's config object; or its fields as keyword arguments.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = FinetuneSettings

    def __init__(self, config: Any = None, **kwargs: Any):
        if config is not None and kwargs:
            raise TypeError(f"{type(self).__name__}: pass a config object or keyword arguments, not both")
        if config is None:
            config = self.config_class(**kwargs)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.info: dict[str, Any] = {}

    def repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        """The repaired network: a new module; ``model`` is left exactly as it was."""
        if not isinstance(clean, CleanSubset):
            raise TypeError(f"clean must be a CleanSubset, got {type(clean).__name__}")
        twin = trainable_copy(model)
        self.info = {}
        return self._repair(twin, clean).eval()

    def _repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


@dataclass
class DefenseOutcome:
    """One repair, measured.

    Attributes:
        model: the repaired network.
        before, after: :func:`~lit_sr.backdoor_defenses.data.evaluate_backdoor` of the input and the
            repaired network on the evaluator's data.
        seconds: wall time of the repair alone (not of the two evaluations).
        clean: what the repair was given (:meth:`CleanSubset.describe`).
        config: the defense's settings.
        info: what the repair decided (:attr:`RepairDefense.info`).
    """

    model: nn.Module
    before: dict[str, Any]
    after: dict[str, Any]
    seconds: float
    clean: dict[str, Any]
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """Everything but the model, as plain values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}


def run_defense(
    defense: RepairDefense,
    model: nn.Module,
    clean: CleanSubset,
    evaluation: BackdoorEvalSet,
    batch_size: int = 16,
    before: dict[str, Any] | None = None,
) -> DefenseOutcome:
    """Measure ``model`` on ``evaluation``, repair it with ``clean`` only, measure the repaired copy.

    ``before`` may pass a measurement of ``model`` already made (the report measures each attack
    once for all its defenses).
    """
    autocast = getattr(defense.config, "autocast", "none")
    if before is None:
        before = evaluate_backdoor(model, evaluation, batch_size, autocast)
    start = time.perf_counter()
    repaired = defense.repair(model, clean)
    seconds = time.perf_counter() - start
    after = evaluate_backdoor(repaired, evaluation, batch_size, autocast)
    return DefenseOutcome(repaired, before, after, seconds, clean.describe(), asdict(defense.config),
                          dict(defense.info))
