"""LightningModules that train the downstream models (on HR images) for the shapes task.

:class:`ClassifierModule` trains a :class:`DownstreamClassifier` with cross-entropy and logs
``val/top1``; :class:`DetectorModule` trains a :class:`DownstreamDetector` (torchvision's own
Faster R-CNN losses) and logs ``val/map_50`` and ``val/map`` (torchmetrics' ``MeanAveragePrecision``,
COCO protocol). Both read batches ``{"hr", "label"}`` / ``{"hr", "boxes", "labels"}`` as served by
``datamodules.shapes.ShapesDataModule``; the network sits at ``self.net`` so its checkpoint is read
back by the wrappers (``weights=<run>/checkpoints/best.ckpt``).

Training uses random horizontal flips (boxes flipped with the image; the class of a shape does not
change under a flip), AdamW and a cosine schedule over the run's steps.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from lit_sr.downstream.wrappers import DownstreamClassifier, DownstreamDetector
from lit_sr.extras import require_extra
from lit_sr.training.hook_name import PlainHookName
from lit_sr.validation import check_fraction


def _cosine_adamw(module: L.LightningModule, lr: float, weight_decay: float, warmup: float = 0.0):
    """AdamW with a per-step cosine decay to 1% of ``lr``, after a linear warm-up over a ``warmup`` share of the steps."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, int(module.trainer.estimated_stepping_batches))
    warm = int(round(warmup * steps))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warm), eta_min=lr * 0.01)
    if warm == 0:
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.04, end_factor=1.0, total_iters=warm)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warm])
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """xyxy boxes of an image flipped left-right (pixel-edge coordinates)."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class ClassifierModule(PlainHookName, L.LightningModule):
    """Train a torchvision classifier from scratch (``random_init``) or fine-tune one from ``weights``.

    Args:
        arch: torchvision classification builder name (``resnet18`` for the shapes recipe).
        num_classes: number of classes (6 for shapes).
        weights: optional local weights file to start from; ``None`` trains from random init.
        input_size: resize side inside the wrapper (``None``: native size).
        lr, weight_decay: AdamW settings (cosine decay to 1% over the run).
        flip: random horizontal flips during training.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 6, weights: str | None = None,
                 input_size: int | None = None, lr: float = 2e-3, weight_decay: float = 1e-4, flip: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.net = DownstreamClassifier(arch, num_classes, weights=weights, random_init=weights is None,
                                        input_size=input_size)
        from torchmetrics.classification import MulticlassAccuracy

        self.val_top1 = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images = batch["hr"]
        if self.hparams.flip:
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        loss = F.cross_entropy(self(images), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["hr"])
        self.val_top1.update(logits.argmax(1), batch["label"])
        n = len(batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), sync_dist=True, batch_size=n)
        self.log("val/top1", self.val_top1, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        return _cosine_adamw(self, self.hparams.lr, self.hparams.weight_decay)


class DetectorModule(PlainHookName, L.LightningModule):
    """Train a torchvision Faster R-CNN on the shapes boxes (label ``k`` becomes detector class ``k + 1``).

    Args:
        arch: torchvision detection builder (``fasterrcnn_mobilenet_v3_large_320_fpn`` for CPU).
        num_classes: object classes *without* background (6 for shapes); the detector gets one more.
        weights: optional local weights file to start from; ``None`` trains from random init.
        backbone_weights: with ``weights=None``, a local classifier file whose weights start the
            backbone (torchvision's ``mobilenet_v3_large-*.pth`` or our ``ClassifierModule`` checkpoint
            of ``mobilenet_v3_large``); see :class:`DownstreamDetector`.
        min_size, max_size: the detector's internal resize (128 keeps shapes' HR size).
        trainable_backbone_layers: as in torchvision.
        box_batch_size_per_image: RoI samples per image for the box loss (torchvision: 512).
        representation_size: width of the box head (torchvision: 1024); see :class:`DownstreamDetector`.
        lr, weight_decay: AdamW settings (cosine decay to 1% over the run).
        warmup: share of the run's steps over which the learning rate ramps up linearly from 4%
            of ``lr`` first (a detector trained from random init diverges less with one).
        flip: random horizontal flips during training.
    """

    def __init__(self, arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes: int = 6,
                 weights: str | None = None, min_size: int = 128, max_size: int = 128,
                 trainable_backbone_layers: int | None = None, lr: float = 1e-3, weight_decay: float = 1e-4,
                 warmup: float = 0.0, flip: bool = True, box_batch_size_per_image: int | None = None,
                 representation_size: int | None = None, backbone_weights: str | None = None):
        super().__init__()
        check_fraction(warmup, "warmup")
        self.save_hyperparameters()
        self.net = DownstreamDetector(arch, num_classes + 1, weights=weights, random_init=weights is None,
                                      min_size=min_size, max_size=max_size,
                                      trainable_backbone_layers=trainable_backbone_layers,
                                      box_batch_size_per_image=box_batch_size_per_image,
                                      representation_size=representation_size, backbone_weights=backbone_weights)
        require_extra("pycocotools")  # its backend: the [detection] extra
        from torchmetrics.detection import MeanAveragePrecision

        self.val_map = MeanAveragePrecision(iou_type="bbox")

    @staticmethod
    def targets(batch) -> list[dict]:
        return [{"boxes": b, "labels": lab + 1} for b, lab in zip(batch["boxes"], batch["labels"])]

    def training_step(self, batch, batch_idx):
        images, targets = list(batch["hr"]), self.targets(batch)
        if self.hparams.flip:
            for i in range(len(images)):
                if torch.rand(()) < 0.5:
                    width = images[i].shape[-1]
                    images[i] = images[i].flip(-1)
                    targets[i] = {"boxes": hflip_boxes(targets[i]["boxes"], width), "labels": targets[i]["labels"]}
        losses = self.net(images, targets)
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_map.update(self.net(batch["hr"]), self.targets(batch))

    def on_validation_epoch_end(self):
        result = self.val_map.compute()
        self.val_map.reset()
        self.log("val/map_50", result["map_50"], prog_bar=True)
        self.log("val/map", result["map"])

    def configure_optimizers(self):
        return _cosine_adamw(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup)
