"""FT: fine-tuning the backdoored network on the defender's clean subset.

The baseline of every backdoor-defense benchmark (BackdoorBench's ``ft``): continue training on
clean pairs, hoping the trigger's mapping is overwritten by the clean one. Nothing about the
trigger is used. The settings are :class:`~lit_sr.backdoor_defenses.base.FinetuneSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lit_sr.backdoor_defenses.base import FinetuneSettings, RepairDefense, finetune
from lit_sr.backdoor_defenses.data import CleanSubset


@dataclass
class FTConfig(FinetuneSettings):
    """FT's settings: exactly :class:`~lit_sr.backdoor_defenses.base.FinetuneSettings`."""


class FineTuning(RepairDefense):
    """FT: ``steps`` Adam steps of the pixel loss on the clean subset (see :class:`FTConfig`)."""

    name = "ft"
    config_class = FTConfig

    def _repair(self, model: nn.Module, clean: CleanSubset) -> nn.Module:
        losses = finetune(model, clean, self.config, desc="FT")
        self.info = {"final_loss": losses[-1] if losses else None}
        return model
