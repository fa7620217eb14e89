"""One summary score per (attack, defense): how much backdoor a repair removed, net of its clean cost.

**The formula** (SR's analogue of BackdoorBench's defense effectiveness rating, with the clean
PSNR-Y in the place of clean accuracy):

    score = ( max(ASR_before - ASR_after, 0) - min(max(PSNR_before - PSNR_after, 0) / tol, 1) + 1 ) / 2

* ``ASR`` is a rate in [0, 1] (the report uses attainment-ASR by default, which registers every
  label kind, or the pixel ASR vs the target), so the first term, the **ASR drop**, is in [0, 1];
  a defense that raises the ASR gets 0 there, not a negative credit.
* ``PSNR`` is the clean PSNR-Y in dB; its **drop** is divided by ``tol`` (dB, default 1.0: losing
  ``tol`` dB of clean quality costs as much as removing the whole backdoor gains) and capped at 1,
  so both terms live on the same [0, 1] scale; a repair that *improves* the clean PSNR gets no
  bonus.
* The **ASR drop is added and the PSNR cost subtracted**, in this formula and in the code alike
  (a known classifier benchmark's docstring and code disagree on such a sign;
  tests/test_backdoor_defenses.py checks ours on hand-made numbers).
* Range [0, 1]: 0.5 for a repair that changes nothing (or whose gain equals its cost), 1 for a
  backdoor fully removed at no clean cost, 0 for nothing removed at ``tol`` dB or more of cost.

A rate that is undefined (``None``: no image included) gives a score of ``None``.
"""

from __future__ import annotations

from lit_sr.validation import check_fraction, check_number, check_positive


def defense_score(
    asr_before: float | None,
    asr_after: float | None,
    psnr_before: float,
    psnr_after: float,
    psnr_tolerance: float = 1.0,
) -> float | None:
    """The summary score of the module docstring; ``None`` when either ASR is ``None``.

    Args:
        asr_before, asr_after: the backdoor's success rate in [0, 1] before and after the repair.
        psnr_before, psnr_after: clean PSNR-Y in dB before and after.
        psnr_tolerance: the clean PSNR drop (dB) that cancels a full ASR drop.
    """
    tol = check_positive(psnr_tolerance, "psnr_tolerance")
    psnr_before = check_number(psnr_before, "psnr_before")
    psnr_after = check_number(psnr_after, "psnr_after")
    if asr_before is None or asr_after is None:
        return None
    asr_drop = max(check_fraction(asr_before, "asr_before") - check_fraction(asr_after, "asr_after"), 0.0)
    psnr_cost = min(max(psnr_before - psnr_after, 0.0) / tol, 1.0)
    return (asr_drop - psnr_cost + 1.0) / 2.0
