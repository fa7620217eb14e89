"""Losses for SR training: pixel losses, GAN losses (incl. relativistic average), VGG perceptual loss.

Offline by design: the VGG weights of :class:`VGGFeatureExtractor` / :class:`PerceptualLoss` come from a
local file (``weights_path`` or torchvision's file in the torch hub cache); nothing is downloaded, and
a missing file raises ``FileNotFoundError`` rather than running on random weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from lit_sr.io import load_checkpoint
from lit_sr.validation import check_choice, check_positive

# ----------------------------------------------------------------------------------------------
# Pixel losses
# ----------------------------------------------------------------------------------------------

PixelLoss = Literal["l1", "mse", "l2", "charbonnier"]
Reduction = Literal["mean", "sum", "none"]
_PIXEL_LOSSES: tuple[str, ...] = get_args(PixelLoss)
_REDUCTIONS: tuple[str, ...] = get_args(Reduction)


class CharbonnierLoss(nn.Module):
    """Charbonnier loss ``sqrt((pred - target)^2 + eps^2)``, a differentiable L1.

    ``eps`` is on the [0, 1] pixel scale and enters squared (LapSRN's form), so the loss of a perfect
    prediction is ``eps``, not 0. BasicSR's ``CharbonnierLoss`` adds its ``eps`` (default 1e-12)
    without squaring; the default ``eps=1e-6`` here equals BasicSR's default. LapSRN used 1e-3.

    Args:
        eps: smoothing on the [0, 1] scale (1e-6).
        reduction: 'mean', 'sum' or 'none'.
    """

    def __init__(self, eps: float = 1e-6, reduction: Reduction = "mean"):
        super().__init__()
        check_positive(eps, "Charbonnier eps")
        check_choice(reduction, "reduction", _REDUCTIONS)
        self.eps = float(eps)
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = torch.sqrt((pred - target).square() + self.eps**2)
        return _reduce(loss, self.reduction)


def build_pixel_loss(name: PixelLoss, eps: float = 1e-6, reduction: Reduction = "mean") -> nn.Module:
    """Pixel loss by name.

    Args:
        name: 'l1', 'mse' (alias 'l2') or 'charbonnier' (case-insensitive).
        eps: Charbonnier smoothing on the [0, 1] scale (ignored by the others).
        reduction: 'mean', 'sum' or 'none'.

    Returns:
        A module called as ``loss(pred, target)``.
    """
    key = str(name).lower()
    check_choice(reduction, "reduction", _REDUCTIONS)
    if key == "l1":
        return nn.L1Loss(reduction=reduction)
    if key in ("mse", "l2"):
        return nn.MSELoss(reduction=reduction)
    if key == "charbonnier":
        return CharbonnierLoss(eps=eps, reduction=reduction)
    raise ValueError(f"unknown pixel loss {name!r}; expected one of {_PIXEL_LOSSES}")


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ----------------------------------------------------------------------------------------------
# GAN losses
# ----------------------------------------------------------------------------------------------

GanType = Literal["vanilla", "lsgan", "hinge", "wgan"]
_GAN_TYPES: tuple[str, ...] = get_args(GanType)


class GANLoss(nn.Module):
    """Adversarial loss on discriminator logits, with BasicSR's semantics.

    - 'vanilla': binary cross-entropy with logits against the real / fake label.
    - 'lsgan': mean squared error against the real / fake label.
    - 'wgan': ``-mean(x)`` for real, ``mean(x)`` for fake.
    - 'hinge': discriminator ``mean(relu(1 - x))`` for real, ``mean(relu(1 + x))`` for fake;
      generator ``-mean(x)`` (only ``target_is_real=True`` makes sense there).

    ``loss_weight`` multiplies the generator's loss only (``is_disc=False``), as in BasicSR, where
    the discriminator is trained on the bare loss.

    Args:
        gan_type: 'vanilla', 'lsgan', 'hinge' or 'wgan'.
        real_label_val: target for real samples ('vanilla', 'lsgan').
        fake_label_val: target for fake samples ('vanilla', 'lsgan').
        loss_weight: weight of the generator loss.
    """

    def __init__(
        self, gan_type: GanType = "vanilla", real_label_val: float = 1.0, fake_label_val: float = 0.0,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        check_choice(gan_type, "gan_type", _GAN_TYPES)
        self.gan_type = gan_type
        self.real_label_val = float(real_label_val)
        self.fake_label_val = float(fake_label_val)
        self.loss_weight = float(loss_weight)

    def forward(
        self, input: torch.Tensor, target_is_real: bool, is_disc: bool = False
    ) -> torch.Tensor:
        """Loss of the logits ``input`` for the given target.

        Args:
            input: discriminator logits, any shape.
            target_is_real: whether the target is the real class.
            is_disc: computing the discriminator's loss (no ``loss_weight``; the hinge form differs).
        """
        loss = self._loss(input.float(), target_is_real, is_disc)
        return loss if is_disc else loss * self.loss_weight

    def _loss(self, x: torch.Tensor, target_is_real: bool, is_disc: bool) -> torch.Tensor:
        if self.gan_type == "wgan":
            return -x.mean() if target_is_real else x.mean()
        if self.gan_type == "hinge":
            if is_disc:
                return F.relu(1 - x).mean() if target_is_real else F.relu(1 + x).mean()
            if not target_is_real:
                raise ValueError(
                    "the hinge generator loss pushes fakes towards real: call with target_is_real=True"
                )
            return -x.mean()
        label = torch.full_like(x, self.real_label_val if target_is_real else self.fake_label_val)
        if self.gan_type == "vanilla":
            return F.binary_cross_entropy_with_logits(x, label)
        return F.mse_loss(x, label)


def ragan_d_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor, detach_mean: bool = False) -> torch.Tensor:
    """Relativistic average discriminator loss (Jolicoeur-Martineau 2018; ESRGAN Eq. 2).

    ``0.5 * (BCE(C(real) - E[C(fake)], 1) + BCE(C(fake) - E[C(real)], 0))`` with C the logits and
    E the mean over the batch (and pixels, for a U-Net discriminator). It falls as real logits rise
    above fake ones.

    Args:
        real_pred: logits of real images.
        fake_pred: logits of generated images (detached from the generator by the caller).
        detach_mean: stop the gradient through each term's mean of the other set. False gives the
            full gradient of the loss (the paper and the original ESRGAN code); True reproduces
            BasicSR's ``ESRGANModel``, which splits the two terms into separate backward passes.
    """
    _check_preds(real_pred, fake_pred)
    real, fake = real_pred.float(), fake_pred.float()
    fake_mean = fake.mean().detach() if detach_mean else fake.mean()
    real_mean = real.mean().detach() if detach_mean else real.mean()
    loss_real = F.binary_cross_entropy_with_logits(real - fake_mean, torch.ones_like(real))
    loss_fake = F.binary_cross_entropy_with_logits(fake - real_mean, torch.zeros_like(fake))
    return 0.5 * (loss_real + loss_fake)


def ragan_g_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Relativistic average generator loss (ESRGAN Eq. 3): the discriminator's loss with labels swapped.

    ``0.5 * (BCE(C(real) - E[C(fake)], 0) + BCE(C(fake) - E[C(real)], 1))``. The real logits are
    detached (the generator step never updates the discriminator, as in ESRGAN); the gradient flows
    through ``fake_pred`` in both terms. It falls as fake logits rise above real ones.

    Args:
        real_pred: logits of real images.
        fake_pred: logits of generated images, attached to the generator's graph.
    """
    _check_preds(real_pred, fake_pred)
    real, fake = real_pred.detach().float(), fake_pred.float()
    loss_real = F.binary_cross_entropy_with_logits(real - fake.mean(), torch.zeros_like(real))
    loss_fake = F.binary_cross_entropy_with_logits(fake - real.mean(), torch.ones_like(fake))
    return 0.5 * (loss_real + loss_fake)


def _check_preds(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> None:
    for name, pred in (("real_pred", real_pred), ("fake_pred", fake_pred)):
        if not isinstance(pred, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of logits, got {type(pred).__name__}")
        if pred.numel() == 0:
            raise ValueError(f"{name} is empty")


# ----------------------------------------------------------------------------------------------
# VGG features and perceptual loss
# ----------------------------------------------------------------------------------------------

# Convolutions per block (torchvision's VGG configurations A, B, D, E).
_VGG_BLOCKS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_VGG_WIDTHS = (64, 128, 256, 512, 512)
VggType = Literal["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
# torchvision's ImageNet weight files, as named in the torch hub cache.
VGG_WEIGHT_FILES: dict[VggType, str] = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(vgg_type: VggType = "vgg19") -> list[str]:
    """BasicSR's layer names in torchvision's ``features`` order: conv1_1, (bn1_1,) relu1_1, ..., pool5."""
    check_choice(vgg_type, "vgg_type", sorted(VGG_WEIGHT_FILES))
    with_bn = vgg_type.endswith("_bn")
    names: list[str] = []
    for block, num_convs in enumerate(_VGG_BLOCKS[vgg_type.removesuffix("_bn")], start=1):
        for i in range(1, num_convs + 1):
            names += [f"conv{block}_{i}"] + ([f"bn{block}_{i}"] if with_bn else []) + [f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


def default_vgg_weights_path(vgg_type: VggType = "vgg19") -> Path:
    """Where torchvision caches the ImageNet weights of ``vgg_type``:
    ``<torch hub dir>/checkpoints/<file>``."""
    check_choice(vgg_type, "vgg_type", sorted(VGG_WEIGHT_FILES))
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_WEIGHT_FILES[vgg_type]


class VGGFeatureExtractor(nn.Module):
    """Frozen torchvision VGG features with BasicSR's layer names.

    Only the layers up to the deepest requested one are built. The network is always frozen
    (``requires_grad=False``) and stays in eval mode, so batch-norm variants never update their
    statistics. ReLUs are not in-place, so a conv's output is returned as is.

    Args:
        layer_name_list: layers whose outputs are returned, e.g. ``["relu1_1", "conv5_4"]``
            (names from :func:`vgg_layer_names`: conv1_1, relu1_1, conv1_2, ..., pool1, ...,
            conv5_4, relu5_4, pool5).
        vgg_type: 'vgg11', 'vgg13', 'vgg16', 'vgg19' or their '_bn' variants.
        use_input_norm: normalise [0, 1] inputs with the ImageNet mean and std first.
        range_norm: map [-1, 1] inputs to [0, 1] first.
        weights_path: torchvision's state_dict file of ``vgg_type`` (keys ``features.N.*``); default
            ``torch.hub.get_dir()/checkpoints/<file>`` (e.g. ``vgg19-dcbb9e9d.pth``).
        pretrained: load those weights. ``False`` gives a randomly initialised VGG: for tests only,
            its features are meaningless as a perceptual measure.

    Raises:
        FileNotFoundError: ``pretrained`` and the weights file does not exist (nothing is downloaded).
    """

    def __init__(
        self,
        layer_name_list: Sequence[str],
        vgg_type: VggType = "vgg19",
        use_input_norm: bool = True,
        range_norm: bool = False,
        weights_path: str | Path | None = None,
        pretrained: bool = True,
    ):
        super().__init__()
        names = vgg_layer_names(vgg_type)
        layer_name_list = list(layer_name_list)
        unknown = [n for n in layer_name_list if n not in names]
        if not layer_name_list or unknown:
            raise ValueError(f"layer_name_list {layer_name_list} must be non-empty names from {names}")
        self.layer_name_list = layer_name_list
        self.vgg_type = vgg_type
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        last = max(names.index(n) for n in layer_name_list)
        self.vgg_net = _build_vgg_layers(names[: last + 1])
        if pretrained:
            _load_torchvision_vgg(self.vgg_net, vgg_type, weights_path)
        self.vgg_net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        """Keep the frozen VGG in eval mode whatever the parent module does."""
        super().train(mode)
        self.vgg_net.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) images -> {layer name: features} for the requested layers."""
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        wanted = set(self.layer_name_list)
        out: dict[str, torch.Tensor] = {}
        for name, layer in self.vgg_net.named_children():
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out


def _build_vgg_layers(names: Sequence[str]) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = 3
    for name in names:
        if name.startswith("conv"):
            block = int(name[4])
            layers[name] = nn.Conv2d(in_ch, _VGG_WIDTHS[block - 1], 3, 1, 1)
            in_ch = _VGG_WIDTHS[block - 1]
        elif name.startswith("bn"):
            layers[name] = nn.BatchNorm2d(in_ch)
        elif name.startswith("relu"):
            layers[name] = nn.ReLU(inplace=False)
        else:
            layers[name] = nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Sequential(layers)


def _load_torchvision_vgg(vgg_net: nn.Sequential, vgg_type: VggType, weights_path: str | Path | None) -> None:
    """Copy torchvision's ``features.{index}.*`` tensors into the named layers (index = position)."""
    path = Path(weights_path) if weights_path is not None else default_vgg_weights_path(vgg_type)
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG weights for {vgg_type!r} not found at {path}. lit-sr never downloads them: place "
            f"torchvision's {VGG_WEIGHT_FILES[vgg_type]} (https://download.pytorch.org/models/"
            f"{VGG_WEIGHT_FILES[vgg_type]}) in {path.parent} or pass weights_path='/path/to/"
            f"{VGG_WEIGHT_FILES[vgg_type]}'. pretrained=False builds a random VGG (tests only)."
        )
    state = load_checkpoint(path)  # weights_only=True; refusals name the file
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    remapped = {}
    for index, (name, layer) in enumerate(vgg_net.named_children()):
        for key in layer.state_dict():
            source = f"features.{index}.{key}"
            if source not in state:
                raise ValueError(
                    f"{path} has no key {source!r} (layer {name} of {vgg_type}); expected torchvision's "
                    f"{vgg_type} state_dict with 'features.N.*' keys"
                )
            remapped[f"{name}.{key}"] = state[source]
    vgg_net.load_state_dict(remapped, strict=True)


Criterion = Literal["l1", "l2", "fro"]
_CRITERIA: tuple[str, ...] = get_args(Criterion)


class PerceptualLoss(nn.Module):
    """Weighted distance between VGG features of the prediction and of the target (ESRGAN: conv5_4
    before activation, L1).

    ``loss = perceptual_weight * sum_k layer_weights[k] * criterion(vgg_k(pred), vgg_k(target))``;
    the target's features are computed without gradient.

    Args:
        layer_weights: {layer name: weight}, e.g. ``{"conv5_4": 1.0}`` (ESRGAN) or
            ``{"relu1_1": 0.1, "relu2_1": 0.1, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0}``.
        vgg_type: VGG variant ('vgg19').
        use_input_norm: normalise inputs with the ImageNet mean and std.
        perceptual_weight: overall weight; 0 skips the VGG pass and returns 0.
        criterion: 'l1', 'l2' (mean squared error) or 'fro' (Frobenius norm of the difference).
        weights_path: torchvision's VGG weight file (default: the torch hub cache; see
            :class:`VGGFeatureExtractor`).
        pretrained: load the VGG weights; ``False`` is a random VGG, for tests only.
        range_norm: inputs are in [-1, 1] rather than [0, 1].

    Raises:
        FileNotFoundError: ``pretrained`` and the weights file is missing.
    """

    def __init__(
        self,
        layer_weights: Mapping[str, float],
        vgg_type: VggType = "vgg19",
        use_input_norm: bool = True,
        perceptual_weight: float = 1.0,
        criterion: Criterion = "l1",
        weights_path: str | Path | None = None,
        pretrained: bool = True,
        range_norm: bool = False,
    ):
        super().__init__()
        check_choice(criterion, "criterion", _CRITERIA)
        if not layer_weights:
            raise ValueError("layer_weights must name at least one VGG layer")
        self.layer_weights = {str(k): float(v) for k, v in layer_weights.items()}
        self.perceptual_weight = float(perceptual_weight)
        self.criterion = criterion
        self.vgg = VGGFeatureExtractor(
            list(self.layer_weights), vgg_type, use_input_norm, range_norm, weights_path, pretrained
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar perceptual loss of ``pred`` against ``target`` (both (N, 3, H, W))."""
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
            )
        if self.perceptual_weight == 0:
            return pred.new_zeros(())
        pred_feats = self.vgg(pred)
        with torch.no_grad():
            target_feats = self.vgg(target.detach())
        loss = pred.new_zeros((), dtype=torch.float32)
        for name, weight in self.layer_weights.items():
            loss = loss + weight * self._distance(pred_feats[name].float(), target_feats[name].float())
        return loss * self.perceptual_weight

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion == "l1":
            return F.l1_loss(a, b)
        if self.criterion == "l2":
            return F.mse_loss(a, b)
        return torch.linalg.vector_norm(a - b)


PERCEPTUAL_PREFIX = "perceptual_loss."


def drop_frozen_perceptual(checkpoint: dict, prefix: str = PERCEPTUAL_PREFIX) -> None:
    """Remove a frozen perceptual network's tensors (``prefix``) from a Lightning checkpoint.

    Its weights come from the local VGG file the module was built with, so storing them in every
    checkpoint would only copy that file.
    """
    state = checkpoint.get("state_dict")
    if isinstance(state, Mapping):
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]


def restore_frozen_perceptual(checkpoint: dict, perceptual: nn.Module | None, prefix: str = PERCEPTUAL_PREFIX) -> None:
    """Put ``perceptual``'s tensors back into a checkpoint so that strict loading succeeds."""
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and perceptual is not None:
        for key, value in perceptual.state_dict(prefix=prefix).items():
            state.setdefault(key, value)
