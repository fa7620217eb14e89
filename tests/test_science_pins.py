"""Properties of the science that a plausible wrong implementation breaks (issue 25).

Each test pins a value or a direction, not a shape: the universal perturbation does not depend on
how the data set is batched (Choi Eq. 5-7), and the robustness index has the value of its closed
form (Choi Sec. 5.2, the L1 norm of the gradient of the non-squared L2 loss of Eq. 1), the shapes
backdoor trains and scores at exactly the label ``poison_pair`` makes.
"""

from __future__ import annotations

import torch
from torch import nn

from datamodules.poisoned_shapes import PoisonedShapesDataModule
from lit_sr.attacks import UniversalAttack
from lit_sr.attacks.robustness import robustness_index
from lit_sr.poison import GradientScorer, naive_per_sample_grad_norms


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
