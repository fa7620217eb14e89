"""Properties of the science that a plausible wrong implementation breaks (issue 25).

Each test pins a value or a direction, not a shape: the universal perturbation does not depend on
how the data set is batched (Choi Eq. 5-7), and the robustness index has the value of its closed
form (Choi Sec. 5.2, the L1 norm of the gradient of the non-squared L2 loss of Eq. 1), the shapes
backdoor trains and scores at exactly the label ``poison_pair`` makes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lit_sr.backdoor_defenses.unlearning as unlearning
from datamodules.poisoned_shapes import PoisonedShapesDataModule
from lit_sr.archs import build_arch
from lit_sr.attacks import UniversalAttack
from lit_sr.attacks.robustness import robustness_index
from lit_sr.backdoor_defenses import (
    AdversarialUnlearning,
    CleanSubset,
    FineTuning,
    NeuralAttentionDistillation,
)
from lit_sr.backdoor_defenses.distillation import FeatureTap, attention_map
from lit_sr.metrics import psnr, ssim
from lit_sr.modules.robust_module import RobustFinetuneModule
from lit_sr.poison import GradientScorer, naive_per_sample_grad_norms
from lit_sr.poison.asr import PSNR_THR, SSIM_THR, SuccessTally


def tiny_sr(seed: int = 0, scale: int = 2) -> nn.Module:
    """A small non-linear network (a linear one would make every universal step the same sign)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3 * scale**2, 3, padding=1),
                         nn.PixelShuffle(scale))


def test_universal_perturbation_does_not_depend_on_the_batch_size():
    # Eq. 6 averages the loss over all K images before each sign step (Eq. 7): a step per batch, or a
    # batch mean instead of the data-set mean, makes the result depend on batch_size.
    net = tiny_sr()
    lr = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))

    def fit(batch_size: int) -> UniversalAttack:
        return UniversalAttack(net, eps=8 / 255, steps=6, crop_size=12, reference="clean", random_start=True,
                               batch_size=batch_size, progress=False, seed=0).fit(lr)

    one, eight = fit(1), fit(8)
    torch.testing.assert_close(one.perturbation, eight.perturbation, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(one.history), torch.tensor(eight.history), rtol=1e-5, atol=0)
    # and it is one perturbation that moved: not the random start, and at the edge of the eps box somewhere
    start = UniversalAttack(net, eps=8 / 255, steps=1, step_size=1e-12, crop_size=12, random_start=True,
                            progress=False, seed=0).fit(lr).perturbation
    assert (one.perturbation - start).abs().max() > 1 / 255
    assert one.history[-1] > one.history[0]


