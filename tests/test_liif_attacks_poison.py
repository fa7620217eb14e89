"""The attacks and the BadSR machinery run on LIIF fixed to an output scale (also a non-integer one):
PGD and the universal attack beat noise of the same budget, the vectorised per-sample backdoor
gradients equal the per-sample loop, the adversarial trigger optimises against a LIIF substitute, BadSR's
poisoned labels align LIIF's latent codes with the target's,
and the feature extractor finds LIIF's latent codes by default.

Tiny random LIIF (8 features, one block, MLP 16-16).
"""

from __future__ import annotations

import torch

from lit_sr.archs import build_arch
from lit_sr.attacks.ifgsm import PGD
from lit_sr.attacks.universal import UniversalAttack
from lit_sr.poison.adversarial_trigger import AdversarialTrigger
from lit_sr.poison.gradients import naive_per_sample_grad_stats, per_sample_grad_stats
from lit_sr.poison.poisoned_hr import FeatureExtractor

EPS = 4 / 255


def tiny(scale: float = 3.5):
    torch.manual_seed(0)
    return build_arch("liif", n_resblocks=1, n_feats=8, hidden_list=[16, 16]).eval().at_scale(scale)


def damage(model, adv, lr) -> float:
    with torch.no_grad():
        return float((model(adv) - model(lr)).square().mean())


def noise_like(lr: torch.Tensor, seed: int) -> torch.Tensor:
    u = torch.rand(lr.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return (lr + u * EPS).clamp(0, 1)


def test_pgd_on_liif_at_a_non_integer_scale_beats_noise():
    model = tiny(3.5)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    adv = PGD(model, eps=EPS, steps=8, seed=0)(lr)
    assert adv.shape == lr.shape and (adv - lr).abs().max() <= EPS + 1e-6
    assert damage(model, adv, lr) > 3 * damage(model, noise_like(lr, 3), lr)


def test_universal_perturbation_on_liif_beats_noise():
    model = tiny(2.5)
    lr = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    attack = UniversalAttack(model, eps=EPS, steps=8, crop_size=8, random_start=True, progress=False, seed=0).fit(lr)
    adv = attack(lr)
    assert attack.perturbation.shape == (1, 3, 8, 8)
    assert damage(model, adv, lr) > 3 * damage(model, noise_like(lr, 5), lr)


def test_per_sample_backdoor_gradients_on_liif_equal_the_loop():
    model = tiny(3.0)
    lr = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    target = torch.rand(3, 3, 18, 18, generator=torch.Generator().manual_seed(7))
    norms, sketches = per_sample_grad_stats(model, lr, target, chunk_size=2, sketch_dim=64)
    naive_norms, naive_sketches = naive_per_sample_grad_stats(model, lr, target, sketch_dim=64)
    assert torch.allclose(norms, naive_norms, rtol=1e-4)
    assert torch.allclose(sketches, naive_sketches, rtol=1e-3, atol=1e-6)
    assert (norms > 0).all()


def test_adversarial_trigger_optimises_against_a_liif_substitute():
    model = tiny(4.0)
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    trigger = AdversarialTrigger(model, steps=15, lr=2 / 255, perceptual="ssim", l2_budget=4 / 255, seed=0)
    triggered = trigger(lr)
    assert triggered.shape == lr.shape and not torch.equal(triggered, lr)
    start = (lr + (torch.rand(lr.shape, generator=torch.Generator().manual_seed(9)) * 2 - 1) / 255).clamp(0, 1)
    assert damage(model, triggered, lr) > damage(model, start, lr)  # it moved the output away from the clean one


def test_feature_extractor_defaults_to_the_latent_codes():
    model = tiny(2.0)
    lr = torch.rand(1, 3, 6, 7)
    for net in (model, model.net):
        feats = FeatureExtractor(net)(lr)
        assert torch.allclose(feats, model.net.gen_feat(lr))


def test_badsr_poisoned_labels_align_liif_latent_codes_within_the_budget():
    from lit_sr.poison.poisoned_hr import make_poisoned_hr

    model = tiny(3.5)
    hr = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(10))
    target = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(11))
    features = FeatureExtractor(model)
    labels, info = make_poisoned_hr(features, hr, target, eps=0.05, steps=10)
    assert labels.shape == hr.shape and labels.min() >= 0 and labels.max() <= 1
    with torch.no_grad():
        before = (features(hr) - features(target)).square().mean()
        after = (features(labels) - features(target)).square().mean()
    assert after < before  # the label carries the target's latent codes
    assert not torch.equal(labels, hr)
