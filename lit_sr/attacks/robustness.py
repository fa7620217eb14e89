"""Attack-agnostic robustness index (Sec. 5.2) and transferability matrix (Fig. 4) of Choi et al."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from lit_sr.attacks.base import Attack, LossFn, LossName, make_generator, resolve_loss
from lit_sr.attacks.ifgsm import IFGSM
from lit_sr.metrics import psnr
from lit_sr.runtime import frozen_eval, grad_enabled_outside_inference, model_device
from lit_sr.validation import check_eps, check_images, check_int, check_module


def robustness_index(
    model: nn.Module,
    lr: torch.Tensor,
    alpha: float = 1 / 255,
    n_samples: int = 1024,
    batch_size: int = 64,
    loss: LossName | LossFn = "l2",
    seed: int | None = None,
) -> torch.Tensor:
    """Per-image robustness index: ``max_i || grad_X L(X0 + Delta_i, X0) ||_1`` over random Delta_i.

    The CLEVER-style measure of Sec. 5.2: ``n_samples`` perturbations uniform in
    ``[-alpha, alpha]`` per pixel; for each, the L1 norm of the gradient of Eq. (1),
    ``L = ||f(X) - f(X0)||_2``, with respect to the input; the index is the maximum. Larger
    means more vulnerable.

    Eq. (1) uses the non-squared norm, whose gradient is undefined where ``f(X) = f(X0)``. A
    random Delta is never exactly 0, so this does not arise in practice; if an output
    coincides anyway, PyTorch's norm backward gives the zero subgradient. The perturbed input is
    ``X0 + Delta`` without clipping to [0, 1] (the paper does not clip), so every sample has the
    same distribution around X0.

    Always computed in float32: with alpha = 1/255 the output moves by about as much as bf16
    rounds it (8 bits of mantissa), so under bf16 the direction ``f(X) - f(X0)`` is mostly rounding
    noise (on an H100 it halved the index of a randomly initialised EDSR-baseline).

    Batched: the (image, sample) pairs are flattened and processed ``batch_size`` at a time, each
    row holding one image with one perturbation; a row's gradient depends only on its own loss.

    Args:
        model: the SR network.
        lr: ``(N, C, H, W)`` LR batch in [0, 1].
        alpha: half-width of the uniform perturbations (the paper: 1/255).
        n_samples: perturbations per image N_s (the paper: 1024).
        batch_size: rows (image copies) per forward pass.
        loss: ``"l2"`` (Eq. 1, default), ``"sse"``, ``"mse"`` or a callable ``(sr, ref) -> (N,)``;
            the index scales with the loss, so compare models with the same one.
        seed: seed of the perturbations (``None``: global RNG).

    Returns:
        ``(N,)`` float32 tensor on the model's device.
    """
    check_module(model, "model")
    alpha = check_eps(alpha, "alpha")
    n_samples = check_int(n_samples, "n_samples", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    loss_fn = resolve_loss(loss)
    check_images(lr, "lr", value_range=True)
    with grad_enabled_outside_inference(), frozen_eval(model):
        device = model_device(model, lr.device)
        x0 = lr.detach().to(device=device, dtype=torch.float32).clone()
        with torch.no_grad():
            clean = model(x0).float()
        generator = make_generator(seed, device)
        n = x0.shape[0]
        owner = torch.arange(n, device=device).repeat_interleave(n_samples)
        index = torch.zeros(n, device=device)
        for start in range(0, owner.numel(), batch_size):
            rows = owner[start : start + batch_size]
            base = x0[rows]
            noise = torch.rand(base.shape, generator=generator, device=device) * (2 * alpha) - alpha
            x = (base + noise).requires_grad_(True)
            value = loss_fn(model(x).float(), clean[rows]).sum()
            grad = torch.autograd.grad(value, x)[0]
            norms = grad.flatten(1).abs().sum(dim=1)
            index.scatter_reduce_(0, rows, norms, reduce="amax")
    return index


def _default_attack_factory(eps: float, steps: int, with_hr: bool) -> Callable[[nn.Module], Attack]:
    # The official protocol attacks the HR loss; without HR, Eq. (1) with a random start.
    if with_hr:
        return lambda model: IFGSM(model, eps=eps, steps=steps, reference="hr")
    return lambda model: IFGSM(model, eps=eps, steps=steps, random_start=True, reference="clean", seed=0)


def transfer_matrix(
    models: Mapping[str, nn.Module],
    lr: torch.Tensor,
    hr: torch.Tensor | None = None,
    attack_factory: Callable[[nn.Module], Attack] | None = None,
    eps: float = 8 / 255,
    steps: int = 50,
    batch_size: int = 16,
    crop_border: int = 0,
    y_channel: bool = False,
) -> dict:
    """Transferability of attacks between SR models (the paper's Fig. 4).

    For every source model s the batch is attacked on s; every target model t then
    super-resolves the adversarial inputs, and the PSNR of ``f_t(x_adv_s)`` against ``f_t(x)``
    (and against HR when given) is averaged over the images. The diagonal is the white-box case.

    Args:
        models: name -> SR network; all must map ``lr`` to outputs of the same size.
        lr: ``(N, C, H, W)`` LR batch in [0, 1].
        hr: optional HR batch (enables ``hr_psnr``, and the default attack then uses it).
        attack_factory: ``model -> Attack``; default ``IFGSM(eps, steps, reference="hr")`` with
            HR, or ``IFGSM(eps, steps, random_start=True, reference="clean", seed=0)`` without.
            The attack is called as ``atk(lr, hr=hr)`` (or ``atk(lr)`` without HR).
        eps, steps: parameters of the default attack.
        batch_size: images attacked and evaluated per call.
        crop_border, y_channel: PSNR convention (:func:`lit_sr.metrics.psnr`).

    Returns:
        ``{"names": [...], "sr_psnr": Tensor(S, T), "hr_psnr": Tensor(S, T) | None}`` with rows the
        source models and columns the targets (float64, CPU).
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping name -> nn.Module")
    check_images(lr, "lr", value_range=True)
    batch_size = check_int(batch_size, "batch_size", 1)
    if attack_factory is None:
        attack_factory = _default_attack_factory(eps, steps, hr is not None)
    names = list(models)
    sr_psnr = torch.zeros(len(names), len(names), dtype=torch.float64)
    hr_psnr = torch.zeros_like(sr_psnr) if hr is not None else None
    n = lr.shape[0]
    for start in range(0, n, batch_size):
        lr_b = lr[start : start + batch_size]
        hr_b = hr[start : start + batch_size] if hr is not None else None
        clean = {name: _predict(models[name], lr_b) for name in names}
        for i, source in enumerate(names):
            attack = attack_factory(models[source])
            adv = attack(lr_b, hr=hr_b) if hr_b is not None else attack(lr_b)
            for j, target in enumerate(names):
                out = _predict(models[target], adv)
                weight = lr_b.shape[0] / n
                sr_psnr[i, j] += psnr(out, clean[target], crop_border, y_channel).mean().cpu() * weight
                if hr_psnr is not None:
                    ref = hr_b.to(out.device)
                    hr_psnr[i, j] += psnr(out, ref, crop_border, y_channel).mean().cpu() * weight
    return {"names": names, "sr_psnr": sr_psnr, "hr_psnr": hr_psnr}


def _predict(model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """``model(lr)`` in eval mode without gradient, on the model's device; the mode is restored."""
    with torch.no_grad(), frozen_eval(model):
        device = model_device(model, lr.device)
        return model(lr.to(device)).float()
