"""How well a per-pair suspicion score finds the poisoned training pairs: ROC curve, ROC-AUC, precision/recall.

A score is higher for a more suspicious pair. Two views of it are reported:

* **threshold-free**: the ROC curve (false- against true-positive rate over every threshold) and
  its area, the probability that a random poisoned pair scores above a random clean one, ties
  counted one half (the Mann-Whitney statistic, computed exactly from mid-ranks, so a constant
  score gets exactly 0.5);
* **at one threshold**: the pairs flagged are the ``k`` highest-scoring ones, with ``k`` the number
  of poisoned pairs (the "oracle budget", as in Tran et al. 2018, who remove 1.5x the expected
  number) unless ``flag_fraction`` gives another share of the data set. Precision is the share of
  flagged pairs that are poisoned, recall the share of poisoned pairs that are flagged. Ties at
  the threshold are broken by position (the earlier pair is flagged first).
"""

from __future__ import annotations

from typing import Any

import torch

from lit_sr.validation import check_fraction


def _check_scores(scores: torch.Tensor, poisoned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or not scores.numel():
        raise ValueError(f"scores must be a non-empty 1-D tensor (one score per pair); got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    if not isinstance(poisoned, torch.Tensor) or poisoned.shape != scores.shape:
        raise ValueError(f"poisoned must be a tensor of the scores' shape {tuple(scores.shape)}; got "
                         f"{tuple(poisoned.shape) if isinstance(poisoned, torch.Tensor) else type(poisoned).__name__}")
    if poisoned.dtype != torch.bool:
        raise TypeError(f"poisoned must be a bool tensor (True for a poisoned pair); got {poisoned.dtype}")
    scores = scores.detach().double().cpu()
    if not torch.isfinite(scores).all():
        bad = torch.nonzero(~torch.isfinite(scores)).reshape(-1)[:5].tolist()
        raise ValueError(f"scores must be finite; positions {bad} are not")
    poisoned = poisoned.detach().cpu()
    positives = int(poisoned.sum())
    if positives == 0 or positives == poisoned.numel():
        raise ValueError(f"ROC-AUC needs both poisoned and clean pairs; got {positives} poisoned of {poisoned.numel()}")
    return scores, poisoned


def mid_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values`` (ascending), tied values sharing the mean of their ranks (float64)."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()
    mean_rank = last - (counts.double() - 1) / 2
    return mean_rank[inverse]


def roc_auc(scores: torch.Tensor, poisoned: torch.Tensor) -> float:
    """Exact area under the ROC curve, ties counted one half (see the module docstring)."""
    scores, poisoned = _check_scores(scores, poisoned)
    ranks = mid_ranks(scores)
    n_pos = int(poisoned.sum())
    n_neg = poisoned.numel() - n_pos
    u = float(ranks[poisoned].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def roc_curve(scores: torch.Tensor, poisoned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fpr, tpr, thresholds)``: one point per distinct score (flag every pair scoring at least it), from (0, 0).

    ``thresholds[0]`` is ``+inf`` (nothing flagged); the trapezoid area under ``(fpr, tpr)`` equals
    :func:`roc_auc`.
    """
    scores, poisoned = _check_scores(scores, poisoned)
    unique, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    groups = unique.numel()
    pos = torch.zeros(groups, dtype=torch.float64).index_add_(0, inverse, poisoned.double())
    neg = torch.zeros(groups, dtype=torch.float64).index_add_(0, inverse, (~poisoned).double())
    # walk the thresholds from the highest score down
    tp, fp = torch.cumsum(pos.flip(0), 0), torch.cumsum(neg.flip(0), 0)
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, tp / tp[-1]])
    fpr = torch.cat([zero, fp / fp[-1]])
    thresholds = torch.cat([torch.full((1,), float("inf"), dtype=torch.float64), unique.flip(0)])
    return fpr, tpr, thresholds


def flag_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` highest scores (ties broken by position: the earlier pair first)."""
    order = torch.argsort(-scores.detach().double().cpu(), stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def flag_count(n: int, n_poisoned: int, flag_fraction: float | None) -> int:
    """How many pairs are flagged: ``n_poisoned``, or ``round(flag_fraction * n)`` (at least one)."""
    if flag_fraction is None:
        return n_poisoned
    check_fraction(flag_fraction, "flag_fraction", allow_zero=False)
    return max(1, round(flag_fraction * n))


def detection_metrics(scores: torch.Tensor, poisoned: torch.Tensor, flag_fraction: float | None = None) -> dict[str, Any]:
    """ROC-AUC, the ROC curve and precision/recall of the top-``k`` flagged pairs (see the module docstring).

    Args:
        scores: ``(N,)`` suspicion scores, higher = more suspicious.
        poisoned: ``(N,)`` bool, the known poisoned pairs.
        flag_fraction: flag this share of the ``N`` pairs; ``None`` (default): flag as many pairs
            as are poisoned (then precision equals recall).

    Returns:
        ``{"roc_auc", "precision", "recall", "flagged" (k), "true_positives", "threshold" (the
        k-th highest score), "flag_rule", "n_pairs", "n_poisoned", "fpr", "tpr"}``; ``fpr`` and
        ``tpr`` are float64 tensors of the ROC curve.
    """
    scores64, mask = _check_scores(scores, poisoned)
    n, n_pos = mask.numel(), int(mask.sum())
    k = flag_count(n, n_pos, flag_fraction)
    flagged = flag_top(scores64, k)
    hits = int((flagged & mask).sum())
    fpr, tpr, _ = roc_curve(scores64, mask)
    threshold = float(scores64[flagged].min())
    rule = "top-k, k = number poisoned" if flag_fraction is None else f"top {flag_fraction:g} of the pairs"
    return {"roc_auc": roc_auc(scores64, mask), "precision": hits / k, "recall": hits / n_pos, "flagged": k,
            "true_positives": hits, "threshold": threshold, "flag_rule": rule, "n_pairs": n, "n_poisoned": n_pos,
            "fpr": fpr, "tpr": tpr}
