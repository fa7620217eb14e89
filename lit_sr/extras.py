"""Optional dependencies (pip extras): :func:`require_extra` imports one or names the extra that installs it.

The core install (``pip install lit-sr-security``) trains, attacks, poisons and evaluates. Three
parts need packages that most runs do not, and they are extras::

    pip install 'lit-sr-security[lpips]'      # LPIPS metric and the LPIPS trigger term (lpips)
    pip install 'lit-sr-security[detection]'  # detector mAP of the downstream checks (pycocotools)
    pip install 'lit-sr-security[plots]'      # PNG plots: trade-off curves, study and report figures (matplotlib)
    pip install 'lit-sr-security[all]'        # all three

DEAP stays a core dependency: the genetic selection is part of the main job (``make demo``, arm C)
and DEAP is a small pure-Python package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "lit-sr-security"

#: top-level module -> (the extra that installs it, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "lpips": ("lpips", "the LPIPS metric and the LPIPS perceptual term"),
    "pycocotools": ("detection", "the detector's mAP (torchmetrics' MeanAveragePrecision backend)"),
    "matplotlib": ("plots", "the PNG plots (trade-off curves, study and report figures)"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require_extra(module: str) -> ModuleType:
    """Import ``module`` (``"matplotlib.figure"``, ``"lpips"``...) or raise :class:`MissingExtraError`.

    Raises:
        MissingExtraError: the top-level package is missing; the message names the pip extra.
        KeyError: ``module`` belongs to no extra (a programming error: list it in :data:`EXTRAS`).
    """
    top = module.split(".")[0]
    extra, purpose = EXTRAS[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing is not None and missing.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is broken: show that error
        raise MissingExtraError(
            f"{top} is not installed: {purpose} need it. Install the '{extra}' extra: "
            f"pip install '{DISTRIBUTION}[{extra}]' (or '{DISTRIBUTION}[all]')"
        ) from exc
