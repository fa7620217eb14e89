"""The input defenses a report can put in front of a model: the registry (kind -> class) and the
check of one ``defenses.methods`` entry. Shared by the ``defenses`` block (:mod:`.config`) and the
robust study (:mod:`.robust`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lit_sr.attacks.spec import ConfigError, init_params
from lit_sr.defenses import BitDepthReduction, JPEGDefense, RandomResizeDefense, ResizeDefense, SelfEnsemble

DEFENSES: dict[str, type[nn.Module]] = {
    "resize": ResizeDefense,
    "random_resize": RandomResizeDefense,
    "self_ensemble": SelfEnsemble,
    "jpeg": JPEGDefense,
    "bit_depth": BitDepthReduction,
}


def parse_defense(label: str, params: Mapping | None) -> dict[str, Any]:
    """``{"defense": kind, **params}`` of the entry ``label``; a bad kind or parameter raises :class:`ConfigError`."""
    where = f"defenses.methods.{label}"
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {params!r}")
    params = dict(params or {})
    kind = params.pop("defense", label)
    if kind not in DEFENSES:
        raise ConfigError(f"{where}: unknown defense {kind!r}; expected one of {sorted(DEFENSES)}")
    allowed = init_params(DEFENSES[kind])
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; expected some of {allowed}")
    try:
        DEFENSES[kind](nn.Identity(), **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return {"defense": kind, **params}
