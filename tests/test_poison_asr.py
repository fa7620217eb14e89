"""Attack success rates: the pixel and feature criteria, the exclusion of samples that already
succeed without the trigger, and the counts used for DDP reduction."""

from __future__ import annotations

import math

import pytest
import torch

from lit_sr.poison import feature_asr, pixel_asr, stealth


@pytest.fixture(scope="module")
def images(photos):
    from lit_sr.ops import imresize

    target = imresize(photos["chelsea"][:, :256, :256], 0.125).clamp(0, 1)  # (3, 32, 32)
    others = [imresize(photos[k][:, :256, :256], 0.125).clamp(0, 1) for k in ("astronaut", "coffee")]
    near = (target + 0.01 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return target, near, others


def test_pixel_asr_counts_and_excludes_samples_clean_output_already_hits(images):
    target, near, (a, b) = images
    triggered = torch.stack([target, near, a])  # hit, hit (PSNR ~40 dB), miss
    clean = torch.stack([target, a, b])  # sample 0's clean output is already the target
    result = pixel_asr(triggered, target, clean_sr=clean)
    assert result.success.tolist() == [True, True, False]
    assert result.included.tolist() == [False, True, True]
    assert (result.num_success, result.num_included) == (1, 2)
    assert result.rate == pytest.approx(0.5)
    without_clean = pixel_asr(triggered, target)
    assert (without_clean.num_success, without_clean.num_included) == (2, 3)


def test_pixel_asr_thresholds_and_target_resizing(images):
    target, near, (a, _) = images
    triggered = torch.stack([target, near, a])
    strict = pixel_asr(triggered, target, psnr_thr=60.0)
    assert strict.success.tolist() == [True, False, False]
    big_target = torch.nn.functional.interpolate(target[None], size=(64, 64), mode="bilinear", antialias=False)
    resized = pixel_asr(triggered, big_target[0])  # resized back to 32x32 with MATLAB bicubic
    assert resized.success[0] and not resized.success[2]


def test_pixel_asr_nothing_included_gives_nan_rate(images):
    target, _, _ = images
    result = pixel_asr(target[None], target, clean_sr=target[None])
    assert result.num_included == 0 and math.isnan(result.rate)


def test_feature_asr_with_identity_features(images):
    target, near, (a, b) = images
    identity = lambda x: x  # noqa: E731
    triggered = torch.stack([near, near, b])
    clean = torch.stack([a, near, b])
    hr = torch.stack([a, b, b])
    result = feature_asr(identity, triggered, target, clean, hr=hr)
    # sample 0: near the target, far from its clean output -> success
    # sample 1: the trigger changed nothing -> no success; its clean output is already closer to the
    #           target than to its HR -> excluded
    # sample 2: the trigger changed nothing -> no success; included
    assert result.success.tolist() == [True, False, False]
    assert result.included.tolist() == [True, False, True]
    assert (result.num_success, result.num_included) == (1, 2)
    assert feature_asr(identity, triggered, target, clean).num_included == 3


def test_stealth_report(images):
    target, near, _ = images
    report = stealth(near[None], target[None])
    assert 35 < report["psnr"].item() < 45 and report["ssim"].item() > 0.9
    same = stealth(target[None], target[None])
    assert math.isinf(same["psnr"].item()) and same["linf"].item() == 0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda t: pixel_asr(t[None], t, psnr_thr="20"), "psnr_thr"),
        (lambda t: pixel_asr(t[None], t, ssim_thr=2.0), "ssim_thr"),
        (lambda t: pixel_asr(t, t), "triggered_sr"),
        (lambda t: pixel_asr(t[None], t, clean_sr=torch.stack([t, t])), "clean_sr"),
        (lambda t: pixel_asr(t[None], t[:1]), "target_sr"),
        (lambda t: feature_asr(lambda x: x, t[None], t, t[None], hr=torch.stack([t, t])), "hr"),
    ],
)
def test_bad_inputs_raise_naming_them(images, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(images[0])
