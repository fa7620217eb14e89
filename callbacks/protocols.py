"""What the callbacks need from a data module and from an SR LightningModule, declared once.

Callbacks check these with ``isinstance`` (the protocols are ``runtime_checkable``) and raise a
named error when a piece is missing, instead of probing with ``hasattr``/``getattr`` lists. A data
module or LightningModule of your own works with the callbacks as soon as it has these members;
it need not inherit from anything.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SRModel(Protocol):
    """An SR LightningModule as the callbacks see it (``lit_sr.modules.SRModule`` is one)."""

    scale: int
    net: nn.Module

    @property
    def eval_net(self) -> nn.Module:
        """The network evaluation runs (the EMA copy when there is one)."""
        ...

    def super_resolve(self, lr: torch.Tensor) -> torch.Tensor:
        """Evaluation forward: ``(N, 3, h, w)`` in [0, 1] to ``(N, 3, h*scale, w*scale)`` in [0, 1]."""
        ...


@runtime_checkable
class RefSRModel(Protocol):
    """A reference-based SR LightningModule as the callbacks see it (``lit_sr.modules.RefSRModule`` is one).

    Its batches carry ``"ref"``; the attacks run on ``net``, called as ``net(lr, ref)``.
    """

    scale: int
    net: nn.Module

    def super_resolve(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Evaluation forward: LR ``(N, 3, h, w)`` and reference ``(N, 3, Hr, Wr)`` in [0, 1] to SR in [0, 1]."""
        ...


@runtime_checkable
class PoisonedData(Protocol):
    """A poisoned SR data module as the poison-selection and backdoor callbacks see it.

    ``datamodules.PoisonedSRDataModule`` is one. The pool is the set of candidate training
    indices; the active set (``poisoned_indices``) is the part of it trained on poisoned pairs.
    """

    scale: int

    @property
    def budget(self) -> int:
        """How many pool members may be poisoned at once."""
        ...

    @property
    def candidate_indices(self) -> Sequence[int]:
        """The pool: training indices that have a poisoned version."""
        ...

    @property
    def poisoned_indices(self) -> list[int]:
        """The active set, sorted; identical on every rank."""
        ...

    def set_poisoned_indices(self, indices: Sequence[int]) -> None:
        """Install a new active set (a subset of the pool, at most ``budget`` members)."""
        ...

    def candidate_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, Any]]:
        """This rank's share of the pool as ``{"lr", "hr", "index"}`` batches of poisoned pairs."""
        ...

    def backdoor_val_pair(self, index: int, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The triggered LR and the poisoned label of validation image ``index`` (precomputed)."""
        ...

    def target_for(self, hr: torch.Tensor, index: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The attacker's target image y_t* for a batch of HR images, resized to their size.

        ``index`` holds the images' validation indices, for targets that depend on more than the
        pixels (the shapes task's object masks); a target that is a function of the HR ignores it.
        """
        ...

    @property
    def poison_report(self) -> Mapping[str, float]:
        """Stealth figures of the poisoned pool (poisoned-HR PSNR/SSIM, triggered-LR PSNR, ...)."""
        ...

    @property
    def feature_extractor(self) -> nn.Module | None:
        """The substitute's feature extractor for feature ASR, or ``None`` without a substitute."""
        ...

    def poison_config(self) -> Mapping[str, Any]:
        """What was poisoned and how (label, trigger config, rate, budget, perceptual term), for summaries."""
        ...

    def val_dataloader(self) -> Any:
        """The clean validation loader (batches ``{"lr", "hr", "index", ...}``)."""
        ...


@runtime_checkable
class PixelLossModel(Protocol):
    """An SR LightningModule whose training loss has a pixel term ``pixel_loss(sr, hr) -> scalar``.

    ``SRModule`` and ``GANModule`` are. The backdoor-gradient scorer differentiates it when asked
    for the victim's own loss (``GradientScorer(loss="module")``).
    """

    pixel_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def protocol_members(protocol: type) -> list[str]:
    """The names a runtime-checkable protocol requires, sorted."""
    members = getattr(protocol, "__protocol_attrs__", None)
    if members is None:  # Python < 3.12
        members = typing._get_protocol_attrs(protocol)  # noqa: SLF001
    return sorted(members)


@runtime_checkable
class ThreatModelData(Protocol):
    """A poisoned data module that says what its attacker may do (``"data_only"`` or ``"victim_access"``,
    :mod:`lit_sr.poison.threat_model`): a callback that changes the poisoned set during training needs
    ``"victim_access"``."""

    threat_model: str


def require(obj: Any, protocol: type, who: str, role: str) -> None:
    """Raise ``TypeError`` naming the missing members unless ``obj`` satisfies ``protocol``.

    Args:
        obj: the data module or LightningModule to check.
        protocol: one of the protocols above.
        who: the component that needs it (for the message), e.g. ``"PoisonSelectionCallback"``.
        role: what ``obj`` is, e.g. ``"trainer.datamodule"``.
    """
    if obj is not None and isinstance(obj, protocol):
        return
    missing = [m for m in protocol_members(protocol) if not hasattr(obj, m)] if obj is not None else []
    raise TypeError(f"{who} needs {role} to be a {protocol.__name__} ({protocol.__module__}.{protocol.__name__}); "
                    f"{role} is {type(obj).__name__}, missing {missing or protocol_members(protocol)}")
