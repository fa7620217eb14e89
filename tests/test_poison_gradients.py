"""Per-sample backdoor gradients: torch.func against the one-backward-per-sample loop, and the
count sketch's determinism, linearity and norm preservation. Tiny random EDSR (no pretrained weights)."""

from __future__ import annotations

import pytest
import torch

from lit_sr.archs import build_arch
from lit_sr.poison import (
    naive_per_sample_grad_norms,
    naive_per_sample_grad_stats,
    per_sample_grad_stats,
    sketch_vectors,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_arch("edsr", num_feat=8, num_block=1, upscale=2)  # has a (non-persistent) mean buffer


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, 12, 12, generator=g), torch.rand(5, 3, 24, 24, generator=g)


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_vmap_norms_and_sketches_equal_the_naive_loop(model, batch, loss):
    lr, hr = batch
    norms, sketches = per_sample_grad_stats(model, lr, hr, loss=loss, chunk_size=2, sketch_dim=64, seed=3)
    ref_norms, ref_sketches = naive_per_sample_grad_stats(model, lr, hr, loss=loss, sketch_dim=64, seed=3)
    assert norms.shape == (5,) and sketches.shape == (5, 64)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-3, atol=0)
    torch.testing.assert_close(sketches, ref_sketches, rtol=1e-3, atol=1e-6 * float(ref_norms.max()))
    assert torch.unique(norms).numel() == 5, "samples really differ"


def test_parameter_subset(model, batch):
    lr, hr = batch
    names = ["conv_last.weight", "conv_first.bias"]
    norms, _ = per_sample_grad_stats(model, lr, hr, params=names, sketch_dim=None)
    torch.testing.assert_close(norms, naive_per_sample_grad_norms(model, lr, hr, params=names), rtol=1e-3, atol=0)
    all_norms, _ = per_sample_grad_stats(model, lr, hr, sketch_dim=None)
    assert torch.all(norms < all_norms)


def test_sketches_deterministic_and_seeded(model, batch):
    lr, hr = batch
    _, first = per_sample_grad_stats(model, lr, hr, chunk_size=5, sketch_dim=32, seed=0)
    _, again = per_sample_grad_stats(model, lr, hr, chunk_size=2, sketch_dim=32, seed=0)
    _, other = per_sample_grad_stats(model, lr, hr, chunk_size=5, sketch_dim=32, seed=1)
    torch.testing.assert_close(first, again, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(first, other)


def test_works_in_inference_mode_and_restores_model(model, batch):
    lr, hr = batch
    model.train()
    try:
        with torch.inference_mode():
            norms, _ = per_sample_grad_stats(model, lr, hr, sketch_dim=8)
        assert model.training and all(p.requires_grad for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    torch.testing.assert_close(norms, naive_per_sample_grad_norms(model, lr, hr), rtol=1e-3, atol=0)


def test_count_sketch_is_linear_blockwise_and_norm_preserving():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 3000, generator=g), torch.randn(64, 3000, generator=g)
    sa, sb = sketch_vectors(a, 512, seed=5), sketch_vectors(b, 512, seed=5)
    torch.testing.assert_close(sketch_vectors(a + b, 512, seed=5), sa + sb, rtol=1e-4, atol=1e-4)
    blocks = sketch_vectors(a[:, :1000], 512, seed=5) + sketch_vectors(a[:, 1000:], 512, seed=5, offset=1000)
    torch.testing.assert_close(blocks, sa, rtol=1e-4, atol=1e-4)
    ratio = sa.pow(2).sum(1) / a.pow(2).sum(1)
    assert abs(ratio.mean().item() - 1) < 0.05, "squared norms preserved on average"
    inner = (sa * sb).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert inner.abs().mean() < 0.1, "near-orthogonal vectors stay near-orthogonal"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"loss": "huber"}, "loss"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"sketch_dim": 0}, "sketch_dim"),
        ({"params": ["nope.weight"]}, "nope.weight"),
        ({"params": []}, "params"),
        ({"target": torch.rand(5, 3, 12, 12)}, "target"),
        ({"target": torch.rand(4, 3, 24, 24)}, "target"),
    ],
)
def test_bad_parameters_raise_naming_them(model, batch, kwargs, match):
    lr, hr = batch
    args = {"lr": lr, "target": hr, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        per_sample_grad_stats(model, **args)


def test_bf16_autocast_matches_its_naive_loop(model, batch):
    lr, hr = batch
    norms, _ = per_sample_grad_stats(model, lr, hr, sketch_dim=None, autocast="bf16")
    ref, _ = naive_per_sample_grad_stats(model, lr, hr, sketch_dim=None, autocast="bf16")
    torch.testing.assert_close(norms, ref, rtol=1e-2, atol=0)
    fp32, _ = per_sample_grad_stats(model, lr, hr, sketch_dim=None)
    torch.testing.assert_close(norms, fp32, rtol=5e-2, atol=0)


def test_sketch_is_the_count_sketch_of_the_flat_gradient(model, batch):
    lr, hr = batch
    _, sketches = per_sample_grad_stats(model, lr[:2], hr[:2], sketch_dim=128, seed=9)
    params = [p for p in model.parameters()]
    flat = []
    for i in range(2):
        loss = torch.nn.functional.mse_loss(model(lr[i : i + 1]), hr[i : i + 1])
        flat.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    expected = sketch_vectors(torch.stack(flat), 128, seed=9)
    torch.testing.assert_close(sketches, expected, rtol=1e-3, atol=1e-7)
