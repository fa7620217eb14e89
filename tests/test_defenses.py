"""Tests of lit_sr.defenses: exactness of the transformations and naive vs adaptive attacks.

A tiny EDSR (x2, 16 features, 2 blocks) is trained for a few seconds on scikit-image photos in a
module-scoped fixture, so that attacks on it behave like attacks on a real SR network.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from lit_sr.attacks import PGD
from lit_sr.defenses import (
    BitDepthReduction,
    JPEGDefense,
    RandomResizeDefense,
    ResizeDefense,
    SelfEnsemble,
    evaluate_defense,
)
from lit_sr.ops import imresize

SCALE = 2  # the scale of the shared `trained` net (tests/conftest.py)
EPS = 8 / 255
TOL = 1e-6


# --------------------------------------------------------------------------- transformations


@pytest.mark.parametrize("shape", [(2, 3, 12, 12), (2, 3, 12, 17)])
def test_self_ensemble_of_an_equivariant_model_is_the_model(bicubic, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(SelfEnsemble(bicubic)(x), bicubic(x), atol=1e-5)


def test_self_ensemble_is_the_mean_of_the_eight_views(trained):
    x = torch.rand(2, 3, 10, 13, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(2, 3, 20, 26)
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                view = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                back = torch.rot90(trained(view), -k, dims=(-2, -1))
                expected += back.flip(-1) if flip else back
        got = SelfEnsemble(trained)(x)
    assert torch.allclose(got, expected / 8, atol=1e-5)
    assert not torch.allclose(got, trained(x).detach(), atol=1e-3)  # a learnt net is not equivariant


def test_resize_defense_shrinks_by_one_pixel_and_back(trained, batch):
    lr, _ = batch
    defense = ResizeDefense(trained)
    restored = imresize(imresize(lr, size=(15, 15)), size=(16, 16))
    assert torch.allclose(defense.transform(lr), restored)
    assert not torch.allclose(restored, lr, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(defense(lr), trained(restored))


def test_bit_depth_bpda_gradient_is_nonzero_and_plain_rounding_is_zero(trained, batch):
    lr, _ = batch
    x = lr.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(BitDepthReduction(trained, bits=4, bpda=True)(x).sum(), x)
    assert grad.abs().sum() > 0
    (grad,) = torch.autograd.grad(BitDepthReduction(trained, bits=4, bpda=False)(x).sum(), x)
    assert grad.abs().sum() == 0
    quantised = BitDepthReduction(trained, bits=3).transform(lr)
    assert torch.allclose(quantised * 7, (quantised * 7).round(), atol=1e-5)
    assert (quantised - lr).abs().max() <= 0.5 / 7 + TOL


def test_jpeg_defense_real_codec_with_bpda_and_differentiable_codec(trained, batch):
    lr, _ = batch
    real = JPEGDefense(trained, quality=50, differentiable=False)
    x = lr.clone().requires_grad_(True)
    out = real.transform(x)
    reference = (
        torch.stack(decode_jpeg(encode_jpeg(list((lr * 255).round().to(torch.uint8)), quality=50))).float()
        / 255
    )
    assert torch.allclose(out.detach(), reference)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x))  # BPDA: identity backward

    smooth = JPEGDefense(trained, quality=50, differentiable=True)
    y = lr.clone().requires_grad_(True)
    approx = smooth.transform(y)
    assert (approx.detach() - reference).abs().mean() < 0.02  # close to the real codec
    approx.sum().backward()
    assert y.grad.abs().sum() > 0 and not torch.allclose(y.grad, torch.ones_like(y))


def test_random_resize_is_random_and_declares_eot(trained, batch):
    lr, _ = batch
    defense = RandomResizeDefense(trained, max_shrink=3, eot_samples=5, seed=0)
    outputs = {round(defense.transform(lr).sum().item(), 4) for _ in range(12)}
    assert len(outputs) > 1
    assert PGD(defense, EPS, steps=2).eot_samples == 5


# --------------------------------------------------------------------------- naive vs adaptive


# Margins in dB: the resizes and JPEG destroy much of a transferred perturbation, the
# self-ensemble and 5-bit quantisation little (their naive number is already low).
@pytest.mark.parametrize(
    "wrap, margin",
    [
        (lambda m: ResizeDefense(m), 1.0),
        (lambda m: SelfEnsemble(m), 0.1),
        (lambda m: BitDepthReduction(m, bits=5), 0.1),
        (lambda m: JPEGDefense(m, quality=75), 1.0),
        (lambda m: RandomResizeDefense(m, max_shrink=3, eot_samples=4, seed=0), 1.0),
    ],
    ids=["resize", "self_ensemble", "bit_depth_bpda", "jpeg_differentiable", "random_resize_eot"],
)
def test_adaptive_attack_beats_the_naive_one(trained, batch, wrap, margin):
    lr, hr = batch
    defense = wrap(trained)
    result = evaluate_defense(trained, defense, lr, lambda m: PGD(m, EPS, steps=10, seed=0), hr=hr)
    assert set(result) == {
        "undefended_sr_psnr", "naive_sr_psnr", "adaptive_sr_psnr", "worst_sr_psnr",
        "naive_hr_psnr", "adaptive_hr_psnr", "worst_hr_psnr", "clean_hr_psnr",
    }  # fmt: skip
    assert result["adaptive_sr_psnr"].mean() < result["naive_sr_psnr"].mean() - margin, result
    assert torch.equal(
        result["worst_sr_psnr"], torch.minimum(result["naive_sr_psnr"], result["adaptive_sr_psnr"])
    )


def test_attacks_through_a_defense_respect_the_budget_and_the_model_state(trained, batch):
    lr, _ = batch
    defense = SelfEnsemble(trained)
    defense.train()
    try:
        adv = PGD(defense, EPS, steps=3, seed=0)(lr)
        assert defense.training and trained.training
    finally:
        trained.eval()
    assert (adv - lr).abs().max() <= EPS + TOL and adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None and p.requires_grad for p in trained.parameters())


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda m: ResizeDefense(m, shrink=0), "shrink"),
        (lambda m: RandomResizeDefense(m, max_shrink=0), "max_shrink"),
        (lambda m: RandomResizeDefense(m, eot_samples=0), "eot_samples"),
        (lambda m: JPEGDefense(m, quality=0), "quality"),
        (lambda m: JPEGDefense(m, quality=101), "quality"),
        (lambda m: BitDepthReduction(m, bits=0), "bits"),
        (lambda m: BitDepthReduction(m, bits=9), "bits"),
        (lambda m: SelfEnsemble("net"), "model"),
    ],
)
def test_bad_defense_parameters_raise_naming_the_parameter(bicubic, build, name):
    with pytest.raises((ValueError, TypeError), match=name):
        build(bicubic)


def test_resize_larger_than_input_raises(bicubic):
    with pytest.raises(ValueError, match="shrink"):
        ResizeDefense(bicubic, shrink=8)(torch.rand(1, 3, 8, 8))
