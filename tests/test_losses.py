"""Pixel, GAN and perceptual losses.

The VGG networks here are randomly initialised (``pretrained=False``) or loaded from a file the test
writes: no pretrained weights are used or downloaded, so perceptual values are only checked for
structure (zero on identical inputs, positive otherwise, gradients), not for perceptual meaning.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lit_sr.losses import (
    GANLoss,
    PerceptualLoss,
    VGGFeatureExtractor,
    build_pixel_loss,
    default_vgg_weights_path,
    ragan_d_loss,
    ragan_g_loss,
    vgg_layer_names,
)

# ------------------------------------------------------------------------------------------------
# Pixel losses
# ------------------------------------------------------------------------------------------------


def test_pixel_losses_values():
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.allclose(build_pixel_loss("l1")(a, b), (a - b).abs().mean())
    assert torch.allclose(build_pixel_loss("MSE")(a, b), (a - b).square().mean())
    assert torch.allclose(build_pixel_loss("l2")(a, b), (a - b).square().mean())
    charb = build_pixel_loss("charbonnier", eps=1e-3)
    assert torch.allclose(charb(a, b), torch.sqrt((a - b).square() + 1e-6).mean())
    assert torch.allclose(charb(a, a), torch.tensor(1e-3))  # eps on the [0, 1] scale, entering squared
    assert build_pixel_loss("l1", reduction="none")(a, b).shape == a.shape


def test_charbonnier_has_gradient_at_zero_difference():
    pred = torch.rand(1, 3, 4, 4, requires_grad=True)
    build_pixel_loss("charbonnier")(pred, pred.detach()).backward()
    assert torch.isfinite(pred.grad).all()


def test_pixel_loss_errors():
    with pytest.raises(ValueError, match="unknown pixel loss"):
        build_pixel_loss("huber")
    with pytest.raises(ValueError, match="eps"):
        build_pixel_loss("charbonnier", eps=0.0)
    with pytest.raises(ValueError, match="reduction"):
        build_pixel_loss("l1", reduction="avg")


# ------------------------------------------------------------------------------------------------
# GAN losses
# ------------------------------------------------------------------------------------------------


def test_gan_loss_types():
    x = torch.tensor([[-2.0], [0.5], [3.0]])
    vanilla = GANLoss("vanilla")
    assert torch.allclose(vanilla(x, True), F.binary_cross_entropy_with_logits(x, torch.ones_like(x)))
    assert torch.allclose(vanilla(x, False), F.binary_cross_entropy_with_logits(x, torch.zeros_like(x)))
    assert torch.allclose(GANLoss("lsgan")(x, True), (x - 1).square().mean())
    assert torch.allclose(GANLoss("lsgan")(x, False), x.square().mean())
    wgan = GANLoss("wgan")
    assert torch.allclose(wgan(x, True), -x.mean()) and torch.allclose(wgan(x, False), x.mean())
    hinge = GANLoss("hinge")
    assert torch.allclose(hinge(x, True, is_disc=True), F.relu(1 - x).mean())
    assert torch.allclose(hinge(x, False, is_disc=True), F.relu(1 + x).mean())
    assert torch.allclose(hinge(x, True, is_disc=False), -x.mean())
    with pytest.raises(ValueError, match="target_is_real=True"):
        hinge(x, False, is_disc=False)
    with pytest.raises(ValueError, match="gan_type"):
        GANLoss("ragan")


def test_gan_loss_weight_applies_to_generator_only():
    x = torch.randn(4, 1)
    plain, weighted = GANLoss("vanilla"), GANLoss("vanilla", loss_weight=5e-3)
    assert torch.allclose(weighted(x, True), 5e-3 * plain(x, True))
    assert torch.allclose(weighted(x, True, is_disc=True), plain(x, True, is_disc=True))


def test_ragan_sign_behaviour():
    confident = (torch.full((8, 1), 4.0), torch.full((8, 1), -4.0))  # D tells real from fake
    fooled = (torch.full((8, 1), -4.0), torch.full((8, 1), 4.0))  # D has it backwards
    assert ragan_d_loss(*confident) < 0.01 < 7.0 < ragan_d_loss(*fooled)
    assert ragan_g_loss(*confident) > 7.0 > 0.01 > ragan_g_loss(*fooled)
    # Equal logits: both players at log 2.
    even = torch.zeros(8, 1)
    assert torch.allclose(ragan_d_loss(even, even), torch.log(torch.tensor(2.0)))
    assert torch.allclose(ragan_g_loss(even, even), torch.log(torch.tensor(2.0)))


def test_ragan_values_and_gradients():
    torch.manual_seed(0)
    real = torch.randn(6, 1, 4, 4, requires_grad=True)  # per-pixel logits (U-Net discriminator)
    fake = torch.randn(6, 1, 4, 4, requires_grad=True)
    bce = F.binary_cross_entropy_with_logits
    expected_d = 0.5 * (bce(real - fake.mean(), torch.ones_like(real)) + bce(fake - real.mean(), torch.zeros_like(fake)))
    assert torch.allclose(ragan_d_loss(real, fake), expected_d)
    expected_g = 0.5 * (bce(real - fake.mean(), torch.zeros_like(real)) + bce(fake - real.mean(), torch.ones_like(fake)))
    assert torch.allclose(ragan_g_loss(real, fake), expected_g)

    ragan_g_loss(real, fake).backward()
    assert real.grad is None  # the generator step does not reach the discriminator's real branch
    assert (fake.grad < 0).all()  # raising the fake logits lowers the generator loss

    real.grad = fake.grad = None
    ragan_d_loss(real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    full_grad = real.grad.clone()
    real.grad = None
    detached = ragan_d_loss(real, fake, detach_mean=True)
    assert torch.allclose(detached, expected_d)  # same value, BasicSR's split gradient
    detached.backward()
    assert not torch.allclose(real.grad, full_grad)


# ------------------------------------------------------------------------------------------------
# VGG features and perceptual loss (random or test-written weights)
# ------------------------------------------------------------------------------------------------


def test_vgg_layer_names():
    names = vgg_layer_names("vgg19")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert len(names) == 37 and names[34] == "conv5_4" and names[-1] == "pool5"
    assert vgg_layer_names("vgg19_bn")[:3] == ["conv1_1", "bn1_1", "relu1_1"]
    assert len(vgg_layer_names("vgg16")) == 31


def test_feature_extractor_layers_frozen_and_eval():
    torch.manual_seed(0)
    vgg = VGGFeatureExtractor(["relu1_1", "conv2_2", "relu3_1"], pretrained=False)  # random weights
    feats = vgg(torch.rand(2, 3, 16, 16))
    assert set(feats) == {"relu1_1", "conv2_2", "relu3_1"}
    assert feats["relu1_1"].shape == (2, 64, 16, 16)
    assert feats["conv2_2"].shape == (2, 128, 8, 8)
    assert feats["relu3_1"].shape == (2, 256, 4, 4)
    assert (feats["conv2_2"] < 0).any()  # a conv output is returned before its (not in-place) ReLU
    assert list(vgg.vgg_net.named_children())[-1][0] == "relu3_1"  # built only up to the deepest layer
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.vgg_net.training
    with pytest.raises(ValueError, match="layer_name_list"):
        VGGFeatureExtractor(["relu6_1"], pretrained=False)


def test_feature_extractor_loads_torchvision_layout(tmp_path):
    """A torchvision-format file ('features.N.*') maps onto the named layers: outputs match torchvision's
    own VGG19 ``features`` stack (randomly initialised here, written to a file by the test)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"]).eval()
    path = tmp_path / "vgg19-test.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    vgg = VGGFeatureExtractor(["relu2_1", "conv5_4"], weights_path=path)
    x = torch.rand(1, 3, 32, 32)
    normed = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = vgg(x)
        assert torch.allclose(ours["conv5_4"], features[:35](normed), atol=1e-5)
        assert torch.allclose(ours["relu2_1"], features[:7](normed), atol=1e-5)

    torch.save({"features.0.weight": features[0].weight}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="features.0.bias"):
        VGGFeatureExtractor(["relu1_1"], weights_path=tmp_path / "partial.pth")


