"""Network registry.

Networks are looked up by name and imported lazily, so importing :mod:`lit_sr.archs` does no work
and registering a network has no import side effects. ``build_arch("edsr", num_feat=64, ...)``
forwards the keyword arguments to the network's constructor unchanged (BasicSR's names).
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

# name -> (module, class). One network family per file, as in BasicSR.
_REGISTRY: dict[str, tuple[str, str]] = {
    "bicubic": ("lit_sr.archs.bicubic_arch", "Bicubic"),
    "edsr": ("lit_sr.archs.edsr_arch", "EDSR"),
    "rcan": ("lit_sr.archs.rcan_arch", "RCAN"),
    "rrdbnet": ("lit_sr.archs.rrdbnet_arch", "RRDBNet"),
    "swinir": ("lit_sr.archs.swinir_arch", "SwinIR"),
    "carn": ("lit_sr.archs.carn_arch", "CARN"),
    "carn_m": ("lit_sr.archs.carn_arch", "CARNM"),
    "ttsr": ("lit_sr.archs.ttsr_arch", "TTSR"),
    "masa": ("lit_sr.archs.masa_arch", "MASA"),
    "liif": ("lit_sr.archs.liif_arch", "LIIF"),
    "datsr": ("lit_sr.archs.datsr_arch", "DATSR"),
    "ssmtf": ("lit_sr.archs.ssmtf_arch", "SSMTF"),
    "vgg_discriminator": ("lit_sr.archs.discriminator_arch", "VGGStyleDiscriminator"),
    "unet_discriminator": ("lit_sr.archs.discriminator_arch", "UNetDiscriminatorSN"),
    "image_discriminator": ("lit_sr.archs.discriminator_arch", "ImageDiscriminator"),
}


def available_archs() -> list[str]:
    """Names accepted by :func:`build_arch`."""
    return sorted(_REGISTRY)


def get_arch_class(name: str) -> type[nn.Module]:
    """Return the class registered under ``name`` (case-insensitive)."""
    key = name.lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown arch {name!r}; expected one of {available_archs()}")
    module_name, class_name = _REGISTRY[key]
    return getattr(importlib.import_module(module_name), class_name)


def build_arch(name: str, **kwargs) -> nn.Module:
    """Build the network registered under ``name`` with BasicSR-style keyword arguments.

    Unknown keyword arguments raise a ``TypeError`` that names them and lists the accepted ones.
    """
    cls = get_arch_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params)) if not accepts_var_kw else []
    if unknown:
        accepted = [p for p in params if p not in ("self", "args", "kwargs")]
        raise TypeError(f"arch {name!r} got unknown arguments {unknown}; it accepts {accepted}")
    return cls(**kwargs)


def arch_kwargs_with_scale(arch: str, arch_kwargs: dict | None, scale: int) -> dict:
    """``arch_kwargs`` with the network's scale argument filled in (``upscale``, or RRDBNet's ``scale``).

    Used by everything that builds a network for a given scale (the SR module, the report, the
    poisoned data module's substitute, the backdoor callbacks). A value already in
    ``arch_kwargs`` must agree with ``scale``; networks without a scale argument get the
    keyword arguments unchanged.
    """
    kwargs = dict(arch_kwargs or {})
    params = inspect.signature(get_arch_class(arch).__init__).parameters
    for name in ("upscale", "scale"):
        if name in params:
            if kwargs.setdefault(name, scale) != scale:
                raise ValueError(f"arch_kwargs.{name}={kwargs[name]} disagrees with the module's scale={scale}")
            break
    return kwargs


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
