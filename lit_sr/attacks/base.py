"""The attack base class and the helpers every attack shares.

An attack is an object built once with its hyper-parameters (validated up front, as in ART and
torchattacks) and called on batches: ``x_adv = atk(lr, hr=hr)``. While it runs, the model is put
in eval mode with every parameter frozen; both are restored afterwards, module by module and flag
by flag, even when the model raises. Gradients are only ever taken with respect to the input
(``torch.autograd.grad``), so no ``.grad`` is left on the model. Attacks leave
``torch.inference_mode`` themselves, so they can be called from Lightning's validation hooks.

Conventions: images are float32 NCHW in [0, 1]; ``eps`` is an L_inf budget on the [0, 1] scale;
the perturbation is always float32, even when the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from torch import nn

from lit_sr.runtime import (
    Autocast,
    autocast_context,
    autocast_dtype,
    frozen_eval,
    grad_enabled_outside_inference,
    model_device,
)
from lit_sr.validation import (
    check_bool,
    check_choice,
    check_eps,
    check_images,
    check_int,
    check_module,
    check_positive,
)

# Re-exported: attack modules and older callers import these from here; they live in
# lit_sr.validation and lit_sr.runtime (one implementation each).
__all__ = [
    "LOSSES",
    "Attack",
    "Autocast",
    "LossFn",
    "LossName",
    "autocast_context",
    "check_bool",
    "check_choice",
    "check_eps",
    "check_images",
    "check_int",
    "check_module",
    "check_positive",
    "frozen_eval",
    "grad_enabled_outside_inference",
    "l2_loss",
    "make_generator",
    "model_device",
    "mse_loss",
    "resolve_loss",
    "sse_loss",
    "uniform_like",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossName = Literal["sse", "mse", "l2"]


# --------------------------------------------------------------------------- losses


def sse_loss(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance summed over each image, shape ``(N,)`` (the official code's loss)."""
    return (sr - ref).pow(2).flatten(1).sum(dim=1)