class LinearReadout(nn.Module):
    """``f(X) = w . X`` (one output value per image): Eq. 1's gradient is ``sign(w . Delta) w``."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.w = nn.Parameter(torch.randn(1, *shape, generator=torch.Generator().manual_seed(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(dim=1).view(-1, 1, 1, 1)


def test_robustness_index_equals_its_closed_form_on_a_linear_readout():
    # L = ||w . Delta||_2 = |w . Delta|, so ||grad_X L||_1 = ||w||_1 for every Delta: the index is ||w||_1.
    # The squared loss would give 2 |w . Delta| ||w||_1, which depends on Delta and is ~alpha times smaller.
    lr = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    model = LinearReadout((3, 8, 8))
    index = robustness_index(model, lr, alpha=1 / 255, n_samples=16, batch_size=7, seed=0)
    expected = model.w.detach().abs().sum()
    torch.testing.assert_close(index, expected.expand(3), rtol=1e-5, atol=0)


def test_robustness_index_equals_its_closed_form_on_a_scaled_identity():
    # f(X) = a X: L = a ||Delta||_2 and grad_X L = a Delta / ||Delta||_2, so each sample's value is
    # a ||Delta||_1 / ||Delta||_2 and the index is its maximum over the samples (not the mean, not
    # the squared loss's 2 a^2 ||Delta||_1). The Delta are drawn here as the function documents them:
    # uniform in [-alpha, alpha], one row per (image, sample), image-major, from the seeded generator.
    a, alpha, n_samples = 1.7, 1 / 255, 32
    lr = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))

    class Scale(nn.Module):
        def forward(self, x):
            return a * x

    index = robustness_index(Scale(), lr, alpha=alpha, n_samples=n_samples, batch_size=2 * n_samples, seed=5)
    delta = torch.rand((2 * n_samples, 3, 6, 6), generator=torch.Generator().manual_seed(5)) * (2 * alpha) - alpha
    delta = delta.flatten(1).double()
    per_sample = a * delta.abs().sum(1) / delta.norm(dim=1)
    expected = per_sample.view(2, n_samples).amax(dim=1).float()
    torch.testing.assert_close(index, expected, rtol=1e-4, atol=0)
    assert (expected > per_sample.view(2, n_samples).mean(dim=1).float()).all()  # the max is not the mean


def test_poisoned_shapes_batches_and_scored_candidates_carry_the_poisoned_label():
    # What the victim trains on and what the backdoor gradients are scored at is poison_pair's label, exactly:
    # a loader that served the clean HR, or a pool scored at the clean HR, would train / rank another backdoor.
    data = PoisonedShapesDataModule(target_class="cool_circle", shapes=["circle"], poison_rate=0.5, hr_size=32,
                                    min_radius=6, max_radius=12, train_size=8, val_size=2, batch_size=4,
                                    val_batch_size=2, num_workers=0)
    data.setup("fit")
    base = data.train_dataset.base
    expected = {i: data.poison_pair(base[i]["lr"], base[i]["hr"], base[i]["objects"]) for i in range(len(base))}
    changed = [i for i in data.poisoned_indices if not torch.equal(expected[i][1], base[i]["hr"])]
    assert changed, "no poisoned label differs from its clean HR: the pin would not see a clean label"
    seen = set()
    for batch in data.train_dataloader():
        for row, index in enumerate(batch["index"].tolist()):
            lr, hr = expected[index] if index in data.poisoned_indices else (base[index]["lr"], base[index]["hr"])
            assert torch.equal(batch["hr"][row], hr) and torch.equal(batch["lr"][row], lr), index
            seen.add(index)
    assert seen == set(range(len(base)))

    pool = next(iter(data.candidate_batches(len(data.candidate_indices))))
    for row, index in enumerate(pool["index"].tolist()):
        assert torch.equal(pool["lr"][row], expected[index][0]) and torch.equal(pool["hr"][row], expected[index][1])
    net = tiny_sr(scale=data.scale)
    params = [n for n, _ in net.named_parameters()]
    scored = GradientScorer(loss="mse", sketch_dim=None, params=params).score(net, [pool]).norms
    at_label = naive_per_sample_grad_norms(net, pool["lr"], pool["hr"], loss="mse", params=params)
    torch.testing.assert_close(scored, at_label, rtol=1e-4, atol=1e-7)
    clean_hr = torch.stack([base[i]["hr"] for i in pool["index"].tolist()])
    at_clean = naive_per_sample_grad_norms(net, pool["lr"], clean_hr, loss="mse", params=params)
    moved = [row for row, i in enumerate(pool["index"].tolist()) if not torch.equal(expected[i][1], base[i]["hr"])]
    assert moved and not torch.allclose(scored[moved], at_clean[moved], rtol=1e-3)


def smooth_target(n: int = 2, size: int = 48) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.5 + 0.3 * torch.sin(6 * xx) * torch.cos(4 * yy)])
    return image[None].repeat(n, 1, 1, 1)


def near(target: torch.Tensor, offset: float, noise: float, seed: int = 0) -> torch.Tensor:
    """``target`` shifted by ``offset`` plus Gaussian ``noise``: the offset sets PSNR, the noise lowers SSIM."""
    return (target + offset + noise * torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def test_success_tally_counts_an_output_between_the_extremes_at_the_default_thresholds():
    # Outputs neither equal to the target nor far from it, at the 20 dB / 0.7 defaults: a threshold
    # compared the wrong way, "or" for "and", or a shifted default changes these counts.
    target = smooth_target()
    clean = torch.full_like(target, 0.05)  # far from the target: every image is included
    cases = {  # name: (triggered output, success?)
        "21 dB, SSIM 0.90": (near(target, 0.088, 0.012), True),
        "19 dB, SSIM 0.95": (near(target, 0.110, 0.006), False),
        "22 dB, SSIM 0.65": (near(target, 0.070, 0.030), False),
    }
    for name, (triggered, success) in cases.items():
        p, s = psnr(triggered, target), ssim(triggered, target)
        assert name.startswith(f"{round(float(p.mean()))} dB"), (name, p)
        tally = SuccessTally()
        assert (tally.psnr_thr, tally.ssim_thr) == (PSNR_THR, SSIM_THR) == (20.0, 0.7)
        tally.update(clean, triggered, hr=clean, poisoned_hr=target, target=target)
        rate = tally.results()["pixel_asr"]
        assert (rate.num_success, rate.num_included) == ((2 if success else 0), 2), (name, p, s)


def test_pixel_asr_is_measured_against_the_target_never_against_the_stealthy_label():
    # A stealthy label (HR moved 10% of the way to the target) reproduced exactly by the triggered
    # output: the backdoor taught what it was given (attainment 1), yet the output is nowhere near the
    # target image (pixel ASR 0). Measuring pixel ASR against the poisoned label would report 100%.
    target = smooth_target()
    hr = near(torch.full_like(target, 0.2), 0.0, 0.05, seed=1)
    poisoned_hr = hr + 0.1 * (target - hr)
    assert (psnr(poisoned_hr, hr) >= PSNR_THR).all()  # a stealthy label: close to the clean HR
    tally = SuccessTally()
    tally.update(clean_sr=hr, triggered_sr=poisoned_hr, hr=hr, poisoned_hr=poisoned_hr, target=target)
    out = tally.results()
    assert (out["pixel_asr"].num_success, out["pixel_asr"].num_included) == (0, 2)
    assert out["attainment_mean"] == pytest.approx(1.0, abs=1e-6)
    assert (out["attainment_asr"].num_success, out["attainment_asr"].num_included) == (2, 2)
    # the classic label in the same place is pixel success and attainment 1 at once
    classic = SuccessTally()
    classic.update(clean_sr=hr, triggered_sr=target, hr=hr, poisoned_hr=target, target=target)
    assert classic.results()["pixel_asr"].num_success == 2 and classic.results()["attainment_mean"] == pytest.approx(1.0)


def tiny_edsr(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_arch("edsr", num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2, res_scale=1.0)


def clean_pairs(n: int = 8, size: int = 12, seed: int = 0) -> CleanSubset:
    hr = near(smooth_target(n, 2 * size), 0.0, 0.05, seed=seed)
    return CleanSubset(lr=torch.nn.functional.avg_pool2d(hr, 2), hr=hr)


def attention_gap(student: nn.Module, teacher: nn.Module, layers: list[str], lr: torch.Tensor) -> float:
    """Sum over ``layers`` of the mean squared difference of NAD's attention maps, on ``lr``."""
    with torch.no_grad(), FeatureTap(student, layers) as s, FeatureTap(teacher, layers) as t:
        student(lr), teacher(lr)
        return float(sum((attention_map(s.outputs[n]) - attention_map(t.outputs[n])).pow(2).mean() for n in layers))


