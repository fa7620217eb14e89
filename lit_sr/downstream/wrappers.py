"""Downstream models that take SR outputs directly: a torchvision classifier and a Faster R-CNN detector.

Both are built offline: torchvision's builders download weights by default (and the detectors'
``weights_backbone`` defaults to ImageNet weights), so they are always called with ``weights=None``
(and ``weights_backbone=None``) and the weights are read from a local file with
``torch.load(weights_only=True)`` (:func:`lit_sr.io.read_state_dict`). The file is either
torchvision's own ``.pth`` (by default the one torchvision would download, looked up in the torch
hub cache, ``<torch.hub.get_dir()>/checkpoints/<name>.pth``) or one of our checkpoints (a Lightning
``.ckpt`` of :class:`lit_sr.downstream.ClassifierModule` / ``DetectorModule``, whose network is under
``net.model.``). With no file, :class:`MissingWeightsError` names the expected file and how to pass
it, before the network is built. A network trained here from scratch is built with
``random_init=True``, which says so explicitly.

Inputs are ``(N, 3, H, W)`` images in [0, 1]; ImageNet normalisation (classifier) and resizing live
inside the wrapper (the detector's own ``GeneralizedRCNNTransform`` normalises and resizes to
``min_size`` / ``max_size``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.io import read_state_dict
from lit_sr.validation import check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(FileNotFoundError):
    """A downstream model has no local weights file (nothing is ever downloaded)."""


def torchvision_weights_file(arch: str) -> Path:
    """Where torchvision would cache ``arch``'s default weights (its download URL's file name, in the hub cache)."""
    from torchvision.models import get_model_weights

    try:
        url = get_model_weights(arch).DEFAULT.url
    except (ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"torchvision has no model named {arch!r} with published weights") from exc
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def resolve_weights(arch: str, weights: str | os.PathLike | None, random_init: bool, owner: str) -> Path | None:
    """The weights file to load, or ``None`` for an explicit ``random_init``; raises :class:`MissingWeightsError`."""
    if random_init:
        if weights is not None:
            raise ValueError(f"{owner}: give either weights={weights!r} or random_init=True, not both")
        return None
    expected = Path(weights) if weights is not None else torchvision_weights_file(arch)
    if not expected.is_file():
        raise MissingWeightsError(
            f"{owner}: weights file not found: {expected}. lit-sr never downloads; put torchvision's "
            f"'{expected.name}' there (torch hub cache) or pass weights=<path to a torchvision .pth or a "
            f"lit-sr .ckpt> (YAML: init_args.weights), or random_init=True for an untrained network"
        )
    return expected


def torchvision_state(path: Path) -> dict[str, torch.Tensor]:
    """The torchvision network's state_dict in a ``.pth`` (as is) or in one of our checkpoints (``model.`` dropped)."""
    state = read_state_dict(path)
    if state and all(k.startswith("model.") for k in state):  # our module: net = wrapper, wrapper.model = torchvision
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def load_downstream_state(model: nn.Module, path: Path, owner: str) -> None:
    """Load a torchvision ``.pth`` (bare state_dict) or a lit-sr checkpoint (``net.model.*``) into ``model``."""
    state = torchvision_state(path)
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{owner}: weights in {path} do not fit the network: {'; '.join(wrong[:6])} "
                         "(wrong arch or num_classes?)")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{owner}: weights in {path} do not fit the network: missing {result.missing_keys[:8]}, "
                         f"unexpected {result.unexpected_keys[:8]} (wrong arch or num_classes?)")


def load_backbone_state(body: nn.Module, path: Path, owner: str) -> None:
    """Load a classification network's weights into a detector's backbone body.

    ``path`` is a torchvision ``.pth`` of the backbone's classifier (``mobilenet_v3_large-*.pth``,
    ``resnet50-*.pth``) or a lit-sr ``ClassifierModule`` checkpoint of that arch. torchvision's
    detection backbones keep the classifier's module names (MobileNet's ``features.<i>`` become
    ``<i>``; ResNet's ``conv1``, ``bn1``, ``layer<k>`` stay), and drop its head (``classifier``, ``fc``),
    which is ignored here. Every body weight must be in the file, with its shape.
    """
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in torchvision_state(path).items()}
    own = body.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(v.shape)}"
             for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or wrong:
        raise ValueError(f"{owner}: backbone weights in {path} do not fit the detector's backbone: missing "
                         f"{missing[:6]} ({len(missing)} of {len(own)}), wrong shapes {wrong[:4]} "
                         "(a classifier of the detector's backbone arch is expected, e.g. mobilenet_v3_large)")
    body.load_state_dict({k: state[k] for k in own})