def test_missing_vgg_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert default_vgg_weights_path("vgg19") == expected
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth") as err:
        PerceptualLoss({"conv5_4": 1.0})
    assert "weights_path=" in str(err.value) and str(expected) in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        VGGFeatureExtractor(["relu1_1"], weights_path=tmp_path / "nowhere.pth")


@pytest.fixture(scope="module")
def random_perceptual():
    torch.manual_seed(0)
    # Random VGG weights (pretrained=False): structural checks only.
    return PerceptualLoss({"relu1_1": 0.1, "relu2_1": 1.0, "conv3_1": 1.0}, pretrained=False)


def test_perceptual_zero_for_identical_positive_otherwise(random_perceptual):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    assert random_perceptual(x, x.clone()).item() == 0.0
    assert random_perceptual(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1)).item() > 0


def test_perceptual_gradient_and_weights(random_perceptual):
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16)
    loss = random_perceptual(x, y)
    loss.backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in random_perceptual.parameters())
    doubled = PerceptualLoss(random_perceptual.layer_weights, perceptual_weight=2.0, pretrained=False)
    doubled.vgg.load_state_dict(random_perceptual.vgg.state_dict())
    assert torch.allclose(doubled(x, y), 2 * loss)
    off = PerceptualLoss({"relu1_1": 1.0}, perceptual_weight=0.0, pretrained=False)
    assert off(x, y).item() == 0.0


@pytest.mark.parametrize("criterion", ["l1", "l2", "fro"])
def test_perceptual_criteria(criterion):
    torch.manual_seed(0)
    loss = PerceptualLoss({"relu1_1": 1.0}, criterion=criterion, pretrained=False)
    x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    fx, fy = loss.vgg(x)["relu1_1"], loss.vgg(y)["relu1_1"]
    expected = {"l1": (fx - fy).abs().mean(), "l2": (fx - fy).square().mean(), "fro": (fx - fy).norm()}[criterion]
    assert torch.allclose(loss(x, y), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="criterion"):
        PerceptualLoss({"relu1_1": 1.0}, criterion="cos", pretrained=False)
    with pytest.raises(ValueError, match="same shape"):
        loss(x, torch.rand(1, 3, 16, 16))
