"""What the report's study and writer modules read of its config, as a :class:`typing.Protocol`.

:class:`lit_sr.jobs.evaluate.config.ReportConfig` satisfies it. The config validates its ``robust`` and
``robustness_index`` blocks with those studies' resolvers, so the studies (and the writers they share)
cannot import the config back: they name this protocol instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class ReportSettings(Protocol):
    """The :class:`~lit_sr.jobs.evaluate.config.ReportConfig` fields the studies and writers use."""

    models: Mapping[str, Any]
    datasets: Mapping[str, str]
    attacks: Sequence[Any]
    eps: Sequence[float]
    batch_size: int
    seed: int
    y_channel: bool
    crop_border: int | None
    autocast: str
    defenses: Any
    downstream: Any
    robust: Any
    robustness_index: Any
    raw: Mapping[str, Any]
