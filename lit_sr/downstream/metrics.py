"""Downstream metrics on SR outputs, as sums and counts so they reduce exactly across DDP ranks.

Conditions compared (the callback's names): ``hr`` (the ground-truth image), ``bicubic`` (LR
upscaled by MATLAB bicubic), ``sr_clean``, ``sr_triggered`` (SR of the triggered LR of a poisoned
data module) and ``sr_<attack>`` (SR of an attacked LR).

Classifier (:func:`classification_counts`): ``top1`` against the labels, ``agreement`` with the
classifier's own prediction on HR (how much SR changes its decision, whatever the truth), and, for
a backdoor with a ``target_class``, the downstream ASR: the fraction of samples whose true class
is *not* the target that are classified as the target (samples of the target class are left out:
for them a "hit" would say nothing about the backdoor).

Detector: mAP@0.5 and mAP@[.5:.95] with torchmetrics' ``MeanAveragePrecision`` (COCO protocol,
needs ``pycocotools``), and :func:`detection_change_counts`: detections on HR that *vanish* (no
detection of the same class at IoU >= 0.5 in the condition) and detections that are
*hallucinated* (no counterpart on HR), both for detections with score >= ``score_thresh``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torchvision.ops import box_iou

Counts = dict[str, torch.Tensor]


def classification_counts(pred: torch.Tensor, labels: torch.Tensor, hr_pred: torch.Tensor,
                          target_class: int | None = None) -> Counts:
    """Sums for one batch: ``n``, ``correct``, ``agree`` (with ``hr_pred``), and ``asr_hits`` / ``asr_n``.

    ``pred``, ``labels`` and ``hr_pred`` are ``(N,)`` class indices. ``asr_n`` counts the samples
    whose label is not ``target_class``; ``asr_hits`` those of them predicted as ``target_class``.
    """
    if not (pred.shape == labels.shape == hr_pred.shape) or pred.dim() != 1:
        raise ValueError(f"classification_counts: pred {tuple(pred.shape)}, labels {tuple(labels.shape)} and "
                         f"hr_pred {tuple(hr_pred.shape)} must be equal (N,) vectors")
    counts = {
        "n": torch.tensor(float(pred.numel())),
        "correct": (pred == labels).sum().double(),
        "agree": (pred == hr_pred).sum().double(),
    }
    if target_class is not None:
        eligible = labels != target_class
        counts["asr_n"] = eligible.sum().double()
        counts["asr_hits"] = (eligible & (pred == target_class)).sum().double()
    return {k: v.double().cpu() for k, v in counts.items()}


def downstream_asr(pred: torch.Tensor, labels: torch.Tensor, target_class: int) -> float:
    """Fraction of non-target-class samples classified as ``target_class`` (NaN when there are none)."""
    eligible = labels != target_class
    if not eligible.any():
        return float("nan")
    return float((pred[eligible] == target_class).double().mean())


def classification_metrics(counts: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``top1``, ``agreement`` and (with a target) ``asr`` from summed counts."""
    n = float(counts["n"])
    out = {"top1": float(counts["correct"]) / n, "agreement": float(counts["agree"]) / n} if n else {}
    if "asr_n" in counts and float(counts["asr_n"]):
        out["asr"] = float(counts["asr_hits"]) / float(counts["asr_n"])
    return out


def _unmatched(src_boxes, src_labels, dst_boxes, dst_labels, iou_thresh: float) -> int:
    """How many ``src`` detections (in descending score order) find no unused ``dst`` one of their class at IoU >= thresh."""
    if len(src_boxes) == 0:
        return 0
    if len(dst_boxes) == 0:
        return len(src_boxes)
    iou = box_iou(src_boxes.float(), dst_boxes.float())
    iou = torch.where(src_labels[:, None] == dst_labels[None, :], iou, torch.zeros_like(iou))
    used = torch.zeros(len(dst_boxes), dtype=torch.bool, device=iou.device)
    missing = 0
    for row in iou:  # greedy, like COCO matching; K is small (a few objects per image)
        row = torch.where(used, torch.full_like(row, -1.0), row)
        best = int(row.argmax())
        if row[best] >= iou_thresh:
            used[best] = True
        else:
            missing += 1
    return missing


def _kept(det: Mapping[str, torch.Tensor], score_thresh: float):
    keep = det["scores"] >= score_thresh
    order = det["scores"][keep].argsort(descending=True)
    return det["boxes"][keep][order], det["labels"][keep][order]


def detection_change_counts(hr_dets: list[Mapping[str, torch.Tensor]], dets: list[Mapping[str, torch.Tensor]],
                            iou_thresh: float = 0.5, score_thresh: float = 0.5) -> Counts:
    """``vanished`` / ``hallucinated`` detections of a condition against the detections on HR, and ``hr_detections``."""
    if len(hr_dets) != len(dets):
        raise ValueError(f"detection_change_counts: {len(hr_dets)} HR results vs {len(dets)} condition results")
    vanished = hallucinated = total = 0
    for ref, cur in zip(hr_dets, dets):
        rb, rl = _kept(ref, score_thresh)
        cb, cl = _kept(cur, score_thresh)
        total += len(rb)
        vanished += _unmatched(rb, rl, cb, cl, iou_thresh)
        hallucinated += _unmatched(cb, cl, rb, rl, iou_thresh)
    return {"hr_detections": torch.tensor(float(total), dtype=torch.float64),
            "vanished": torch.tensor(float(vanished), dtype=torch.float64),
            "hallucinated": torch.tensor(float(hallucinated), dtype=torch.float64)}


def add_counts(total: Counts, new: Mapping[str, torch.Tensor]) -> Counts:
    """``total += new``, key by key (a missing key starts at zero)."""
    for key, value in new.items():
        total[key] = total.get(key, torch.zeros((), dtype=torch.float64)) + value.double().cpu()
    return total


def reduce_counts(counts: Mapping[str, torch.Tensor], all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> Counts:
    """Sum ``counts`` over ranks in one collective (keys sorted so every rank packs the same vector).

    ``all_reduce_sum`` maps a 1-D tensor to its sum over ranks (``trainer.strategy.reduce(x, reduce_op="sum")``);
    every rank must hold the same keys.
    """
    keys = sorted(counts)
    if not keys:
        return {}
    packed = torch.stack([counts[k].double() for k in keys])
    summed = all_reduce_sum(packed)
    return {k: summed[i].detach().cpu() for i, k in enumerate(keys)}
