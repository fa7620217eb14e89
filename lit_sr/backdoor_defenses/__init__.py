"""Backdoor defenses for SR models: repair (FT, fine-pruning, attention distillation, adversarial
unlearning, adversarial neuron pruning) and, in ``detection``, label-free detection of poisoned training pairs.

Every repair is a :class:`RepairDefense` with a validated config object: ``defense.repair(model,
clean) -> new model``, given the backdoored network and a :class:`CleanSubset` only.
:func:`run_defense` measures the repair before and after on a :class:`BackdoorEvalSet`;
:func:`build_defense` makes one from its kind and parameters (the report's configs);
:func:`defense_score` is the one summary score per (attack, defense).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lit_sr.backdoor_defenses.anp import AdversarialNeuronPruning, ANPConfig
from lit_sr.backdoor_defenses.base import (
    DefenseOutcome,
    FinetuneSettings,
    RepairDefense,
    finetune,
    run_defense,
)
from lit_sr.backdoor_defenses.data import (
    DEFAULT_CLEAN_FRACTION,
    BackdoorEvalSet,
    CleanSubset,
    clean_subset_indices,
    evaluate_backdoor,
)
from lit_sr.backdoor_defenses.distillation import NADConfig, NeuralAttentionDistillation, attention_map
from lit_sr.backdoor_defenses.finetuning import FineTuning, FTConfig
from lit_sr.backdoor_defenses.pruning import FinePruning, FPConfig
from lit_sr.backdoor_defenses.score import defense_score
from lit_sr.backdoor_defenses.unlearning import AdversarialUnlearning, UnlearningConfig

REPAIRS: dict[str, type[RepairDefense]] = {
    cls.name: cls for cls in (FineTuning, FinePruning, NeuralAttentionDistillation, AdversarialUnlearning,
                               AdversarialNeuronPruning)
}


def build_defense(kind: str, params: Mapping[str, Any] | None = None) -> RepairDefense:
    """The repair defense ``kind`` (``ft``, ``fp``, ``nad``, ``ibau``, ``anp``) with its config built from ``params``.

    Unknown kinds and unknown parameter names raise ``ValueError`` naming them and what is accepted;
    bad values raise the config's own named ``TypeError`` / ``ValueError``.
    """
    if kind not in REPAIRS:
        raise ValueError(f"unknown defense {kind!r}; expected one of {sorted(REPAIRS)}")
    cls = REPAIRS[kind]
    params = dict(params or {})
    accepted = list(cls.config_class.__dataclass_fields__)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"defense {kind!r} got unknown parameters {unknown}; it accepts {accepted}")
    return cls(cls.config_class(**params))


__all__ = [
    "ANPConfig", "DEFAULT_CLEAN_FRACTION", "REPAIRS", "AdversarialNeuronPruning", "AdversarialUnlearning", "BackdoorEvalSet", "CleanSubset",
    "DefenseOutcome", "FPConfig", "FTConfig", "FinePruning", "FineTuning", "FinetuneSettings",
    "NADConfig", "NeuralAttentionDistillation", "RepairDefense", "UnlearningConfig", "attention_map",
    "build_defense", "clean_subset_indices", "defense_score", "evaluate_backdoor", "finetune", "run_defense",
]
