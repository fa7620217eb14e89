"""Backdoor triggers: shapes, ranges, seeds, the defining formulas, and BadSR's adversarial trigger.

The substitute networks are tiny, randomly initialised EDSRs (no pretrained weights).
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_sr.archs import build_arch
from lit_sr.metrics import LPIPSWeightsMissing
from lit_sr.poison import SIG, AdversarialTrigger, BadNet, Blend, WaNet, build_trigger


def _images(n=3, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    x[0, :, :2, :2] = 0.0  # extremes must stay in range
    x[0, :, -2:, -2:] = 1.0
    return x


STATIC = [
    lambda seed: BadNet(seed=seed, value="random"),
    lambda seed: Blend(seed=seed),
    lambda seed: SIG(),
    lambda seed: WaNet(seed=seed),
]


@pytest.mark.parametrize("make", STATIC, ids=["badnet", "blend", "sig", "wanet"])
@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 48, 40), (2, 1, 16, 24)])
def test_static_triggers_shape_range_dtype_determinism(make, shape):
    x = _images(*shape)
    out = make(0)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x), "the trigger must change the image"
    assert torch.equal(out, make(0)(x)), "same seed, fresh instance: same output"
    out64 = make(0)(x.double())
    assert out64.dtype == torch.float64 and torch.allclose(out64.float(), out, atol=1e-5)


@pytest.mark.parametrize("make", [STATIC[0], STATIC[1], STATIC[3]], ids=["badnet", "blend", "wanet"])
def test_seed_changes_random_triggers(make):
    x = _images()
    assert not torch.equal(make(0)(x), make(1)(x))


def test_triggers_are_batched_per_image():
    x = _images(4)
    for trigger in (BadNet(), Blend(), SIG(), WaNet()):
        assert torch.allclose(trigger(x)[2:3], trigger(x[2:3]), atol=1e-6)


@pytest.mark.parametrize("corner", ["bottom_right", "bottom_left", "top_right", "top_left"])
@pytest.mark.parametrize("size,expected", [(32, 3), (64, 6), (16, 2)])
def test_badnet_patch_in_corner_rest_unchanged(corner, size, expected):
    x = _images(2, 3, size, size)
    trigger = BadNet(corner=corner, value="checkerboard")
    out = trigger(x)
    assert trigger.patch_size(size, size) == (expected, expected)
    rows = slice(size - expected, size) if corner.startswith("bottom") else slice(0, expected)
    cols = slice(size - expected, size) if corner.endswith("right") else slice(0, expected)
    ij = torch.arange(expected).view(-1, 1) + torch.arange(expected).view(1, -1)
    checker = (ij % 2 == 0).float()
    assert torch.equal(out[:, :, rows, cols], checker.expand(2, 3, -1, -1))
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[rows, cols] = False
    assert torch.equal(out[:, :, mask], x[:, :, mask])


def test_badnet_solid_value():
    x = _images(1, 3, 32, 32)
    out = BadNet(value=0.25)(x)
    assert torch.all(out[..., -3:, -3:] == 0.25)
    assert torch.equal(out[..., :29, :], x[..., :29, :])


def test_blend_formula_with_given_pattern():
    x = _images(2, 3, 16, 16)
    pattern = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = Blend(alpha=0.2, pattern=pattern)(x)
    assert torch.allclose(out, 0.8 * x + 0.2 * pattern, atol=1e-6)
    gray = Blend(alpha=0.5, pattern=pattern[0])(x)  # a one-channel pattern is used for every channel
    assert torch.allclose(gray, 0.5 * x + 0.5 * pattern[0], atol=1e-6)


def test_blend_default_noise_pattern_is_fixed_and_resized():
    trigger = Blend(alpha=0.2, pattern_size=8, seed=3)
    x = _images(2, 3, 32, 32)
    out = trigger(x)
    pattern = (out - 0.8 * x) / 0.2
    assert torch.allclose(pattern[0], pattern[1], atol=1e-5), "one pattern for every image"
    assert pattern.min() >= -1e-5 and pattern.max() <= 1 + 1e-5
    expected = torch.nn.functional.interpolate(
        torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)),
        size=(32, 32), mode="bilinear", align_corners=False, antialias=True,
    )
    assert torch.allclose(pattern[:1], expected, atol=1e-5)


def test_sig_formula_and_clipping():
    x = torch.full((2, 3, 8, 30), 0.5)
    out = SIG(delta=40 / 255, f=6)(x)
    j = torch.arange(30, dtype=torch.float32)
    expected = 0.5 + 40 / 255 * torch.sin(2 * math.pi * j * 6 / 30)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)
    bright = SIG()(torch.ones(1, 3, 8, 30))
    assert bright.max() == 1.0 and bright.min() < 1.0  # clipped above, lowered where the sine is negative


def test_wanet_nearest_is_a_pure_warp():
    x = _images(2, 3, 32, 40)
    out = WaNet(s=2.0, mode="nearest", seed=1)(x)
    moved = (out != x).any(dim=1).float().mean()
    assert moved > 0.5, "s=2 must move most pixels, otherwise the test proves nothing"
    for img_in, img_out in zip(x, out):
        colours_in = {tuple(p.tolist()) for p in img_in.flatten(1).T}
        colours_out = {tuple(p.tolist()) for p in img_out.flatten(1).T}
        assert colours_out <= colours_in, "no new colours: every output pixel is an input pixel"


def test_wanet_identity_grid_orientation():
    # a vanishing warp must reproduce the input exactly, which fails if x and y are swapped
    x = _images(2, 3, 24, 40)
    out = WaNet(s=1e-7, mode="bilinear")(x)
    assert torch.allclose(out, x, atol=1e-4)


def test_wanet_default_bilinear_changes_image_mildly():
    x = _images(2, 3, 32, 32)
    out = WaNet()(x)
    assert (out - x).abs().mean() > 1e-3
    assert (out - x).abs().mean() < 0.2


def test_build_trigger_and_config():
    trigger = build_trigger("Blend", alpha=0.3, seed=4)
    assert isinstance(trigger, Blend)
    assert trigger.config() == {
        "name": "blend", "alpha": 0.3, "pattern": "noise", "pattern_size": 32, "resize_mode": "bilinear", "seed": 4
    }
    assert isinstance(build_trigger("wanet"), WaNet)


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: BadNet(patch_ratio=0), "patch_ratio"),
        (lambda: BadNet(value=1.5), "value"),
        (lambda: BadNet(value="stripes"), "value"),
        (lambda: BadNet(corner="middle"), "corner"),
        (lambda: Blend(alpha=1.5), "alpha"),
        (lambda: Blend(pattern=torch.full((3, 4, 4), 2.0)), "pattern"),
        (lambda: SIG(delta=-0.1), "delta"),
        (lambda: WaNet(k=1), "k"),
        (lambda: WaNet(mode="bicubic"), "mode"),
        (lambda: build_trigger("nope"), "nope"),
        (lambda: BadNet()(torch.rand(3, 8, 8)), "lr"),
        (lambda: Blend(pattern=torch.rand(3, 4, 4))(torch.rand(1, 1, 8, 8)), "channels"),
    ],
)
def test_bad_parameters_raise_naming_them(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


# --------------------------------------------------------------------------- adversarial trigger


@pytest.fixture(scope="module")
def substitute():
    torch.manual_seed(0)
    return build_arch("edsr", num_feat=8, num_block=1, upscale=2)


def _recon(model, lr, target):
    with torch.no_grad():
        return (model(lr) - target).pow(2).flatten(1).mean(dim=1).sqrt()


def _same_rms_noise(lr, out, seed=0):
    delta = out - lr
    noise = torch.randn(lr.shape, generator=torch.Generator().manual_seed(seed))
    noise = noise * delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (lr + noise).clamp(0, 1)


def test_adversarial_trigger_beats_clean_and_random_noise(substitute):
    lr = _images(3, 3, 16, 16)
    hr = _images(3, 3, 32, 32, seed=1)
    substitute.train()
    frozen_param = substitute.conv_first.bias
    frozen_param.requires_grad_(False)
    try:
        trigger = AdversarialTrigger(substitute, steps=20, lr=0.01, perceptual="ssim", seed=0)
        out = trigger(lr, hr)
        assert substitute.training and all(m.training for m in substitute.modules()), "train mode restored"
        assert not frozen_param.requires_grad and substitute.conv_last.weight.requires_grad, "flags restored"
        assert substitute.conv_last.weight.grad is None, "the substitute's gradients are not touched"
    finally:
        frozen_param.requires_grad_(True)
        substitute.eval()
    assert trigger.perceptual_used == "ssim"
    assert out.shape == lr.shape and out.min() >= 0 and out.max() <= 1
    assert (out - lr).abs().max() > 0
    triggered = _recon(substitute, out, hr)
    assert torch.all(triggered > _recon(substitute, lr, hr))
    assert torch.all(triggered > _recon(substitute, _same_rms_noise(lr, out), hr)), "beats noise of equal L2"
    assert torch.allclose(trigger.last_report["recon_triggered"], triggered, atol=1e-5)


def test_adversarial_trigger_without_hr_targets_clean_output(substitute):
    lr = _images(2, 3, 16, 16)
    trigger = AdversarialTrigger(substitute, steps=20, lr=0.01, perceptual="ssim", seed=0)
    out = trigger(lr)
    clean = substitute(lr).detach()
    moved = _recon(substitute, out, clean)
    assert torch.all(moved > _recon(substitute, _same_rms_noise(lr, out), clean))


def test_adversarial_trigger_deterministic_in_inference_mode_and_per_sample(substitute):
    lr = _images(3, 3, 16, 16)
    hr = _images(3, 3, 32, 32, seed=1)
    trigger = AdversarialTrigger(substitute, steps=8, lr=0.01, perceptual="ssim", seed=7)
    first = trigger(lr, hr, sample_ids=[10, 11, 12])
    with torch.inference_mode():  # as inside Lightning's validation loop
        second = trigger(lr, hr, sample_ids=[10, 11, 12])
    assert torch.equal(first, second)
    alone = trigger(lr[1:2], hr[1:2], sample_ids=[11])
    assert torch.allclose(alone, first[1:2], atol=1e-5), "a sample's trigger does not depend on its batch"


def test_adversarial_trigger_eps_bound(substitute):
    lr = _images(2, 3, 16, 16)
    hr = _images(2, 3, 32, 32, seed=1)
    eps = 2 / 255
    out = AdversarialTrigger(substitute, steps=10, lr=0.02, eps=eps, perceptual="ssim")(lr, hr)
    assert (out - lr).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("schedule", ["linear", "exponential", "adaptive"])
def test_l2_schedules_grow(substitute, schedule):
    trigger = AdversarialTrigger(
        substitute, steps=5, lr=0.05, perceptual="ssim", l2_schedule=schedule, l2_weight_start=1.0,
        l2_weight_end=9.0, l2_budget=1e-4, l2_growth=2.0,
    )
    trigger(_images(1, 3, 16, 16), _images(1, 3, 32, 32, seed=1))
    final = trigger.last_report["l2_weight"].item()
    expected = {"linear": 9.0, "exponential": 9.0, "adaptive": 2.0**5}[schedule]
    assert final == pytest.approx(expected)


def test_adversarial_trigger_refuses_silent_random_lpips(substitute, tmp_path):
    with pytest.raises(LPIPSWeightsMissing, match="alexnet"):
        AdversarialTrigger(substitute, perceptual="lpips", lpips_backbone_path=tmp_path / "alexnet-missing.pth")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"perceptual": "psnr"}, "perceptual"),
        ({"l2_schedule": "cosine"}, "l2_schedule"),
        ({"l2_schedule": "exponential", "l2_weight_start": 0.0}, "l2_weight_start"),
        ({"l2_growth": 0.5}, "l2_growth"),
        ({"eps": 0.0}, "eps"),
        ({"ssim_window": 4}, "ssim_window"),
    ],
)
def test_adversarial_trigger_bad_parameters(substitute, kwargs, match):
    kwargs = {"perceptual": "ssim", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        AdversarialTrigger(substitute, **kwargs)


def test_adversarial_trigger_zero_init_needs_hr_and_hr_shape(substitute):
    trigger = AdversarialTrigger(substitute, steps=2, perceptual="ssim", init="zero")
    with pytest.raises(ValueError, match="init='zero' needs hr"):
        trigger(_images(1, 3, 16, 16))
    with pytest.raises(ValueError, match="hr has shape"):
        trigger(_images(1, 3, 16, 16), _images(1, 3, 48, 48))


def test_adversarial_trigger_uses_real_lpips_when_the_backbone_file_exists(substitute, tmp_path):
    # The backbone file here holds a randomly initialised AlexNet (no download): this checks the
    # wiring (file found, LPIPS built, used as the perceptual term), not LPIPS's calibration.
    import torchvision

    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    trigger = AdversarialTrigger(substitute, steps=3, lr=0.01, perceptual="lpips", lpips_backbone_path=path)
    assert trigger.perceptual_used == "lpips:alex"
    lr = _images(1, 3, 32, 32)
    out = trigger(lr, _images(1, 3, 64, 64, seed=1))
    assert out.shape == lr.shape and trigger.last_report["perceptual"].item() > 0


def test_blend_named_patterns(tmp_path):
    from lit_sr.io import write_image
    from lit_sr.poison.triggers import Blend

    x = torch.rand(2, 3, 16, 16)
    ij = torch.arange(16).view(-1, 1) + torch.arange(16).view(1, -1)
    explicit = Blend(pattern=(ij % 2).float(), resize_mode="nearest")(x)
    named = Blend(pattern="checkerboard", pattern_size=16, resize_mode="nearest")
    torch.testing.assert_close(named(x), explicit)
    assert named.config()["pattern"] == "checkerboard"
    image = torch.rand(3, 8, 8)
    path = write_image(image, tmp_path / "kitty.png")
    from_file = Blend(pattern=str(path), resize_mode="nearest")(torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(from_file[0], 0.2 * ((image * 255).round() / 255), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="neither 'noise', 'checkerboard'"):
        Blend(pattern="stripes")
