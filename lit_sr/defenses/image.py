"""Input-side defenses for SR models, each wrapping a model into a new ``nn.Module``.

Because a defense is itself a model (LR in, SR out), any attack can be run *through* it:

* **naive** evaluation: the attack is computed on the bare model, and its adversarial input is
  then fed to the defended model. This is the setting of Choi et al. (Sec. 5.3) and it flatters
  the defense.
* **adaptive** evaluation: the attack is computed on the defense module itself, so the
  gradient flows through the defense (Athalye et al., 2018). Non-differentiable steps use BPDA
  (the identity in the backward pass), randomised ones EOT (the attack averages its gradient over
  ``eot_samples`` draws; randomised defenses declare ``eot_samples`` and the attacks pick it up).

:func:`evaluate_defense` reports both numbers. A defense is only credible if the adaptive number
holds up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from lit_sr.attacks.base import Attack
from lit_sr.attacks.evaluation import attack_metrics
from lit_sr.ops import imresize
from lit_sr.validation import check_images, check_int, check_module


class Defense(nn.Module):
    """A model preceded by an input transformation; the wrapped network is ``self.model``.

    Subclasses declare ``name``, their key in a report's ``defenses`` block
    (:data:`INPUT_DEFENSES`).

    Args:
        model: the SR network to protect.
    """

    name: ClassVar[str] = "identity"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = check_module(model, "model")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The input transformation (identity here)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


def _straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (y - x).detach()


def _shrink_and_restore(x: torch.Tensor, shrink: int, antialiasing: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    if shrink >= min(h, w):
        raise ValueError(f"cannot shrink a {h}x{w} input by {shrink} pixels")
    small = imresize(x, size=(h - shrink, w - shrink), antialiasing=antialiasing)
    return imresize(small, size=(h, w), antialiasing=antialiasing)


class ResizeDefense(Defense):
    """Shrink the input by ``shrink`` pixels per side length and resize it back (Choi et al. Sec. 5.3).

    Both resizes are MATLAB-compatible bicubic (:func:`lit_sr.ops.imresize`: two matrix products,
    so the defense is differentiable and an adaptive attack needs no BPDA). The result is not
    clamped: bicubic overshoot is tiny and clamping would zero the gradient there.

    Args:
        model: the SR network.
        shrink: pixels removed from height and width before resizing back (the paper: 1).
        antialiasing: MATLAB's antialiasing when shrinking.
    """

    name: ClassVar[str] = "resize"

    def __init__(self, model: nn.Module, shrink: int = 1, antialiasing: bool = True):
        super().__init__(model)
        self.shrink = check_int(shrink, "shrink", 1)
        self.antialiasing = antialiasing

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return _shrink_and_restore(x, self.shrink, self.antialiasing)


class RandomResizeDefense(Defense):
    """Shrink by a random number of pixels in ``[1, max_shrink]`` and resize back (randomised resize).

    The SR output must keep its size, so the randomisation of Xie et al. (2018) is reduced to a
    random shrink-and-restore; one size is drawn per forward call (the whole batch shares it).
    Because the defense is random, adaptive attacks should use EOT: the attacks in
    :mod:`lit_sr.attacks` read :attr:`eot_samples` from the model they attack and average their
    gradient over that many draws.

    Args:
        model: the SR network.
        max_shrink: largest shrink in pixels (>= 1).
        eot_samples: draws an attack should average per gradient step (the EOT budget).
        seed: seed of this module's own random stream (``None``: the global RNG).
        antialiasing: MATLAB's antialiasing when shrinking.
    """

    name: ClassVar[str] = "random_resize"

    def __init__(
        self,
        model: nn.Module,
        max_shrink: int = 3,
        eot_samples: int = 8,
        seed: int | None = None,
        antialiasing: bool = True,
    ):
        super().__init__(model)
        self.max_shrink = check_int(max_shrink, "max_shrink", 1)
        self.eot_samples = check_int(eot_samples, "eot_samples", 1)
        self.antialiasing = antialiasing
        self._generator = None if seed is None else torch.Generator().manual_seed(check_int(seed, "seed", 0))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        shrink = int(torch.randint(1, self.max_shrink + 1, (1,), generator=self._generator).item())
        return _shrink_and_restore(x, shrink, self.antialiasing)


_VIEWS = tuple((rotations, flip) for flip in (False, True) for rotations in range(4))


def _to_view(x: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, rotations, dims=(-2, -1))


def _from_view(y: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
    y = torch.rot90(y, -rotations, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if flip else y


class SelfEnsemble(Defense):
    """Geometric self-ensemble x8 (EDSR; Choi et al. Sec. 5.3): the mean over flips and 90-degree rotations.

    The views are stacked along the batch dimension, so the model runs once on ``8N`` images
    (twice on ``4N`` each when the input is not square, since rotation swaps height and width).
    Every view is mapped back before averaging, so an equivariant model (bicubic) is unchanged.

    Args:
        model: the SR network.
    """

    name: ClassVar[str] = "self_ensemble"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        groups = [_VIEWS] if h == w else [tuple(v for v in _VIEWS if v[0] % 2 == parity) for parity in (0, 1)]
        total = None
        for views in groups:
            batch = torch.cat([_to_view(x, r, f) for r, f in views])
            outputs = self.model(batch).chunk(len(views))
            restored = sum(_from_view(y, r, f) for y, (r, f) in zip(outputs, views))
            total = restored if total is None else total + restored
        return total / len(_VIEWS)


class JPEGDefense(Defense):
    """JPEG-compress the input before super-resolving it.

    ``differentiable=True`` uses kornia's differentiable JPEG (:func:`kornia.enhance.jpeg_codec_differentiable`,
    Reich et al. 2024), an approximation of the codec with smooth rounding, so adaptive attacks
    get a real gradient. ``differentiable=False`` runs the real codec (libjpeg via
    ``torchvision.io``, on the CPU, 8-bit 4:2:0) and passes the identity gradient backwards
    (BPDA). JPEG is far from smooth, so neither gradient is a reliable guide: an attack computed
    on the bare model can transfer better than either (the HR-reference I-FGSM does on 16-px
    crops); report ``worst_*`` of :func:`evaluate_defense`.

    Args:
        model: the SR network.
        quality: JPEG quality in [1, 100].
        differentiable: kornia's differentiable codec (True) or the real codec with BPDA (False).
    """

    name: ClassVar[str] = "jpeg"

    def __init__(self, model: nn.Module, quality: int = 75, differentiable: bool = True):
        super().__init__(model)
        self.quality = check_int(quality, "quality", 1, 100)
        self.differentiable = bool(differentiable)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            from kornia.enhance import jpeg_codec_differentiable

            quality = torch.tensor([float(self.quality)], device=x.device, dtype=torch.float32)
            return jpeg_codec_differentiable(x.float().clamp(0, 1), quality).to(x.dtype)
        return _straight_through(x, self._real_jpeg(x))

    def _real_jpeg(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.io import decode_jpeg, encode_jpeg

        with torch.no_grad():
            images = list((x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
            decoded = decode_jpeg(encode_jpeg(images, quality=self.quality))
            return torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255.0


class BitDepthReduction(Defense):
    """Quantise the input to ``bits`` bits per channel (feature squeezing, Xu et al. 2018).

    Rounding has a zero gradient almost everywhere, which masks gradients rather than removing
    the vulnerability. With ``bpda=True`` the backward pass treats the quantiser as the identity
    (Athalye et al.'s BPDA), so adaptive attacks see the model's real gradient.

    Args:
        model: the SR network.
        bits: bits per channel in [1, 8].
        bpda: straight-through gradient (True) or the true, zero gradient of rounding (False).
    """

    name: ClassVar[str] = "bit_depth"

    def __init__(self, model: nn.Module, bits: int = 4, bpda: bool = True):
        super().__init__(model)
        self.bits = check_int(bits, "bits", 1, 8)
        self.bpda = bool(bpda)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        quantised = torch.round(x.clamp(0, 1) * levels) / levels
        return _straight_through(x, quantised) if self.bpda else quantised


def evaluate_defense(
    model: nn.Module,
    defense: nn.Module,
    lr: torch.Tensor,
    attack_factory: Callable[[nn.Module], Attack],
    hr: torch.Tensor | None = None,
    crop_border: int = 0,
    y_channel: bool = False,
) -> dict[str, torch.Tensor]:
    """Naive and adaptive robustness of a defense, per image (float64 ``(N,)`` CPU tensors).

    Keys (``*_hr_psnr`` only with ``hr``):
        ``undefended_sr_psnr``: the bare model attacked and evaluated (the baseline).
        ``naive_sr_psnr``: the attack computed on the bare model, evaluated through the defense.
        ``adaptive_sr_psnr``: the attack computed through the defense, evaluated through it.
        ``worst_sr_psnr``: the per-image minimum of the two, the number to report: a gradient
        through a rough transformation (JPEG) can be a worse guide than the bare model's.
        ``naive_hr_psnr``, ``adaptive_hr_psnr``, ``worst_hr_psnr``, ``clean_hr_psnr``: the same against HR, and the
        defended model's clean quality.
    SR PSNR is measured against the output of the same (defended or bare) model on the clean
    input.

    Args:
        model: the bare SR network.
        defense: a defense wrapping it (e.g. ``ResizeDefense(model)``).
        lr: ``(N, C, H, W)`` LR batch in [0, 1].
        attack_factory: ``nn.Module -> Attack``, e.g. ``lambda m: IFGSM(m, 8/255, 50, reference="hr")``;
            called with ``atk(lr, hr=hr)`` when ``hr`` is given, else ``atk(lr)``.
        hr: optional HR batch.
        crop_border, y_channel: PSNR convention.
    """
    check_images(lr, "lr", value_range=True)

    def attack(target: nn.Module) -> torch.Tensor:
        atk = attack_factory(target)
        return atk(lr, hr=hr) if hr is not None else atk(lr)

    naive_adv = attack(model)
    adaptive_adv = attack(defense)
    kwargs = {"hr": hr, "crop_border": crop_border, "y_channel": y_channel}
    bare = attack_metrics(model, lr, naive_adv, **kwargs)
    naive = attack_metrics(defense, lr, naive_adv, **kwargs)
    adaptive = attack_metrics(defense, lr, adaptive_adv, **kwargs)
    out = {
        "undefended_sr_psnr": bare["sr_psnr"],
        "naive_sr_psnr": naive["sr_psnr"],
        "adaptive_sr_psnr": adaptive["sr_psnr"],
        "worst_sr_psnr": torch.minimum(naive["sr_psnr"], adaptive["sr_psnr"]),
    }
    if hr is not None:
        out.update(
            naive_hr_psnr=naive["hr_psnr"],
            adaptive_hr_psnr=adaptive["hr_psnr"],
            worst_hr_psnr=torch.minimum(naive["hr_psnr"], adaptive["hr_psnr"]),
            clean_hr_psnr=naive["clean_hr_psnr"],
        )
    return out


INPUT_DEFENSES: dict[str, type[Defense]] = {
    cls.name: cls for cls in (ResizeDefense, RandomResizeDefense, SelfEnsemble, JPEGDefense, BitDepthReduction)
}
"""The input defenses a report's ``defenses`` block names, by their own ``name`` (a new one: one class, one entry)."""
