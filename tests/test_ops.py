"""imresize against an independent float64 per-pixel implementation of MATLAB's algorithm."""

import math

import numpy as np
import pytest
import torch

from lit_sr.ops import imresize, mod_crop, tiled_forward


def matlab_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def reference_resize_1d(signal: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """MATLAB imresize along axis 0, one output sample at a time (slow, obviously correct)."""
    in_len = signal.shape[0]
    out_len = math.ceil(in_len * scale - 1e-9)
    width = 4.0 / scale if (antialias and scale < 1) else 4.0
    out = np.zeros((out_len,) + signal.shape[1:])
    for o in range(1, out_len + 1):
        u = o / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + k for k in range(math.ceil(width) + 2)]
        if antialias and scale < 1:
            ws = [scale * matlab_cubic((u - j) * scale) for j in taps]
        else:
            ws = [matlab_cubic(u - j) for j in taps]
        total = sum(ws)
        acc = 0.0
        for j, w in zip(taps, ws):
            # symmetric extension: index 0 -> 1, -1 -> 2, in_len+1 -> in_len, ...
            jj = j
            while jj < 1 or jj > in_len:
                jj = 1 - jj if jj < 1 else 2 * in_len + 1 - jj
            acc = acc + (w / total) * signal[jj - 1]
        out[o - 1] = acc
    return out


def reference_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) float64."""
    tmp = reference_resize_1d(np.moveaxis(img, 1, 0), scale)  # resize H
    tmp = np.moveaxis(tmp, 0, 1)
    out = reference_resize_1d(np.moveaxis(tmp, 2, 0), scale)  # resize W
    return np.moveaxis(out, 0, 2)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4, 0.37])
def test_imresize_matches_reference(scale):
    torch.manual_seed(0)
    img = torch.rand(3, 23, 17, dtype=torch.float64)
    ours = imresize(img, scale).numpy()
    ref = reference_imresize(img.numpy(), scale)
    assert ours.shape == ref.shape == (3, math.ceil(23 * scale - 1e-9), math.ceil(17 * scale - 1e-9))
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_imresize_float32_batched_within_1e5(photos):
    img = photos["astronaut"][:, :96, :80]
    batch = torch.stack([img, img.flip(-1)])
    ours = imresize(batch, 1 / 4)
    ref = reference_imresize(img.double().numpy(), 1 / 4)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 24, 20)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-5)
    # the batch is processed image by image, no mixing across the batch
    torch.testing.assert_close(ours[1], imresize(img.flip(-1), 1 / 4))


def test_imresize_preserves_constants_and_is_differentiable():
    x = torch.full((1, 3, 20, 20), 0.3, requires_grad=True)
    y = imresize(x, 1 / 4)
    torch.testing.assert_close(y, torch.full_like(y, 0.3))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_imresize_bad_input():
    with pytest.raises(ValueError, match="shape"):
        imresize(torch.rand(8, 8), 2)
    with pytest.raises(ValueError, match="scale"):
        imresize(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), 2)


def test_mod_crop():
    assert mod_crop(torch.zeros(3, 103, 98), 4).shape == (3, 100, 96)


def test_tiled_forward_equals_whole_image_for_a_local_operator():
    # Nearest upsampling is pointwise in LR, so tiling must reproduce it exactly at any overlap.
    x = torch.rand(2, 3, 37, 29)
    fn = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    out = tiled_forward(fn, x, 2, tile=16, overlap=4, tile_batch=3)
    torch.testing.assert_close(out, fn(x))
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(fn, x, 2, tile=16, overlap=16)


def edsr_receptive_radius(num_block: int, scale: int) -> int:
    """LR pixels an EDSR output pixel depends on, each way: head, 2 per block, body conv, x2 upsampler
    convs (each at a finer grid: 1 LR pixel at LR, 1/2 after one shuffle, ...) and conv_last at HR,
    each rounded up to a whole LR pixel because the HR pixel's LR cell may sit at the edge."""
    return 1 + 2 * num_block + 1 + int(math.log2(scale)) + 1


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_edsr_equals_whole_image_when_half_the_overlap_covers_the_receptive_radius(scale):
    from lit_sr.archs import build_arch

    torch.manual_seed(0)  # a randomly initialised tiny EDSR: any smooth operator with that radius
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=scale).eval()
    x = torch.rand(2, 3, 45, 38)
    radius = edsr_receptive_radius(1, scale)
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_forward(net, x, scale, tile=20, overlap=2 * radius, tile_batch=5)
        seamy = tiled_forward(net, x, scale, tile=20, overlap=2, tile_batch=5)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    # With too small an overlap the tiles' zero padding shows: the check above is not vacuous.
    assert (seamy - whole).abs().max() > 1e-3


def test_tiled_forward_takes_every_output_pixel_from_one_tile():
    # fn marks each tile with its own constant: an averaging stitch would produce values in between.
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        base = torch.arange(len(calls) * 100, len(calls) * 100 + t.shape[0], dtype=t.dtype)
        return base.view(-1, 1, 1, 1).expand(t.shape[0], t.shape[1], t.shape[2] * 2, t.shape[3] * 2).clone()

    out = tiled_forward(fn, torch.zeros(1, 1, 30, 30), 2, tile=16, overlap=6, tile_batch=64)
    ids = out.unique()
    assert len(ids) == sum(calls) == 9  # starts 0, 10, 14 on each axis
    assert torch.all(out == out.round())


def test_tiled_swinir_is_exact_only_when_half_the_overlap_covers_its_window_reach():
    from lit_sr.archs import build_arch

    torch.manual_seed(0)  # a tiny random SwinIR: 4 Swin layers of window 4
    net = build_arch("swinir", upscale=2, img_size=16, window_size=4, depths=[2, 2], embed_dim=12, num_heads=[2, 2],
                     mlp_ratio=2, upsampler="pixelshuffle").eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        whole = net(x)
        near = tiled_forward(net, x, 2, tile=24, overlap=16)  # stride 8: tile starts on the window grid
        short = tiled_forward(net, x, 2, tile=16, overlap=8)
    torch.testing.assert_close(near, whole, atol=1e-4, rtol=0)
    assert (short - whole).abs().max() > 1e-3
