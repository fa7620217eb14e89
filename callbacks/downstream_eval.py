"""Run downstream models (a classifier, a detector) on the SR outputs of validation images and log what changes.

Every ``every_n_epochs`` validations (never the sanity check), the first ``max_batches`` batches of
the first validation loader are used, on every rank its own shard. Each batch is turned into the
images of every condition:

* ``hr``: the ground truth; ``bicubic``: LR upscaled by MATLAB bicubic;
* ``sr_clean``: ``pl_module.super_resolve(lr)`` (the :class:`callbacks.protocols.SRModel` protocol);
* ``sr_triggered``: SR of the triggered LR, when the data module is poisoned
  (:class:`callbacks.protocols.PoisonedData`, ``backdoor_val_pair(index, lr, hr)``);
* ``backdoor_target``: the backdoor's target image itself (``target_for(hr, index)``, no SR), with
  ``sr_triggered``: what the downstream models say on the output the attacker aims at, so the
  ``sr_triggered`` figures read against their ceiling;
* ``sr_<name>``: SR of the LR attacked by each configured attack (``lit_sr.attacks`` objects,
  built on ``pl_module.eval_net`` from ``{"class": "IFGSM", "eps": 0.0314, ...}``).

Logged as ``downstream/<task>/<condition>/<metric>``: classifier ``top1``, ``agreement`` (with its
own prediction on HR) and, with ``target_class``, ``asr`` (non-target samples classified as the
target); detector ``map_50``, ``map`` (torchmetrics' ``MeanAveragePrecision``) and ``vanished`` /
``hallucinated`` (detections at IoU 0.5 that disappear / appear relative to HR, per HR detection).
All counts are summed over ranks in one collective, and ``MeanAveragePrecision`` syncs its own
state, so every rank logs the same numbers. Rank 0 draws the predicted labels or boxes on the first
``num_images`` images of every condition (a row per image, a column per condition) and writes the
grid to TensorBoard and ``<log_dir>/downstream/epoch<k>.png``.

Batches need ``"lr"``, ``"hr"`` and ``"label"`` (classifier) / ``"boxes"`` + ``"labels"``
(detector), as ``datamodules.shapes.ShapesDataModule`` serves them. The detector is given class
``label + label_offset`` (1: torchvision's background is 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchvision.utils import draw_bounding_boxes, make_grid

from callbacks.downstream_summary import summary_markdown
from callbacks.protocols import PoisonedData, SRModel
from lit_sr import attacks as attack_zoo
from lit_sr.downstream.metrics import (
    add_counts,
    classification_counts,
    classification_metrics,
    detection_change_counts,
    reduce_counts,
)
from lit_sr.downstream.wrappers import DownstreamClassifier, DownstreamDetector
from lit_sr.io import atomic_write, write_image
from lit_sr.ops import imresize
from lit_sr.validation import check_fraction, check_int


def _eval_net(pl_module) -> nn.Module:
    net = pl_module.eval_net
    return net if isinstance(net, nn.Module) else net()  # SRModule has it as a method, the protocol as a property


def _build_attacks(specs: dict[str, dict[str, Any]], model: nn.Module) -> dict[str, Any]:
    built = {}
    for name, spec in specs.items():
        spec = dict(spec)
        cls_name = spec.pop("class", None)
        cls = getattr(attack_zoo, str(cls_name), None)
        if not isinstance(cls, type):
            raise ValueError(f"DownstreamEvalCallback: attacks[{name!r}] needs 'class' naming an attack of "
                             f"lit_sr.attacks (IFGSM, PGD, ...), got {cls_name!r}")
        built[name] = cls(model, **spec)
    return built


class DownstreamEvalCallback(L.Callback):
    """Downstream classifier / detector checks on SR outputs of clean, triggered and attacked inputs.

    Args:
        classifier: a :class:`DownstreamClassifier` (YAML ``class_path``), or ``None``.
        detector: a :class:`DownstreamDetector`, or ``None``. At least one of the two is needed.
        every_n_epochs: run on every N-th validation epoch.
        max_batches: validation batches used per rank (``None``: all).
        target_class: the backdoor's target class for the downstream ASR: an index, a class name of
            the data module's ``class_names``, or ``None``: the data module's own ``target_class``
            when it declares one (``datamodules.poisoned_shapes.PoisonedShapesDataModule``), else no ASR.
        attacks: ``{name: {"class": <lit_sr.attacks class>, **its arguments}}``; ``None`` for none.
        label_offset: added to the data set's labels to get the detector's classes.
        score_thresh: detections kept for vanished/hallucinated counts and the drawing.
        iou_thresh: IoU for vanished / hallucinated matching.
        num_images: images drawn per condition in the grid (0: no grid).
        class_names: names written on the pictures; ``None``: the data module's ``class_names``
            (``datamodules.shapes.ShapesDataModule`` has them), else the class index.
        summary: after each evaluation, rank 0 writes ``<log_dir>/downstream/summary.md`` (and
            prints it): a table of the downstream figures per condition, followed by the SR-level
            backdoor figures (``backdoor/*``, logged by ``BackdoorEvalCallback``) when the run has them.
    """

    def __init__(self, classifier: DownstreamClassifier | None = None, detector: DownstreamDetector | None = None,
                 every_n_epochs: int = 1, max_batches: int | None = 4, target_class: int | str | None = None,
                 attacks: dict[str, dict[str, Any]] | None = None, label_offset: int = 1, score_thresh: float = 0.5,
                 iou_thresh: float = 0.5, num_images: int = 4, class_names: list[str] | None = None,
                 summary: bool = True):
        if classifier is None and detector is None:
            raise ValueError("DownstreamEvalCallback needs a classifier, a detector, or both")
        self.classifier, self.detector = classifier, detector
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.max_batches = None if max_batches is None else check_int(max_batches, "max_batches", minimum=1)
        self.target_class_arg = target_class
        self.target_class: int | None = None
        self.attack_specs = dict(attacks or {})
        self.label_offset = int(label_offset)
        self.score_thresh = check_fraction(score_thresh, "score_thresh")
        self.iou_thresh = check_fraction(iou_thresh, "iou_thresh")
        self.num_images = check_int(num_images, "num_images", minimum=0)
        self.class_names_arg = list(class_names) if class_names is not None else None
        self.class_names: list[str] | None = self.class_names_arg
        self.summary = bool(summary)
        self.results: dict[str, float] = {}
        self._fresh = False
        self.local_counts: dict[str, dict[str, float]] = {}
        self._active = False

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer, pl_module):
        self._active = (not trainer.sanity_checking) and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not self._active:
            return
        if not isinstance(pl_module, SRModel):
            raise TypeError(f"DownstreamEvalCallback needs an SR module (callbacks.protocols.SRModel: scale, net, "
                            f"eval_net, super_resolve); {type(pl_module).__name__} is not one")
        self._read_classes(trainer.datamodule)
        for model in (self.classifier, self.detector):
            if model is not None:
                model.to(pl_module.device).eval().requires_grad_(False)
        self._attacks = _build_attacks(self.attack_specs, _eval_net(pl_module))
        self._cls_counts: dict[str, dict[str, torch.Tensor]] = {}
        self._det_counts: dict[str, dict[str, torch.Tensor]] = {}
        self._maps: dict[str, Any] = {}
        self._pictures: dict[str, list[torch.Tensor]] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self._active or dataloader_idx != 0:
            return
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        with torch.inference_mode(False):
            images = self.condition_images(trainer, pl_module, batch)
            with torch.no_grad():
                self.evaluate(images, batch, keep_pictures=trainer.is_global_zero)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not self._active:
            return
        self._active = False
        self.results = self.finish(trainer)
        for name, value in self.results.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=False)
        root = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank must ask
        self._root, self._fresh = root, True
        if trainer.is_global_zero and self.num_images and self._pictures:
            self.write_grid(trainer, root)

    def on_validation_end(self, trainer, pl_module):
        # here every callback's epoch-end metrics (backdoor/* included) are in trainer.callback_metrics
        if not (self._fresh and self.summary and trainer.is_global_zero):
            return
        self._fresh = False
        from lightning.pytorch.utilities import rank_zero_info


        backdoor = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("backdoor/")}
        target = None if self.target_class is None else self._name(self.target_class)
        text = summary_markdown(self.results, backdoor, target, trainer.current_epoch, trainer.global_step)
        path = self._root / "downstream" / "summary.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(text)
        self.summary_path = path
        rank_zero_info(text)

    def _read_classes(self, data) -> None:
        """Class names and the target class, from the arguments or else from the data module."""
        names = self.class_names_arg
        if names is None and data is not None and getattr(data, "class_names", None) is not None:
            names = [str(n) for n in data.class_names]
        self.class_names = names
        target = self.target_class_arg
        if target is None and data is not None:
            target = getattr(data, "target_class", None)
        if isinstance(target, str):
            if not names or target not in names:
                raise ValueError(f"DownstreamEvalCallback: target_class {target!r} is not a class name of the data "
                                 f"module ({names})")
            target = names.index(target)
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
            raise ValueError(f"DownstreamEvalCallback: target_class must be a class index or name, got {target!r}")
        self.target_class = target

    # ------------------------------------------------------------------ images of every condition
    def condition_images(self, trainer, pl_module, batch) -> dict[str, torch.Tensor]:
        lr, hr = batch["lr"].clone(), batch["hr"].clone()
        scale = int(pl_module.scale)
        images = {"hr": hr, "bicubic": imresize(lr, scale).clamp(0, 1), "sr_clean": pl_module.super_resolve(lr)}
        data = trainer.datamodule
        if isinstance(data, PoisonedData):
            triggered = torch.stack([data.backdoor_val_pair(int(i), lr_i, hr_i)[0].to(lr)
                                     for i, lr_i, hr_i in zip(batch["index"], lr, hr)])
            images["sr_triggered"] = pl_module.super_resolve(triggered)
            images["backdoor_target"] = data.target_for(hr, index=batch["index"]).to(hr)
        for name, attack in self._attacks.items():
            images[f"sr_{name}"] = pl_module.super_resolve(attack(lr, hr=hr))
        size = hr.shape[-2:]
        return {k: v if v.shape[-2:] == size else v[..., : size[0], : size[1]] for k, v in images.items()}

    # ------------------------------------------------------------------ metrics
    def evaluate(self, images: dict[str, torch.Tensor], batch, keep_pictures: bool) -> None:
        room = self.num_images - len(self._pictures.get("hr", [])) if keep_pictures else 0
        if self.classifier is not None:
            preds = {k: self.classifier(v.float()).argmax(1) for k, v in images.items()}
            labels = batch["label"].to(preds["hr"].device)
            for cond, pred in preds.items():
                counts = classification_counts(pred, labels, preds["hr"], self.target_class)
                add_counts(self._cls_counts.setdefault(cond, {}), counts)
        if self.detector is not None:
            from torchmetrics.detection import MeanAveragePrecision

            targets = [{"boxes": b.to(images["hr"].device), "labels": lab.to(images["hr"].device) + self.label_offset}
                       for b, lab in zip(batch["boxes"], batch["labels"])]
            dets = {k: [{n: t.detach() for n, t in d.items()} for d in self.detector(v.float())]
                    for k, v in images.items()}
            for cond, det in dets.items():
                metric = self._maps.setdefault(cond, MeanAveragePrecision(iou_type="bbox").to(images["hr"].device))
                metric.update(det, targets)
                add_counts(self._det_counts.setdefault(cond, {}),
                           detection_change_counts(dets["hr"], det, self.iou_thresh, self.score_thresh))
        if room > 0:
            for cond, img in images.items():
                for i in range(min(room, img.shape[0])):
                    text = None
                    if self.classifier is not None:
                        text = self._name(int(preds[cond][i]))
                    boxes = dets[cond][i] if self.detector is not None else None
                    self._pictures.setdefault(cond, []).append(self._draw(img[i], text, boxes))

    def finish(self, trainer) -> dict[str, float]:
        def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
            return trainer.strategy.reduce(x.to(trainer.strategy.root_device), reduce_op="sum")

        results: dict[str, float] = {}
        self.local_counts = {}
        for task, table in (("classifier", self._cls_counts), ("detector", self._det_counts)):
            for cond in sorted(table):
                self.local_counts[f"{task}/{cond}"] = {k: float(v) for k, v in table[cond].items()}
                counts = reduce_counts(table[cond], all_reduce_sum)
                prefix = f"downstream/{task}/{cond}"
                if task == "classifier":
                    for metric, value in classification_metrics(counts).items():
                        results[f"{prefix}/{metric}"] = value
                    results[f"{prefix}/n"] = float(counts["n"])
                else:
                    total = max(float(counts["hr_detections"]), 1.0)
                    results[f"{prefix}/vanished"] = float(counts["vanished"]) / total
                    results[f"{prefix}/hallucinated"] = float(counts["hallucinated"]) / total
                    results[f"{prefix}/hr_detections"] = float(counts["hr_detections"])
        for cond in sorted(self._maps):
            out = self._maps[cond].compute()  # torchmetrics gathers every rank's detections itself
            results[f"downstream/detector/{cond}/map_50"] = float(out["map_50"])
            results[f"downstream/detector/{cond}/map"] = float(out["map"])
        return results

    # ------------------------------------------------------------------ pictures
    def _name(self, label: int) -> str:
        if self.class_names and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def _draw(self, image: torch.Tensor, text: str | None, det: dict | None) -> torch.Tensor:
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        if det is not None:
            keep = det["scores"] >= self.score_thresh
            boxes = det["boxes"][keep].cpu()
            names = [self._name(int(lab) - self.label_offset) for lab in det["labels"][keep]]
            if len(boxes):
                pixels = draw_bounding_boxes(pixels, boxes, labels=names, colors="yellow", width=1)
        if text is not None:
            h, w = pixels.shape[-2:]
            frame = torch.tensor([[0, 0, w - 1, h - 1]], dtype=torch.float32)
            pixels = draw_bounding_boxes(pixels, frame, labels=[text], colors="white", width=1)
        return pixels.float() / 255

    def write_grid(self, trainer, root: Path) -> None:
        conditions = list(self._pictures)
        rows = len(self._pictures[conditions[0]])
        tiles = [self._pictures[c][r] for r in range(rows) for c in conditions]
        grid = make_grid(tiles, nrow=len(conditions), padding=2, pad_value=1.0)
        logger = trainer.logger
        experiment = getattr(logger, "experiment", None) if logger is not None else None
        if experiment is not None and hasattr(experiment, "add_image"):
            experiment.add_image("downstream/grid", grid, global_step=trainer.global_step)
        path = root / "downstream" / f"epoch{trainer.current_epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(grid, path)
        self.grid_path = path
