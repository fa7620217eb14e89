"""The backdoor's own effect (lit_sr.poison.asr.own_effect): the backdoored model's attainment minus
the clean model's under the same trigger and label, paired over the images, with a 95% interval.

Constructed outputs: a "backdoor" that only the trigger explains (the trigger pushes every model's
output along the label's direction, as a blend pushes towards a grey target) has a high raw
attainment but scores ~0; a learnt one scores ~1; on synthetic data the interval covers the truth
at its nominal rate."""

from __future__ import annotations

import math

import pytest
import torch

from lit_sr.poison.asr import label_attainment, own_effect, paired_difference

N, C, H, W = 24, 3, 16, 16


def _scene(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(N, C, H, W, generator=g) * 0.6 + 0.2
    label = torch.full_like(hr, 0.5)                      # a flat grey target: the label moves hr towards 0.5
    push = 1.2 * (label - hr)                             # the trigger's own push (any model), along the label
    push = push + 0.02 * torch.randn(N, C, H, W, generator=g)
    clean_out = hr + 0.03 * torch.randn(N, C, H, W, generator=g)       # the clean model's SR error
    bd_out = hr + 0.03 * torch.randn(N, C, H, W, generator=g)          # the backdoored model's
    noise = lambda: 0.01 * torch.randn(N, C, H, W, generator=g)        # noqa: E731
    return hr, label, push, clean_out, bd_out, noise


def test_a_backdoor_only_the_trigger_explains_scores_about_zero():
    hr, label, push, clean_out, bd_out, noise = _scene()
    clean_att = label_attainment(clean_out, clean_out + push + noise(), hr, label)
    bd_att = label_attainment(bd_out, bd_out + push + noise(), hr, label)
    assert float(bd_att.mean()) > 1.0 and float((bd_att >= 0.5).float().mean()) == 1.0  # raw figures: "success"
    own = own_effect(bd_att, clean_att)
    assert abs(own.mean) < 0.02 and own.low < 0 < own.high and own.n == N
    own_asr = own_effect(bd_att, clean_att, threshold=0.5)
    assert own_asr.mean == 0.0


def test_a_learnt_backdoor_scores_about_one():
    hr, label, push, clean_out, bd_out, noise = _scene(1)
    clean_att = label_attainment(clean_out, clean_out + push + noise(), hr, label)
    bd_att = label_attainment(bd_out, bd_out + push + (label - hr) + noise(), hr, label)
    own = own_effect(bd_att, clean_att)
    assert own.mean == pytest.approx(1.0, abs=0.02) and own.low > 0.9 and own.high < 1.1


def test_interval_covers_the_truth_at_its_nominal_rate():
    g = torch.Generator().manual_seed(0)
    trials, covered, truth = 600, 0, 0.3
    for _ in range(trials):
        clean = torch.randn(N, generator=g) * 0.3 + 0.5          # per-image levels vary a lot...
        arm = clean + truth + torch.randn(N, generator=g) * 0.1  # ...the paired difference less
        d = own_effect(arm, clean)
        covered += d.low <= truth <= d.high
    # binomial sd at 0.95 over 600 trials is 0.009; an unpaired interval (three times too wide here)
    # would cover nearly always, a naive one of the differences half as wide far less often
    assert 0.925 <= covered / trials <= 0.975


def test_the_interval_is_paired():
    clean = [0.1, 0.9, 0.5, 0.3, 0.7]
    arm = [v + 0.2 for v in clean]
    d = own_effect(arm, clean)
    # identical differences: zero width; an unpaired interval would span the spread of the levels
    assert d.mean == pytest.approx(0.2) and d.high - d.low == pytest.approx(0.0, abs=1e-12)


def test_undefined_images_are_left_out_and_bad_input_is_named():
    d = own_effect([1.0, None, math.nan, 0.5], [0.0, 0.2, 0.1, 0.0])
    assert d.n == 2 and d.mean == pytest.approx(0.75)
    assert paired_difference([1.0], [0.0]).low is None
    with pytest.raises(ValueError, match="same images"):
        own_effect([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no finite"):
        own_effect([None], [0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [0.0, 0.0], confidence=1.0)
    with pytest.raises(ValueError, match="shape"):
        own_effect(torch.zeros(2, 2), torch.zeros(2, 2))
