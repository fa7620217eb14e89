"""LightningModules of lit-sr."""

from lit_sr.modules.sr_module import SRModule

__all__ = ["SRModule"]