class DownstreamClassifier(nn.Module):
    """Any torchvision classification model on [0, 1] images.

    Args:
        arch: a torchvision classification builder name (``resnet50``, ``resnet18``, ``vit_b_16``, ...).
        num_classes: output classes (1000 for torchvision's ImageNet weights).
        weights: local weights file; ``None`` looks for torchvision's default file in the hub cache.
        random_init: build an untrained network (for training from scratch); excludes ``weights``.
        input_size: images are resized (bilinear, antialiased) to this square side before the
            network; ``None`` keeps their size (CNNs with global pooling take any size).
        mean, std: normalisation applied inside (ImageNet's by default).
    """

    def __init__(self, arch: str = "resnet50", num_classes: int = 1000, weights: str | None = None,
                 random_init: bool = False, input_size: int | None = 224,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        from torchvision.models import get_model

        path = resolve_weights(arch, weights, random_init, f"DownstreamClassifier({arch})")
        self.arch, self.num_classes, self.input_size = arch, num_classes, input_size
        self.model = get_model(arch, weights=None, num_classes=num_classes)
        if path is not None:
            load_downstream_state(self.model, path, f"DownstreamClassifier({arch})")
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DownstreamClassifier expects (N, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        if self.input_size is not None and tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.model(self.preprocess(images))


class DownstreamDetector(nn.Module):
    """A torchvision Faster R-CNN on [0, 1] images (``fasterrcnn_mobilenet_v3_large_320_fpn`` for CPU).

    Args:
        arch: a torchvision detection builder (``fasterrcnn_resnet50_fpn``,
            ``fasterrcnn_mobilenet_v3_large_320_fpn``, ...).
        num_classes: classes including background (91 for torchvision's COCO weights).
        weights: local weights file; ``None`` looks for torchvision's default file in the hub cache.
        random_init: build an untrained network (``weights_backbone`` stays ``None``: nothing is downloaded).
        backbone_weights: with ``random_init``, a local classifier weights file for the backbone
            (what torchvision's ``weights_backbone`` would download: ``mobilenet_v3_large-*.pth`` /
            ``resnet50-*.pth``, or a lit-sr ``ClassifierModule`` checkpoint of that arch); the
            FPN, RPN and box heads stay random. :func:`load_backbone_state` says what must fit.
        min_size, max_size: the detector's internal resize (its transform also normalises);
            ``None`` keeps the builder's default (320 for the ``_320_`` variant, 800 otherwise).
        trainable_backbone_layers: as in torchvision (only matters when training).
        score_thresh: detections below this score are dropped (torchvision's ``box_score_thresh``).
        box_batch_size_per_image: RoI samples per image for the box head's loss (torchvision's default
            512; ``None`` keeps it). Only matters when training: the box head runs on every sample,
            and the shapes images hold one or two objects (``benchmarks/detector_step.py`` times it).
        representation_size: width of the box head's two fully connected layers (torchvision's
            ``TwoMLPHead``; 1024 in torchvision, ``None`` keeps it). The first layer has
            ``256 * 7 * 7 * representation_size`` weights, most of the light detector's parameters,
            so 256 trains faster on a CPU (``benchmarks/detector_step.py``); a checkpoint loads only
            into the width it was trained with.

    ``forward(images)`` in eval mode returns torchvision's list of ``{"boxes", "labels", "scores"}``;
    in train mode ``forward(images, targets)`` returns its loss dict.
    """

    def __init__(self, arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes: int = 91,
                 weights: str | None = None, random_init: bool = False, min_size: int | None = None,
                 max_size: int | None = None, trainable_backbone_layers: int | None = None,
                 score_thresh: float = 0.05, box_batch_size_per_image: int | None = None,
                 representation_size: int | None = None, backbone_weights: str | os.PathLike | None = None):
        super().__init__()
        from torchvision.models import get_model

        owner = f"DownstreamDetector({arch})"
        if backbone_weights is not None and not random_init:
            raise ValueError(f"{owner}: backbone_weights={str(backbone_weights)!r} initialises a detector trained from "
                             "scratch; give it with random_init=True (a full weights file already holds the backbone)")
        if backbone_weights is not None and not Path(backbone_weights).is_file():
            raise MissingWeightsError(f"{owner}: backbone weights file not found: {backbone_weights}. lit-sr never "
                                      "downloads; pass the path of a local classifier .pth / .ckpt of the backbone")
        path = resolve_weights(arch, weights, random_init, owner)
        self.arch, self.num_classes = arch, num_classes
        kwargs = {"box_score_thresh": score_thresh}
        if min_size is not None:
            kwargs["min_size"] = min_size
        if max_size is not None:
            kwargs["max_size"] = max_size
        if trainable_backbone_layers is not None:
            kwargs["trainable_backbone_layers"] = trainable_backbone_layers
        if box_batch_size_per_image is not None:
            kwargs["box_batch_size_per_image"] = check_int(box_batch_size_per_image, "box_batch_size_per_image", 1)
        self.model = get_model(arch, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        if representation_size is not None:
            self._narrow_box_head(check_int(representation_size, "representation_size", 1))
        if backbone_weights is not None:
            load_backbone_state(self.model.backbone.body, Path(backbone_weights), owner)
        if path is not None:
            load_downstream_state(self.model, path, owner)

    def _narrow_box_head(self, width: int) -> None:
        """Replace the box head and predictor by ones ``width`` wide (same module names as torchvision's)."""
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        heads = self.model.roi_heads
        size = heads.box_roi_pool.output_size
        side = size[0] * size[1] if isinstance(size, list | tuple) else size * size
        heads.box_head = TwoMLPHead(self.model.backbone.out_channels * side, width)
        heads.box_predictor = FastRCNNPredictor(width, self.num_classes)

    def forward(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict] | None = None):
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"DownstreamDetector expects (N, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
            images = list(images)
        return self.model(images, targets)
