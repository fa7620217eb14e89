"""PSNR / SSIM against numpy references of BasicSR's published formulas."""

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from lit_sr.metrics import LPIPSWeightsMissing, build_lpips, masked_psnr, psnr, rgb_to_y, ssim


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return np.round(np.clip(x.double().numpy(), 0, 1) * 255).astype(np.float64)  # (C,H,W)


def ref_y(img255: np.ndarray) -> np.ndarray:
    r, g, b = img255 / 255.0
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b)[None]


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def ref_ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    win = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    f = lambda t: correlate2d(t, win, mode="valid")  # noqa: E731
    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([ref_ssim_channel(a[c], b[c]) for c in range(a.shape[0])]))


@pytest.fixture
def pair(photos):
    torch.manual_seed(0)
    hr = photos["coffee"][:, :64, :72]
    sr = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    return sr[None], hr[None]


@pytest.mark.parametrize("y_channel", [False, True])
@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_ssim_match_numpy_reference(pair, y_channel, crop):
    sr, hr = pair
    a, b = to_uint8(sr[0]), to_uint8(hr[0])
    if crop:
        a, b = a[:, crop:-crop, crop:-crop], b[:, crop:-crop, crop:-crop]
    if y_channel:
        a, b = ref_y(a), ref_y(b)
    got_psnr = psnr(sr, hr, crop_border=crop, y_channel=y_channel)
    got_ssim = ssim(sr, hr, crop_border=crop, y_channel=y_channel)
    assert got_psnr.shape == got_ssim.shape == (1,)
    assert abs(got_psnr.item() - ref_psnr(a, b)) < 1e-3
    assert abs(got_ssim.item() - ref_ssim(a, b)) < 1e-4


def test_per_image_values_and_rounding(pair):
    sr, hr = pair
    batch_sr, batch_hr = torch.cat([sr, hr]), torch.cat([hr, hr])
    values = psnr(batch_sr, batch_hr)
    assert values.shape == (2,) and torch.isinf(values[1])
    # sub-quantum differences vanish after the 8-bit rounding of the protocol
    assert torch.isinf(psnr(hr + 0.4 / 255, hr))
    assert torch.isfinite(psnr(hr + 0.4 / 255, hr, rounding=False))
    assert ssim(hr, hr).item() == pytest.approx(1.0)


def test_y_channel_range():
    white, black = torch.ones(1, 3, 4, 4) * 255, torch.zeros(1, 3, 4, 4)
    assert rgb_to_y(white).unique().item() == pytest.approx(235.0, abs=1e-3)
    assert rgb_to_y(black).unique().item() == pytest.approx(16.0)


def test_masked_psnr_only_counts_masked_pixels():
    hr = torch.rand(1, 3, 16, 16)
    sr = hr.clone()
    sr[..., :8, :] = 1 - sr[..., :8, :]  # damage the top half only
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:, :] = 1
    assert torch.isinf(masked_psnr(sr, hr, mask))
    assert torch.isfinite(masked_psnr(sr, hr, 1 - mask))


def test_metric_errors():
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), crop_border=4)


def test_lpips_without_backbone_names_the_file(tmp_path):
    missing = tmp_path / "alexnet.pth"
    with pytest.raises(LPIPSWeightsMissing, match=str(missing)):
        build_lpips("alex", backbone_path=missing)


def test_lpips_with_a_local_backbone_file(tmp_path):
    # A randomly initialised AlexNet saved locally stands in for the real file: this checks that the
    # backbone is read from the given path (and nothing is downloaded), not LPIPS' calibration.
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(backbone.state_dict(), path)
    metric = build_lpips("alex", backbone_path=path)
    conv0 = metric.model.net.slice1[0].weight
    torch.testing.assert_close(conv0, backbone.features[0].weight)
    x = torch.rand(2, 3, 32, 32)
    d_same, d_diff = metric(x, x), metric(x, torch.rand_like(x))
    assert d_same.shape == (2,) and torch.all(d_same.abs() < 1e-6) and torch.all(d_diff > 0)
