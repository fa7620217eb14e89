"""LightningModules of lit-sr."""

from lit_sr.modules.arbitrary_scale_module import ArbitraryScaleSRModule
from lit_sr.modules.gan_module import GANSRModule as GANSRModule  # explicit re-export
from lit_sr.modules.robust_module import RobustFinetuneModule
from lit_sr.modules.sr_module import SRModule

__all__ = ["ArbitraryScaleSRModule", "RobustFinetuneModule", "SRModule"]
