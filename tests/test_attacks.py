"""Tests of lit_sr.attacks on a tiny EDSR trained for a few seconds on scikit-image photos.

The network is trained in a module-scoped fixture (x2, 16 features, 2 blocks, 400 Adam steps on
16 px LR crops) so that it really super-resolves; a randomly initialised network would not show
the amplification of perturbations that the paper measures. Bicubic is the reference "model".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lit_sr.archs import build_arch
from lit_sr.attacks import (
    IFGSM,
    PGD,
    PartialAttack,
    SquareAttack,
    TargetedAttack,
    UniversalAttack,
    attack_metrics,
    centre_mask,
    masked_ssim,
    robustness_index,
    transfer_matrix,
    upscale_mask,
)
from lit_sr.metrics import masked_psnr, psnr, ssim

SCALE = 2  # the scale of the shared `trained` net (tests/conftest.py)
LR_SIZE = 16
EPS = 8 / 255
TOL = 1e-6


def _uniform_noise(lr: torch.Tensor, eps: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    noise = (torch.rand(lr.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1) * eps
    return (lr + (noise if mask is None else noise * mask)).clamp(0, 1)


def _sign_noise(lr: torch.Tensor, eps: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    signs = torch.randint(0, 2, lr.shape, generator=torch.Generator().manual_seed(7)).float() * 2 - 1
    noise = signs * eps
    return (lr + (noise if mask is None else noise * mask)).clamp(0, 1)


# Each entry builds an attack and runs it: (model, lr, hr) -> (lr_adv, SR mask for metrics or None).
def _run_ifgsm(model, lr, hr, eps=EPS):
    return IFGSM(model, eps, steps=20, reference="hr")(lr, hr=hr), None


def _run_pgd(model, lr, hr, eps=EPS):
    return PGD(model, eps, steps=20, seed=0)(lr), None


def _run_partial(model, lr, hr, eps=EPS):
    attack = PartialAttack(model, eps, steps=20, reference="hr")
    return attack(lr, hr=hr), attack.last_outer_hr_mask


def _run_universal(model, lr, hr, eps=EPS):
    attack = UniversalAttack(
        model, eps, steps=20, crop_size=LR_SIZE, random_start=True, progress=False, seed=0
    )
    return attack.fit(lr)(lr), None


def _run_square(model, lr, hr, eps=EPS):
    return SquareAttack(model, eps, n_queries=100, seed=0)(lr), None


UNTARGETED = {
    "ifgsm": _run_ifgsm,
    "pgd": _run_pgd,
    "partial": _run_partial,
    "universal": _run_universal,
    "square": _run_square,
}


def _sr_psnr(model, lr, lr_adv, mask=None) -> float:
    return attack_metrics(model, lr, lr_adv, mask_hr=mask)["sr_psnr"].mean().item()


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("eps", [2 / 255, 32 / 255])
@pytest.mark.parametrize("name", [*UNTARGETED, "targeted"])
def test_every_attack_stays_in_the_box_and_in_range(trained, batch, name, eps):
    lr, hr = batch
    if name == "targeted":
        adv = TargetedAttack(trained, eps, steps=5)(lr, target=hr.flip(0))
    else:
        adv, _ = UNTARGETED[name](trained, lr, hr, eps)
    assert adv.shape == lr.shape and adv.dtype == torch.float32
    assert (adv - lr).abs().max().item() <= eps + TOL
    assert adv.min().item() >= 0 and adv.max().item() <= 1
    assert (adv - lr).abs().max().item() > eps / 2  # it did move


def test_partial_perturbation_is_zero_outside_its_mask(trained, batch):
    lr, hr = batch
    attack = PartialAttack(trained, 16 / 255, steps=5, random_start=True, seed=0)
    adv = attack(lr)
    inside = centre_mask(LR_SIZE, LR_SIZE).bool().expand_as(lr)
    assert torch.equal(adv[~inside], lr[~inside])
    assert (adv[inside] != lr[inside]).float().mean() > 0.5
    # The paper's Eq. (10): the centre half, w/4 <= x < 3w/4.
    assert inside[0, 0].nonzero().min().item() == LR_SIZE // 4
    assert inside[0, 0].nonzero().max().item() == 3 * LR_SIZE // 4 - 1
    outer = attack.last_outer_hr_mask
    assert outer.shape[-2:] == hr.shape[-2:]
    assert torch.equal(outer, 1 - upscale_mask(centre_mask(LR_SIZE, LR_SIZE), SCALE))

    custom = torch.zeros(LR_SIZE, LR_SIZE)
    custom[2:6, 9:15] = 1
    adv = PartialAttack(trained, 16 / 255, steps=5, mask=custom, reference="hr")(lr, hr=hr)
    outside = (custom == 0).expand_as(lr)
    assert torch.equal(adv[outside], lr[outside])
    assert (adv[~outside] != lr[~outside]).any()


def test_universal_perturbation_is_one_bounded_pattern_for_all_images(trained, small_photos, crop_pairs, batch):
    lr, _ = batch
    bigger, _ = crop_pairs(small_photos, 3, torch.Generator().manual_seed(5), hr_size=48)  # 24 px LR
    attack = UniversalAttack(
        trained, EPS, steps=10, crop_size=LR_SIZE, random_start=True, progress=False, seed=0
    )
    attack.fit(lr)
    delta = attack.perturbation
    assert delta.shape == (1, 3, LR_SIZE, LR_SIZE)
    assert delta.abs().max().item() <= EPS + TOL
    assert attack.history[-1] > attack.history[0]  # Eq. (6) grew

    adv = attack(bigger)
    window = (slice(None), slice(None), slice(4, 4 + LR_SIZE), slice(4, 4 + LR_SIZE))
    applied = adv[window] - bigger[window]
    unclipped = ((bigger[window] + delta) >= 0) & ((bigger[window] + delta) <= 1)
    expected = delta.expand_as(applied)
    assert torch.allclose(applied[unclipped], expected[unclipped], atol=TOL)
    outside = torch.ones_like(bigger, dtype=torch.bool)
    outside[window] = False
    assert torch.equal(adv[outside], bigger[outside])
    assert (adv - bigger).abs().max().item() <= EPS + TOL

    # A loader of dict batches gives the same perturbation as the tensor.
    loader = [{"lr": lr[:2]}, {"lr": lr[2:]}]
    again = UniversalAttack(
        trained, EPS, steps=10, crop_size=LR_SIZE, random_start=True, progress=False, seed=0
    )
    assert torch.allclose(again.fit(loader).perturbation, delta, atol=TOL)
    with pytest.raises(ValueError, match="smaller"):
        attack(lr[..., :8, :8])


# --------------------------------------------------------------------------- the update rule


def test_ifgsm_follows_eq_2_and_3_step_by_step(trained, batch):
    lr, hr = batch
    steps, eps = 7, 4 / 255
    adv = IFGSM(trained, eps, steps=steps, reference="hr")(lr, hr=hr)

    x = lr.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = ((trained(x) - hr) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, x)
        x_tilde = torch.clamp(x.detach() + eps / steps * grad.sign(), 0, 1)  # Eq. (2)
        x = torch.clamp(x_tilde - lr, -eps, eps) + lr  # Eq. (3)
    assert torch.allclose(adv, x, atol=TOL)
    assert (adv - lr).abs().max() > eps / 2


@pytest.mark.parametrize(
    "build",
    [
        lambda m: IFGSM(m, EPS, 10),
        lambda m: IFGSM(m, EPS, 10, reference="clean", random_start=False),
        lambda m: PartialAttack(m, EPS, 10),
        lambda m: UniversalAttack(m, EPS, 10),
    ],
)
def test_clean_reference_without_random_start_raises(bicubic, build):
    with pytest.raises(ValueError, match="random_start"):
        build(bicubic)


def test_reference_hr_without_hr_raises(bicubic, batch):
    with pytest.raises(ValueError, match="hr"):
        IFGSM(bicubic, EPS, 3, reference="hr")(batch[0])


# --------------------------------------------------------------------------- strength


@pytest.fixture(scope="module")
def strength(trained, bicubic, batch):
    """SR PSNR under every attack and under noise of the same eps, for the trained net and bicubic."""
    lr, hr = batch
    table = {}
    for model_name, model in (("net", trained), ("bicubic", bicubic)):
        for name, run in UNTARGETED.items():
            adv, mask = run(model, lr, hr)
            noise_mask = centre_mask(LR_SIZE, LR_SIZE) if name == "partial" else None
            table[model_name, name] = {
                "attack": _sr_psnr(model, lr, adv, mask),
                "uniform": _sr_psnr(model, lr, _uniform_noise(lr, EPS, noise_mask), mask),
                "sign": _sr_psnr(model, lr, _sign_noise(lr, EPS, noise_mask), mask),
            }
    return table


@pytest.mark.parametrize("name", list(UNTARGETED))
def test_attack_beats_noise_of_the_same_eps(strength, name):
    row = strength["net", name]
    # Far below uniform noise, and below +-eps sign noise (same L_inf and L2 energy as the attack).
    assert row["attack"] < row["uniform"] - 4.0, row
    assert row["attack"] < row["sign"] - (0.5 if name == "square" else 1.0), row


@pytest.mark.parametrize("name", list(UNTARGETED))
def test_bicubic_is_the_most_robust_model(strength, name):
    assert strength["bicubic", name]["attack"] > strength["net", name]["attack"] + 0.5, strength


def test_targeted_attack_moves_the_output_towards_the_target(trained, batch):
    lr, hr = batch
    target = hr.flip(0)  # another image's HR
    adv = TargetedAttack(trained, 16 / 255, steps=20)(lr, target=target)
    with torch.no_grad():
        before = psnr(trained(lr), target)
        after = psnr(trained(adv), target)
        noisy = psnr(trained(_sign_noise(lr, 16 / 255)), target)
    assert (after > before + 1.0).all(), (before, after)
    assert (after > noisy).all()


# --------------------------------------------------------------------------- model state


class _Flaky(nn.Module):
    """Wraps a model and raises on the n-th forward call (to test restoration on error)."""

    def __init__(self, model: nn.Module, fail_at: int):
        super().__init__()
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.model(x)


def _state(model: nn.Module):
    return (
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
        {name: p.detach().clone() for name, p in model.state_dict().items()},
    )


@pytest.mark.parametrize("fail_at", [None, 3])
def test_model_state_is_restored_and_no_grad_is_left(batch, fail_at):
    lr, hr = batch
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=SCALE, img_range=1.0)  # random init
    net.train()
    net.body.eval()  # mixed modes
    net.conv_first.weight.requires_grad_(False)  # mixed flags
    model = _Flaky(net, fail_at or -1)
    before = _state(model)
    attack = IFGSM(model, EPS, steps=4, reference="hr")
    if fail_at is None:
        attack(lr, hr=hr)
    else:
        with pytest.raises(RuntimeError, match="boom"):
            attack(lr, hr=hr)
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1]
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    assert all(p.grad is None for p in model.parameters())


def test_attack_inside_inference_mode_matches_outside(trained, batch):
    lr, hr = batch
    expected = PGD(trained, EPS, steps=5, seed=3)(lr, hr=hr)
    with torch.inference_mode():
        lr_inf, hr_inf = lr.clone(), hr.clone()  # inference tensors, as in Lightning validation
        got = PGD(trained, EPS, steps=5, seed=3)(lr_inf, hr=hr_inf)
        metrics = attack_metrics(trained, lr_inf, got, hr=hr_inf)
    assert torch.equal(got, expected)
    assert metrics["sr_psnr"].shape == (lr.shape[0],)


def test_bf16_autocast_runs_within_bounds_and_keeps_strength(trained, batch):
    lr, _ = batch
    fp32 = PGD(trained, EPS, steps=10, seed=0)(lr)
    bf16 = PGD(trained, EPS, steps=10, seed=0, autocast="bf16")(lr)
    assert bf16.dtype == torch.float32
    assert (bf16 - lr).abs().max().item() <= EPS + TOL and 0 <= bf16.min() and bf16.max() <= 1
    assert abs(_sr_psnr(trained, lr, bf16) - _sr_psnr(trained, lr, fp32)) < 1.0


def test_eot_samples_are_read_from_the_model(batch):
    class Counting(nn.Module):
        eot_samples = 3

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x)

    model = Counting()
    lr = batch[0]
    IFGSM(model, EPS, steps=4, reference="hr")(lr, hr=lr)
    assert model.calls == 4 * 3
    model.calls = 0
    IFGSM(model, EPS, steps=4, reference="hr", eot_samples=1)(lr, hr=lr)
    assert model.calls == 4


def test_custom_loss_callable_is_used(trained, batch):
    lr, hr = batch

    def l1(sr, ref):
        return (sr - ref).abs().flatten(1).sum(1)

    adv = IFGSM(trained, EPS, steps=5, reference="hr", loss=l1)(lr, hr=hr)
    with torch.no_grad():
        assert (l1(trained(adv), hr) > l1(trained(lr), hr)).all()
    with pytest.raises(ValueError, match="one value per image"):
        IFGSM(trained, EPS, steps=1, reference="hr", loss=lambda sr, ref: (sr - ref).sum())(lr, hr=hr)


# --------------------------------------------------------------------------- measures


def test_robustness_index_ranks_the_trained_net_above_bicubic(trained, bicubic, batch):
    lr, _ = batch
    net_index = robustness_index(trained, lr, n_samples=24, batch_size=16, seed=0)
    bic_index = robustness_index(bicubic, lr, n_samples=24, batch_size=16, seed=0)
    assert net_index.shape == (lr.shape[0],)
    assert (net_index > bic_index).all(), (net_index, bic_index)
    # Batching is an implementation detail: another chunking gives the same maxima.
    same = robustness_index(trained, lr, n_samples=24, batch_size=5, seed=0)
    assert torch.allclose(net_index, same, rtol=1e-5)


def test_transfer_matrix_white_box_is_strongest_on_the_net(trained, bicubic, batch):
    lr, hr = batch
    result = transfer_matrix({"net": trained, "bicubic": bicubic}, lr, steps=10, batch_size=3)
    assert result["names"] == ["net", "bicubic"]
    table = result["sr_psnr"]
    assert table.shape == (2, 2) and result["hr_psnr"] is None
    assert table[0, 0] < table[1, 0]  # attacking the net itself hurts it more than transfer
    with_hr = transfer_matrix({"net": trained}, lr, hr=hr, steps=3)
    assert with_hr["hr_psnr"].shape == (1, 1)


def test_attack_metrics_keys_and_conventions(trained, batch):
    lr, hr = batch
    adv = IFGSM(trained, EPS, steps=5, reference="hr")(lr, hr=hr)
    metrics = attack_metrics(
        trained, lr, adv, hr=hr, crop_border=SCALE, lpips=lambda a, b: (a - b).abs().flatten(1).mean(1)
    )
    expected = {
        "lr_psnr",
        "sr_psnr",
        "sr_ssim",
        "hr_psnr",
        "hr_ssim",
        "clean_hr_psnr",
        "sr_lpips",
        "hr_lpips",
    }
    assert set(metrics) == expected
    assert all(v.shape == (lr.shape[0],) for v in metrics.values())
    # An 8/255 L_inf budget caps the 8-bit LR error at 8 levels: PSNR >= 20 log10(255 / 8).
    assert (metrics["lr_psnr"] >= 20 * np.log10(255 / 8) - 1e-9).all()
    with torch.no_grad():
        sr, sr_adv = trained(lr), trained(adv)
    assert torch.allclose(metrics["sr_psnr"], psnr(sr_adv, sr, crop_border=SCALE))

    # A full mask reproduces the unmasked metrics; the outer mask measures only the outer region.
    ones = torch.ones(1, 1, *hr.shape[-2:])
    assert torch.allclose(masked_ssim(sr_adv, sr, ones), ssim(sr_adv, sr), atol=1e-12)
    masked = attack_metrics(trained, lr, adv, mask_hr=ones)
    assert torch.allclose(masked["sr_psnr"], psnr(sr_adv, sr))
    outer = 1 - upscale_mask(centre_mask(LR_SIZE, LR_SIZE), SCALE)
    region = attack_metrics(trained, lr, adv, mask_hr=outer, y_channel=True)["sr_psnr"]
    assert torch.allclose(region, masked_psnr(sr_adv, sr, outer, y_channel=True))
    damaged = sr_adv.clone()
    damaged[..., 8:24, 8:24] = 0  # damage inside the attacked centre does not count
    assert torch.allclose(masked_psnr(damaged, sr, outer, y_channel=True), region)
    assert (psnr(damaged, sr) < psnr(sr_adv, sr)).all()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "build, error, name",
    [
        (lambda m: IFGSM(m, eps=0, reference="hr"), ValueError, "eps"),
        (lambda m: IFGSM(m, eps=2.0, reference="hr"), ValueError, "eps"),
        (lambda m: IFGSM(m, eps="8", reference="hr"), TypeError, "eps"),
        (lambda m: IFGSM(m, steps=0, reference="hr"), ValueError, "steps"),
        (lambda m: IFGSM(m, steps=2.5, reference="hr"), TypeError, "steps"),
        (lambda m: IFGSM(m, step_size=-1.0, reference="hr"), ValueError, "step_size"),
        (lambda m: IFGSM(m, reference="gt"), ValueError, "reference"),
        (lambda m: IFGSM(m, random_start="yes", reference="hr"), TypeError, "random_start"),
        (lambda m: IFGSM(m, reference="hr", loss="huber"), ValueError, "loss"),
        (lambda m: IFGSM(m, reference="hr", autocast="fp16"), ValueError, "autocast"),
        (lambda m: IFGSM(m, reference="hr", eot_samples=0), ValueError, "eot_samples"),
        (lambda m: IFGSM("model", reference="hr"), TypeError, "model"),
        (lambda m: PartialAttack(m, reference="hr", mask=torch.full((16, 16), 0.5)), ValueError, "mask"),
        (lambda m: PartialAttack(m, reference="hr", mask=torch.ones(3, 16, 16)), ValueError, "mask"),
        (lambda m: PartialAttack(m, reference="hr", mask=torch.ones(16, 16)), ValueError, "mask"),
        (lambda m: UniversalAttack(m, reference="hr", crop_size=0), ValueError, "crop_size"),
        (lambda m: UniversalAttack(m, reference="hr", batch_size=0), ValueError, "batch_size"),
        (lambda m: SquareAttack(m, n_queries=0), ValueError, "n_queries"),
        (lambda m: SquareAttack(m, p_init=1.5), ValueError, "p_init"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(bicubic, build, error, name):
    with pytest.raises(error, match=name):
        build(bicubic)


def test_bad_inputs_raise(bicubic, batch):
    lr, hr = batch
    attack = IFGSM(bicubic, EPS, 2, reference="hr")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(lr * 2, hr=hr)
    with pytest.raises(ValueError, match="N, C, H, W"):
        attack(lr[0], hr=hr)
    with pytest.raises(ValueError, match="shape"):
        attack(lr, hr=hr[..., :-2])
    with pytest.raises(ValueError, match="mask"):
        PartialAttack(bicubic, EPS, 2, mask=centre_mask(8, 8), reference="hr")(lr, hr=hr)
    with pytest.raises(RuntimeError, match="fit"):
        UniversalAttack(bicubic, EPS, 2, reference="hr")(lr)
    with pytest.raises(ValueError, match="target"):
        TargetedAttack(bicubic, EPS, 2)(lr)
