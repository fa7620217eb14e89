"""The trigger interface every backdoor trigger implements, and its seeded random stream.

A trigger maps an LR batch ``(N, C, H, W)`` in [0, 1] to a batch of the same shape, dtype and
device, again in [0, 1], called as ``trigger(lr, hr=None, sample_ids=None)``. It lives apart from
the triggers themselves so that :mod:`lit_sr.poison.triggers` (the static triggers and the
registry) and :mod:`lit_sr.poison.adversarial_trigger` (BadSR's optimised trigger) both build on
it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lit_sr.validation import check_images


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same stream on every machine, device and rank."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def check_trigger_batch(lr: Any, hr: Any = None) -> None:
    """Raise unless ``lr`` (and ``hr`` when given) are floating ``(N, C, H, W)`` batches of one size."""
    check_images(lr, "lr")
    if hr is not None:
        check_images(hr, "hr")
        if hr.shape[0] != lr.shape[0]:
            raise ValueError(f"hr has {hr.shape[0]} images but lr has {lr.shape[0]}")


class Trigger:
    """Base class: validates the batch, then calls :meth:`_apply`.

    Subclasses set ``name`` and fill ``self._config`` with their hyper-parameters.
    """

    name = "trigger"

    def __init__(self) -> None:
        self._config: dict[str, Any] = {}

    def __call__(
        self,
        lr: torch.Tensor,
        hr: torch.Tensor | None = None,
        sample_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Apply the trigger.

        Args:
            lr: LR batch ``(N, C, H, W)`` in [0, 1].
            hr: HR labels of the batch (used by the adversarial trigger only).
            sample_ids: dataset indices of the batch (used by the adversarial trigger to seed
                each image's random start, so a result does not depend on batch composition).

        Returns:
            The triggered batch: same shape, dtype and device as ``lr``, values in [0, 1].
        """
        check_trigger_batch(lr, hr)
        return self._apply(lr, hr, sample_ids)

    def _apply(self, lr: torch.Tensor, hr: torch.Tensor | None, sample_ids) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The trigger's name and hyper-parameters (plain Python values)."""
        return {"name": self.name, **self._config}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"
