"""The check of one ``defenses.methods`` entry against the input-defense registry
(:data:`lit_sr.defenses.INPUT_DEFENSES`). Shared by the ``defenses`` block (:mod:`.config`) and the
robust study (:mod:`.robust`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lit_sr.attacks.spec import init_params
from lit_sr.defenses import INPUT_DEFENSES
from lit_sr.errors import ConfigError


def parse_defense(label: str, params: Mapping | None) -> dict[str, Any]:
    """``{"defense": kind, **params}`` of the entry ``label``; a bad kind or parameter raises :class:`ConfigError`."""
    where = f"defenses.methods.{label}"
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {params!r}")
    params = dict(params or {})
    kind = params.pop("defense", label)
    if kind not in INPUT_DEFENSES:
        raise ConfigError(f"{where}: unknown defense {kind!r}; expected one of {sorted(INPUT_DEFENSES)}")
    allowed = init_params(INPUT_DEFENSES[kind])
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; expected some of {allowed}")
    try:
        INPUT_DEFENSES[kind](nn.Identity(), **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return {"defense": kind, **params}