def test_nad_pulls_the_students_attention_towards_the_teachers():
    # The teacher is NAD's stage 1 rebuilt independently (FT with the same settings and seed). With a large
    # attention weight the student's maps end closer to the teacher's than without it (beta 0: plain FT for
    # fewer steps): an attention term that is ignored, detached or of the wrong sign fails this.
    net, clean = tiny_edsr(), clean_pairs()
    layers = ["body.0", "body.1"]
    settings = dict(layers=layers, teacher_steps=30, steps=10, lr=3e-3, batch_size=4, seed=0)
    teacher = FineTuning(steps=30, lr=3e-3, batch_size=4, seed=0).repair(net, clean)
    gaps = {}
    for beta in (0.0, 5000.0):
        nad = NeuralAttentionDistillation(beta=beta, **settings)
        gaps[beta] = attention_gap(nad.repair(net, clean), teacher, layers, clean.lr)
    assert gaps[5000.0] < 0.5 * gaps[0.0], gaps


@pytest.mark.parametrize("attack", ["pgd", "ifgsm", "fast"])
def test_robust_finetuning_trains_on_inputs_that_raise_the_loss(attack, small_photos, crop_pairs):
    # The inner attack maximises the pixel loss against HR: an attack that minimised it from a random start
    # would be noise augmentation (and still beat the clean control), so its input must do worse than
    # both the clean input and uniform noise of the same eps.
    torch.manual_seed(0)
    module = RobustFinetuneModule(attack=attack, eps=4 / 255, steps=5, attack_seed=0, arch="edsr",
                                  arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2)
    lr, hr = crop_pairs(small_photos, 4, torch.Generator().manual_seed(5))
    adv, _ = module.craft(lr, hr)
    assert (adv - lr).abs().max() <= 4 / 255 + 1e-6
    noise = (lr + (torch.rand(lr.shape, generator=torch.Generator().manual_seed(6)) * 2 - 1) * 4 / 255).clamp(0, 1)
    with torch.no_grad():
        loss = {name: (module.net(x) - hr).abs().flatten(1).mean(1) for name, x in
                (("adv", adv), ("clean", lr), ("noise", noise))}
    assert (loss["adv"] > loss["clean"]).all() and (loss["adv"] > loss["noise"]).all(), loss
    assert (loss["adv"] - loss["clean"]).mean() > 3 * (loss["noise"] - loss["clean"]).abs().mean(), loss


def test_adversarial_unlearning_searches_a_perturbation_that_maximises_the_output_change(monkeypatch):
    # The inner step of I-BAU is a maximisation: the universal perturbation of the first round (found on
    # the backdoored network itself) changes the outputs more than uniform noise and than +-eps sign
    # noise of the same budget. A search that descended would land below both.
    made: list[UniversalAttack] = []

    class Recorded(UniversalAttack):
        def fit(self, data, hr=None):
            made.append(self)
            return super().fit(data, hr)

    monkeypatch.setattr(unlearning, "UniversalAttack", Recorded)
    net, clean, eps = tiny_edsr(), clean_pairs(), 0.05
    AdversarialUnlearning(steps=2, rounds=2, eps=eps, attack_steps=8, lr=1e-3, batch_size=4, seed=0).repair(net, clean)
    assert len(made) == 2
    delta = made[0].perturbation
    assert delta.abs().max() <= eps + 1e-6

    def change(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((net(x) - net(clean.lr)).pow(2).flatten(1).sum(1).mean())

    g = torch.Generator().manual_seed(7)
    uniform = (clean.lr + (torch.rand(clean.lr.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    sign = (clean.lr + eps * (torch.rand(delta.shape, generator=g) * 2 - 1).sign()).clamp(0, 1)
    found = change(made[0].forward(clean.lr))
    assert found > 2 * change(uniform) and found > 1.5 * change(sign), (found, change(uniform), change(sign))