def mse_loss(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over each image's pixels, shape ``(N,)``."""
    return (sr - ref).pow(2).flatten(1).mean(dim=1)


def l2_loss(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Non-squared L2 norm of each image's difference, shape ``(N,)`` (the paper's Eq. 1).

    Its gradient is undefined where the difference is exactly zero; PyTorch's norm backward
    returns 0 there (a valid subgradient), so no NaN can appear.
    """
    return torch.linalg.vector_norm((sr - ref).flatten(1), ord=2, dim=1)


LOSSES: dict[LossName, LossFn] = {"sse": sse_loss, "mse": mse_loss, "l2": l2_loss}


def resolve_loss(loss: LossName | LossFn) -> LossFn:
    """Map a loss name (``"sse"``, ``"mse"``, ``"l2"``) or a callable to a per-sample loss function.

    A callable must take ``(sr, ref)`` and return one value per image, shape ``(N,)``.
    For sign-gradient attacks on single images the three built-in losses give the same steps
    (each is a monotone function of the per-image squared distance); they differ where images
    are weighted against each other (the universal attack) or the gradient's size matters (the
    robustness index).
    """
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
        return LOSSES[loss]
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a string or a callable(sr, ref) -> (N,) tensor, got {type(loss).__name__}")


# --------------------------------------------------------------------------- random draws


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``, or ``None`` (the global RNG) when no seed."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def uniform_like(x: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise in [low, high) with the shape, dtype and device of ``x``."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return noise * (high - low) + low


# --------------------------------------------------------------------------- the base class


class Attack:
    """Base class of the attacks: validation, model state, device, autocast, loss and projection.

    Subclasses implement :meth:`forward`; users call the object. ``__call__`` runs ``forward``
    with the model in eval mode and frozen, outside inference mode, with autograd on, and
    restores the model afterwards.

    Args:
        model: any ``nn.Module`` mapping a [0, 1] LR batch to its SR batch.
        eps: L_inf budget in (0, 1] on the [0, 1] pixel scale.
        loss: ``"sse"`` (default: squared L2 distance summed per image, as the official code),
            ``"mse"``, ``"l2"`` (the paper's non-squared Eq. 1), or a callable ``(sr, ref) -> (N,)``.
            The per-image losses are summed over the batch, so each image's gradient is the
            gradient of its own loss.
        autocast: ``"none"`` (float32, the default) or ``"bf16"``: the model's forward runs
            under bf16 autocast, the perturbation and the loss stay float32
            (:data:`lit_sr.runtime.Autocast`).
        eot_samples: forward passes averaged per gradient (Expectation over Transformation, for
            randomised models/defenses). ``None`` reads ``model.eot_samples`` when the model
            declares one (e.g. :class:`lit_sr.defenses.RandomResizeDefense`), else 1.
        seed: seed of the attack's random choices (random start, random squares); ``None`` uses
            the global RNG. With a seed, every call draws the same noise for the same shape.
    """

    name: ClassVar[str] = "attack"
    # Called as ``atk(lr, hr=hr)`` on whole images, its damage measured on the whole image: such an
    # attack can run in the transfer matrix, through the input defenses, in robust fine-tuning and
    # in the worst case (lit_sr.attacks.registry.plain_kinds). Partial, universal and targeted are not.
    plain: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        self.model = check_module(model, "model")
        self.eps = check_eps(eps)
        self.loss = loss
        self.loss_fn = resolve_loss(loss)
        autocast_dtype(autocast)  # raises on anything but "none" / "bf16", naming the argument
        self.autocast: Autocast = autocast
        if eot_samples is None:
            eot_samples = getattr(model, "eot_samples", 1)
        self.eot_samples = check_int(eot_samples, "eot_samples", 1)
        if seed is not None:
            check_int(seed, "seed", 0)
        self.seed = seed

    # ------------------------------------------------------------------ calling

    def __call__(self, lr: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with self.attack_mode():
            return self.forward(lr, *args, **kwargs)

    def forward(self, lr: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Return the adversarial version of ``lr``; implemented by each attack."""
        raise NotImplementedError

    @contextmanager
    def attack_mode(self) -> Iterator[None]:
        """Frozen eval-mode model, autograd on, outside inference mode; restored on exit."""
        with grad_enabled_outside_inference(), frozen_eval(self.model):
            yield

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._describe().items())
        return f"{type(self).__name__}({fields})"

    def _describe(self) -> dict:
        return {"eps": self.eps, "loss": self.loss if isinstance(self.loss, str) else "custom"}

    # ------------------------------------------------------------------ tensors

    def device_for(self, x: torch.Tensor) -> torch.device:
        """The model's device, or the input's for stateless models."""
        return model_device(self.model, x.device)

    def prepare(
        self, x: torch.Tensor, name: str, device: torch.device, check_range: bool = True
    ) -> torch.Tensor:
        """Validate ``x`` and return a detached float32 copy on ``device``.

        The copy is made outside inference mode, so tensors created by Lightning's validation
        loop (inference tensors, which autograd refuses to save) become ordinary tensors.
        """
        if check_range:
            check_images(x, name, value_range=True)
        elif not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a (N, C, H, W) tensor, got {shape}")
        out = x.detach().to(device=device, dtype=torch.float32).clone()
        return out.clamp_(0, 1) if check_range else out

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A fresh generator seeded with ``self.seed`` (or ``None`` for the global RNG)."""
        return make_generator(self.seed, device)

    # ------------------------------------------------------------------ model and loss

    def sr(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` under the configured autocast, as float32."""
        with autocast_context(self.autocast, x.device):
            out = self.model(x)
        return out.float()

    def clean_output(self, x0: torch.Tensor) -> torch.Tensor:
        """``f(x0)`` without gradient (the reference of the paper's Eq. 1), averaged over EOT samples."""
        with torch.no_grad():
            out = self.sr(x0)
            for _ in range(self.eot_samples - 1):
                out = out + self.sr(x0)
        return out / self.eot_samples

    def per_sample_loss(
        self, x: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of each image, shape ``(N,)``, for one forward pass.

        ``weight`` (broadcastable to the output) multiplies both output and reference, i.e. the
        loss only sees the pixels where the weight is 1 (the partial attack's Eq. 9).
        """
        sr = self.sr(x)
        if sr.shape != ref.shape:
            raise ValueError(
                f"the model's output {tuple(sr.shape)} and the reference {tuple(ref.shape)} differ in "
                "shape; the reference (hr/target) must have the size of the SR output"
            )
        if weight is not None:
            sr, ref = sr * weight, ref * weight
        loss = self.loss_fn(sr, ref)
        if loss.shape != (x.shape[0],):
            raise ValueError(
                f"loss must return one value per image, shape ({x.shape[0]},), got {tuple(loss.shape)}"
            )
        return loss

    def input_gradient(
        self, x: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gradient of the summed per-image loss w.r.t. ``x`` (averaged over EOT samples).

        Only the input is differentiated (``torch.autograd.grad``), never the parameters. Each
        EOT sample is differentiated on its own, so memory does not grow with ``eot_samples``.
        """
        x = x.detach().requires_grad_(True)
        grad = torch.zeros_like(x)
        for _ in range(self.eot_samples):
            loss = self.per_sample_loss(x, ref, weight).sum()
            grad += torch.autograd.grad(loss, x)[0]
        return grad / self.eot_samples

    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Eq. (2)-(3): clip to [0, 1], then to the L_inf ball of radius eps around ``x0``.

        A last clamp to [0, 1] only absorbs float rounding of ``x0 + (x - x0)``.
        """
        x = x.clamp(0, 1)
        return (x0 + (x - x0).clamp(-self.eps, self.eps)).clamp(0, 1)
