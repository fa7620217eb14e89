"""Input-side defenses: wrappers that purify the input of an SR model (LR image or RefSR reference).

:mod:`.image` holds the LR-input defenses of Choi et al. (resize, random resize, self-ensemble,
JPEG, bit depth) and :func:`evaluate_defense` (naive vs adaptive attacks); :mod:`.refsr` holds the
reference purification and similarity gate of TTSR (:class:`SimilarityGatedTTSR`) and
:func:`evaluate_refsr_defense`. Model repair against backdoors is :mod:`lit_sr.backdoor_defenses`.
"""

from lit_sr.defenses.image import (
    INPUT_DEFENSES,
    BitDepthReduction,
    Defense,
    JPEGDefense,
    RandomResizeDefense,
    ResizeDefense,
    SelfEnsemble,
    evaluate_defense,
)
from lit_sr.defenses.refsr import (
    PURIFY_CHOICES,
    Purify,
    SimilarityGatedTTSR,
    evaluate_refsr_defense,
    purify_reference,
)

__all__ = [
    "INPUT_DEFENSES",
    "PURIFY_CHOICES",
    "BitDepthReduction",
    "Defense",
    "JPEGDefense",
    "Purify",
    "RandomResizeDefense",
    "ResizeDefense",
    "SelfEnsemble",
    "SimilarityGatedTTSR",
    "evaluate_defense",
    "evaluate_refsr_defense",
    "purify_reference",
]
