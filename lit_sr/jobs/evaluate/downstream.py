"""Downstream columns of the robustness report: classifier accuracy / detector mAP under each attack and eps.

A report's data sets are folders of HR images; downstream checks also need their labels. A folder
with downstream labels holds a ``labels.json`` beside its images (or the config names the file),
as :func:`datamodules.shapes.export_shapes` writes it::

    {"class_names": ["warm_circle", ...],
     "images": {"<image stem>": {"label": 3, "boxes": [[x0, y0, x1, y1], ...], "labels": [3, ...]}}}

``label`` is the image's class (for the classifier), ``boxes`` / ``labels`` its objects (for the
detector, pixel-edge xyxy in HR pixels). The config's ``downstream`` block
(:class:`DownstreamSpec`) names the models (:class:`lit_sr.downstream.DownstreamClassifier` /
``DownstreamDetector`` arguments, weights from a local file, never downloaded)::

    downstream:
      classifier: {arch: resnet18, num_classes: 6, input_size: 64, weights: runs/shapes_classifier/checkpoints/best.ckpt}
      detector: null

For every row (model x data set x attack x eps), :class:`DownstreamTally` sees each attacked
batch (the ``on_batch`` hook of :func:`lit_sr.jobs.evaluate.runner.evaluate_attack`) and runs the
downstream models on the HR images, on the SR of the clean LR and on the SR of the attacked LR.
Columns (:data:`DOWNSTREAM_FIELDS`): ``down_hr_top1``, ``down_clean_top1``, ``down_top1``
(classifier top-1 on HR / clean SR / attacked SR), ``down_agreement`` (attacked-SR prediction
equal to the HR prediction); ``down_hr_map_50``, ``down_clean_map_50``, ``down_map_50``,
``down_map`` (detector mAP@0.5 and mAP@[.5:.95], torchmetrics' ``MeanAveragePrecision``),
``down_vanished`` / ``down_hallucinated`` (detections at IoU 0.5 that vanish / appear relative to
HR, per HR detection, :func:`lit_sr.downstream.metrics.detection_change_counts`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_sr.attacks.spec import eps_text, init_params
from lit_sr.errors import ConfigError
from lit_sr.tables import fmt, markdown_lines

DOWNSTREAM_FIELDS = (
    "down_hr_top1", "down_clean_top1", "down_top1", "down_agreement",
    "down_hr_map_50", "down_clean_map_50", "down_map_50", "down_map", "down_vanished", "down_hallucinated",
)  # fmt: skip
LABELS_FILE = "labels.json"


@dataclass
class DownstreamSpec:
    """The report's downstream models and where the labels are.

    Args:
        classifier: :class:`lit_sr.downstream.DownstreamClassifier` arguments, or ``None``.
        detector: :class:`lit_sr.downstream.DownstreamDetector` arguments, or ``None``.
        labels: data set name -> labels file; a data set not named reads ``<its folder>/labels.json``.
        label_offset: added to the labels to get the detector's classes (1: torchvision's background is 0).
        score_thresh: detections counted for vanished / hallucinated.
        iou_thresh: IoU of the vanished / hallucinated matching.
    """

    classifier: dict[str, Any] | None = None
    detector: dict[str, Any] | None = None
    labels: dict[str, str] | None = None
    label_offset: int = 1
    score_thresh: float = 0.5
    iou_thresh: float = 0.5


def check_downstream(spec: DownstreamSpec | None, datasets: Mapping[str, str], crop_size: int | None) -> DownstreamSpec | None:
    """Validate the ``downstream`` block (keys of the model arguments, label files of known data sets)."""
    if spec is None:
        return None
    from lit_sr.downstream import DownstreamClassifier, DownstreamDetector

    if not isinstance(spec, DownstreamSpec):
        raise ConfigError(f"downstream: expected a mapping with classifier, detector, labels, got {spec!r}")
    if spec.classifier is None and spec.detector is None:
        raise ConfigError("downstream: needs a classifier, a detector, or both")
    for key, cls in (("classifier", DownstreamClassifier), ("detector", DownstreamDetector)):
        args = getattr(spec, key)
        if args is None:
            continue
        if not isinstance(args, Mapping):
            raise ConfigError(f"downstream.{key}: expected a mapping of {cls.__name__} arguments, got {args!r}")
        unknown = sorted(set(args) - set(init_params(cls)))
        if unknown:
            raise ConfigError(f"downstream.{key}: unknown argument(s) {unknown}; expected some of {init_params(cls)}")
    if spec.detector is not None and crop_size is not None:
        raise ConfigError("downstream.detector: boxes are in full-image pixels; crop_size must be null with a detector")
    for name in spec.labels or {}:
        if name not in datasets:
            raise ConfigError(f"downstream.labels: {name!r} is not one of the datasets {list(datasets)}")
    if not 0.0 <= float(spec.score_thresh) <= 1.0 or not 0.0 < float(spec.iou_thresh) <= 1.0:
        raise ConfigError(f"downstream: score_thresh in [0, 1] and iou_thresh in (0, 1] expected, got "
                          f"{spec.score_thresh}, {spec.iou_thresh}")
    return spec


def labels_path(spec: DownstreamSpec, dataset: str, folder: str) -> Path:
    return Path((spec.labels or {}).get(dataset) or Path(folder) / LABELS_FILE)


def read_labels(path: Path, names: Sequence[str], detector: bool) -> list[dict[str, torch.Tensor]]:
    """The labels of the images ``names`` (stems) from a labels file, in that order (named errors)."""
    if not path.is_file():
        raise FileNotFoundError(f"downstream labels file not found: {path} (write one with "
                                "datamodules.shapes.export_shapes, or name it in downstream.labels)")
    try:
        images = json.loads(path.read_text())["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected JSON {{'images': {{stem: {{'label', 'boxes', 'labels'}}}}}} ({exc})") from None
    out = []
    for name in names:
        entry = images.get(name)
        needed = ("label", "boxes", "labels") if detector else ("label",)
        if not isinstance(entry, Mapping) or any(k not in entry for k in needed):
            raise ValueError(f"{path}: image {name!r} has no entry with keys {list(needed)}")
        item = {"label": torch.tensor(int(entry["label"]))}
        if detector:
            item["boxes"] = torch.tensor(entry["boxes"], dtype=torch.float32).reshape(-1, 4)
            item["labels"] = torch.tensor(entry["labels"], dtype=torch.int64)
        out.append(item)
    return out


class DownstreamModels:
    """The built downstream models of a report, and a :class:`DownstreamTally` per row."""

    def __init__(self, spec: DownstreamSpec, datasets: Mapping[str, str], device: torch.device):
        from lit_sr.downstream import DownstreamClassifier, DownstreamDetector

        self.spec, self.datasets, self.device = spec, dict(datasets), device
        self.classifier = None if spec.classifier is None else DownstreamClassifier(**spec.classifier)
        self.detector = None if spec.detector is None else DownstreamDetector(**spec.detector)
        for net in (self.classifier, self.detector):
            if net is not None:
                net.to(device).eval().requires_grad_(False)
        self._labels: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def tally(self, model: nn.Module, dataset: str, pairs: Sequence) -> DownstreamTally:
        if dataset not in self._labels:
            names = [p.name for p in pairs]
            path = labels_path(self.spec, dataset, self.datasets[dataset])
            self._labels[dataset] = dict(zip(names, read_labels(path, names, self.detector is not None)))
        return DownstreamTally(self, model, [self._labels[dataset][p.name] for p in pairs])


class DownstreamTally:
    """Downstream counts of one report row; called by the attack loop with every attacked batch."""

    def __init__(self, models: DownstreamModels, sr_model: nn.Module, labels: Sequence[Mapping[str, torch.Tensor]]):
        self.models, self.sr_model, self.labels = models, sr_model, list(labels)
        self.cls_counts: dict[str, dict[str, torch.Tensor]] = {}
        self.det_counts: dict[str, torch.Tensor] = {}
        self.maps: dict[str, Any] = {}

    @torch.no_grad()
    def __call__(self, idx: Sequence[int], lr: torch.Tensor, hr: torch.Tensor, adv: torch.Tensor) -> None:
        images = {"hr": hr, "clean": self.sr_model(lr).clamp(0, 1), "attacked": self.sr_model(adv).clamp(0, 1)}
        size = hr.shape[-2:]
        images = {k: v[..., : size[0], : size[1]].float() for k, v in images.items()}
        labels = [self.labels[i] for i in idx]
        if self.models.classifier is not None:
            self._classify(images, torch.stack([lab["label"] for lab in labels]).to(hr.device))
        if self.models.detector is not None:
            self._detect(images, labels)

    def _classify(self, images: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        from lit_sr.downstream.metrics import add_counts, classification_counts

        preds = {k: self.models.classifier(v).argmax(1) for k, v in images.items()}
        for cond, pred in preds.items():
            add_counts(self.cls_counts.setdefault(cond, {}), classification_counts(pred, labels, preds["hr"]))

    def _detect(self, images: dict[str, torch.Tensor], labels: Sequence[Mapping[str, torch.Tensor]]) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        from lit_sr.downstream.metrics import add_counts, detection_change_counts

        spec, device = self.models.spec, next(iter(images.values())).device
        targets = [{"boxes": lab["boxes"].to(device), "labels": lab["labels"].to(device) + spec.label_offset}
                   for lab in labels]
        dets = {k: self.models.detector(v) for k, v in images.items()}
        for cond, det in dets.items():
            self.maps.setdefault(cond, MeanAveragePrecision(iou_type="bbox")).update(det, targets)
        add_counts(self.det_counts, detection_change_counts(dets["hr"], dets["attacked"], spec.iou_thresh,
                                                            spec.score_thresh))

    def row(self) -> dict[str, float]:
        """The downstream columns of the row (only those of the configured models)."""
        from lit_sr.downstream.metrics import classification_metrics

        out: dict[str, float] = {}
        if self.cls_counts:
            metrics = {cond: classification_metrics(c) for cond, c in self.cls_counts.items()}
            out.update(down_hr_top1=metrics["hr"]["top1"], down_clean_top1=metrics["clean"]["top1"],
                       down_top1=metrics["attacked"]["top1"], down_agreement=metrics["attacked"]["agreement"])
        if self.maps:
            results = {cond: metric.compute() for cond, metric in self.maps.items()}
            total = max(float(self.det_counts["hr_detections"]), 1.0)
            out.update(down_hr_map_50=float(results["hr"]["map_50"]), down_clean_map_50=float(results["clean"]["map_50"]),
                       down_map_50=float(results["attacked"]["map_50"]), down_map=float(results["attacked"]["map"]),
                       down_vanished=float(self.det_counts["vanished"]) / total,
                       down_hallucinated=float(self.det_counts["hallucinated"]) / total)
        return out


def downstream_markdown(cfg, rows: Sequence[Mapping]) -> list[str]:
    """The summary's downstream section: per data set x attack, models x eps cells of top-1 and/or mAP@0.5."""
    if getattr(cfg, "downstream", None) is None or not rows:
        return []
    lines = ["## Downstream models on the SR outputs", "",
             "Each cell is the downstream figure on the SR of the attacked input; `HR` and `clean` are the "
             "same model on the ground truth and on the SR of the clean input. Top-1: classifier accuracy; "
             "mAP@0.5: detector (COCO protocol). Agreement, mAP@[.5:.95] and vanished / hallucinated "
             "detections are in `results.csv`.", ""]
    keys = [k for k in ("down_top1", "down_map_50") if any(k in r for r in rows)]
    for dataset in cfg.datasets:
        for spec in cfg.attacks:
            sel = [r for r in rows if r["dataset"] == dataset and r["attack"] == spec.label]
            if not sel:
                continue
            for key in keys:
                what = "top-1" if key == "down_top1" else "mAP@0.5"
                base = "down_hr_top1" if key == "down_top1" else "down_hr_map_50"
                clean = "down_clean_top1" if key == "down_top1" else "down_clean_map_50"
                table = []
                for model in cfg.models:
                    cells = {round(r["eps"], 8): r for r in sel if r["model"] == model}
                    first = next(iter(cells.values()), {})
                    row = [model, _pct(first.get(base)), _pct(first.get(clean))]
                    row += [_pct(cells.get(round(e, 8), {}).get(key)) for e in cfg.eps]
                    table.append(row)
                header = ["model", "HR", "clean", *(f"eps {eps_text(e)}" for e in cfg.eps)]
                lines += [f"### {dataset}: {spec.label}, {what}", "", *markdown_lines(header, table), ""]
    return lines


def _pct(value) -> str:
    return fmt(value, lambda v: f"{100 * v:.1f}%")
