"""Backdoor poisoning of SR training data: triggers, poisoned HR labels, sample selection, ASR.

Implements BadSR (Guo et al., "BadSR: Stealthy Label Backdoor Attacks on Image Super-Resolution",
arXiv 2505.15308) on any ``nn.Module``; nothing here depends on Lightning.

* :mod:`~lit_sr.poison.triggers`: BadNet, Blend, SIG, WaNet and BadSR's adversarial trigger.
* :mod:`~lit_sr.poison.poisoned_hr`: feature-aligned poisoned HR labels (Eq. 13).
* :mod:`~lit_sr.poison.gradients`: per-sample backdoor gradient norms and sketches (torch.func).
* :mod:`~lit_sr.poison.scoring`: :class:`GradientScorer`, the pool's backdoor-gradient scores.
* :mod:`~lit_sr.poison.selection`: genetic (DEAP), random and top-k selection of poisoned samples
  (functions and the selector objects ``GeneticSelector``, ``RandomSelector``, ``TopKSelector``).
* :mod:`~lit_sr.poison.subset_fitness`: the genetic search's individuals and their fitness at pool
  scale (sparse, incremental and the dense reference).
* :mod:`~lit_sr.poison.threat_model`: the two threat models (``data_only``, the paper's;
  ``victim_access``) and :class:`AttackerSelection`, the selection on the attacker's substitute.
* :mod:`~lit_sr.poison.asr`: success metrics (pixel ASR, label attainment, feature shift, the
  backdoor's own effect over a clean model), stealth.
"""

from lit_sr.poison.asr import (
    ASRResult,
    PairedDifference,
    Rate,
    SuccessTally,
    attainment_asr,
    distributed_sum,
    feature_asr,
    feature_shift,
    label_attainment,
    own_effect,
    paired_difference,
    pixel_asr,
    stealth,
    strategy_sum,
)
from lit_sr.poison.gradients import (
    naive_per_sample_grad_norms,
    naive_per_sample_grad_stats,
    per_sample_grad_stats,
    sketch_vectors,
)
from lit_sr.poison.poisoned_hr import FeatureExtractor, make_poisoned_hr, resize_target
from lit_sr.poison.scoring import GradientScorer, GradientScores
from lit_sr.poison.selection import (
    GeneticSelector,
    RandomSelector,
    Selected,
    Selector,
    TopKSelector,
    genetic_select,
    random_select,
    selection_fitness,
    topk_select,
)
from lit_sr.poison.threat_model import THREAT_MODELS, AttackerSelection, ThreatModel, paper_selector
from lit_sr.poison.triggers import (
    SIG,
    AdversarialTrigger,
    BadNet,
    Blend,
    Trigger,
    WaNet,
    build_trigger,
)

__all__ = [
    "ASRResult",
    "PairedDifference",
    "Rate",
    "SuccessTally",
    "attainment_asr",
    "distributed_sum",
    "feature_shift",
    "label_attainment",
    "own_effect",
    "paired_difference",
    "strategy_sum",
    "AdversarialTrigger",
    "AttackerSelection",
    "THREAT_MODELS",
    "ThreatModel",
    "paper_selector",
    "BadNet",
    "Blend",
    "FeatureExtractor",
    "GeneticSelector",
    "GradientScorer",
    "GradientScores",
    "RandomSelector",
    "Selected",
    "Selector",
    "TopKSelector",
    "SIG",
    "Trigger",
    "WaNet",
    "build_trigger",
    "feature_asr",
    "genetic_select",
    "make_poisoned_hr",
    "naive_per_sample_grad_norms",
    "naive_per_sample_grad_stats",
    "per_sample_grad_stats",
    "pixel_asr",
    "random_select",
    "resize_target",
    "selection_fitness",
    "sketch_vectors",
    "stealth",
    "topk_select",
]
