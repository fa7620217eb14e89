"""Success metrics: the pixel and feature criteria, the exclusion of samples that already succeed
without the trigger, label attainment on constructed outputs, the tally's never-NaN rates and its
sums over DDP ranks (a fake strategy and a 2-process gloo group)."""

from __future__ import annotations

import math

import pytest
import torch
from forked_ranks import free_port, run_forked

from lit_sr.poison import (
    Rate,
    SuccessTally,
    attainment_asr,
    distributed_sum,
    feature_asr,
    feature_shift,
    label_attainment,
    pixel_asr,
    stealth,
    strategy_sum,
)


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


def test_pixel_asr_against_target_with_nothing_included_does_not_divide_by_zero(images):
    target, _, _ = images
    result = pixel_asr(target[None], target, clean_sr=target[None])  # the clean output already is the target
    assert result.num_included == 0 and result.rate is None
    assert str(result) == "n/a (0 included)"
    tally = SuccessTally()
    tally.update(target[None], target[None], target[None] * 0.5, target[None], target)
    assert str(tally.results()["pixel_asr"]) == "n/a (0 included)"
    assert tally.flat()["pixel_asr"] is None and tally.flat()["pixel_asr_included"] == 0


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


# --------------------------------------------------------------------------- label attainment


def constructed(seed: int = 0, n: int = 4, size: int = 16):
    """HR ``y``, a poisoned label ``y_p`` within 0.05 of it and a large SR error ``e`` shared by both outputs."""
    g = torch.Generator().manual_seed(seed)
    y = 0.25 + 0.5 * torch.rand(n, 3, size, size, generator=g)
    y_p = y + 0.05 * torch.randn(n, 3, size, size, generator=g).clamp(-1, 1)
    e = 0.15 * torch.randn(n, 3, size, size, generator=g).clamp(-1, 1)
    return y, y_p, e


def test_label_attainment_is_one_for_a_perfect_backdoor_and_zero_for_none():
    y, y_p, e = constructed()
    clean = y + e
    assert torch.allclose(label_attainment(clean, clean + (y_p - y), y, y_p), torch.ones(4, dtype=torch.float64))
    assert torch.equal(label_attainment(clean, clean, y, y_p), torch.zeros(4, dtype=torch.float64))


def test_label_attainment_cancels_the_shared_sr_error_and_ignores_orthogonal_change():
    y, y_p, e = constructed(1)
    d = y_p - y
    # the same backdoor on a poor SR model (large error e) and on a perfect one: the same attainment
    assert torch.allclose(label_attainment(y + e, y_p + e, y, y_p), label_attainment(y, y_p, y, y_p))
    # 30% of the displacement plus a change orthogonal to it (per image)
    noise = 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    coef = (noise * d).flatten(1).sum(1) / d.flatten(1).pow(2).sum(1)
    orthogonal = noise - coef.view(-1, 1, 1, 1) * d
    a = label_attainment(y + e, y + e + 0.3 * d + orthogonal, y, y_p)
    assert torch.allclose(a, torch.full_like(a, 0.3), atol=1e-9)
    # a wrong formula (e.g. the distance of the triggered output to y_p) would not ignore e
    assert not torch.allclose(label_attainment(y + e, y_p + 2 * e, y, y_p), torch.ones(4, dtype=torch.float64))


def test_attainment_asr_threshold_and_undefined_images():
    y, y_p, e = constructed(3, n=4)
    y_p[3] = y[3]  # nothing taught for image 3: undefined, left out
    d = y_p - y
    scale = torch.tensor([1.0, 0.6, 0.2, 5.0]).view(-1, 1, 1, 1)
    a = label_attainment(y + e, y + e + scale * d, y, y_p)
    assert math.isnan(a[3]) and torch.allclose(a[:3], torch.tensor([1.0, 0.6, 0.2], dtype=torch.float64))
    half = attainment_asr(a)
    assert (half.num_success, half.num_included) == (2, 3) and half.included.tolist() == [True, True, True, False]
    assert attainment_asr(a, threshold=0.7).num_success == 1
    assert attainment_asr(a[3:]).rate is None


def test_feature_shift_ratio_is_one_when_the_trigger_reproduces_the_label():
    y, _, e = constructed(4)
    target = torch.full((3, 16, 16), 0.5)
    y_p = y + 0.3 * (target - y)  # the label moves a third of the way to the target
    identity = lambda x: x  # noqa: E731
    tally = SuccessTally()
    tally.update(y, y_p, y, y_p, target, feature_fn=identity)
    assert tally.results()["feature_shift_ratio"] == pytest.approx(1.0)
    none = SuccessTally()
    none.update(y + e, y + e, y, y_p, target, feature_fn=identity)
    assert none.results()["feature_shift_ratio"] == pytest.approx(0.0)
    assert torch.allclose(feature_shift(identity, y, y, target), torch.zeros(4))
    assert none.results()["attainment_mean"] == 0.0 and str(none.results()["attainment_asr"]) == "0.0% (0/4)"


def test_empty_tally_reads_not_applicable_everywhere():
    tally = SuccessTally(means=("clean_psnr_y",))
    results = tally.results()
    assert all(v is None for k, v in results.items() if k != "num_images" and not isinstance(v, Rate))
    assert set(tally.formatted().values()) == {"n/a (0 included)", "0"}


# --------------------------------------------------------------------------- sums over ranks


def shard(rank: int):
    """Rank 0: one image, the backdoor fully learnt; rank 1: three images, no backdoor, and one clean
    output that is already the target (excluded from the pixel ASR)."""
    y, y_p, e = constructed(10 + rank, n=1 if rank == 0 else 3)
    target = torch.full((3, 16, 16), 0.5)
    clean = (y + e).clamp(0, 1)
    triggered = target.expand_as(y).clone() if rank == 0 else clean.clone()
    y_p = target.expand_as(y).clone()
    if rank == 1:
        clean[0] = triggered[0] = target
    return clean, triggered, y, y_p, target


def fill(tally: SuccessTally, rank: int) -> SuccessTally:
    clean, triggered, y, y_p, target = shard(rank)
    tally.update(clean, triggered, y, y_p, target, means={"psnr": torch.full((clean.shape[0],), 10.0 * (rank + 1))})
    return tally


class FakeStrategy:
    """Lightning's ``strategy.reduce`` for two ranks, the other rank's vector given."""

    def __init__(self, other: torch.Tensor):
        self.other, self.calls = other, []

    def reduce(self, t, reduce_op):
        self.calls.append(reduce_op)
        return t + self.other


def test_tally_sums_counts_over_ranks_before_dividing():
    whole = SuccessTally(means=("psnr",))
    fill(fill(whole, 0), 1)
    rank0, rank1 = fill(SuccessTally(means=("psnr",)), 0), fill(SuccessTally(means=("psnr",)), 1)
    # per rank: pixel ASR 1/1 and 0/2 -> the mean of the two rates would be 50%; the pooled rate is 1/3
    assert str(rank0.results()["pixel_asr"]) == "100.0% (1/1)" and str(rank1.results()["pixel_asr"]) == "0.0% (0/2)"
    strategy = FakeStrategy(rank1.as_tensor())
    rank0.reduce(strategy_sum(strategy))
    assert strategy.calls == ["sum"]
    assert rank0.sums == pytest.approx(whole.sums)
    assert rank0.results()["pixel_asr"] == Rate(1, 3)
    assert rank0.results()["psnr"] == pytest.approx((10 + 3 * 20) / 4)
    assert distributed_sum(torch.ones(2)).tolist() == [1.0, 1.0]  # no process group: the identity


def _gloo_worker(rank: int, port: int, out: str) -> None:
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # this forked rank's own environment
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        tally = fill(SuccessTally(means=("psnr",)), rank)
        tally.reduce()  # distributed_sum over the gloo group
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(tally.sums, f)
    finally:
        dist.destroy_process_group()


def test_tally_reduce_over_a_two_process_gloo_group(tmp_path):
    """Two ranks forked from the test process (tests/forked_ranks.py) reduce their tallies over gloo."""
    import json

    port = free_port()
    assert run_forked(_gloo_worker, [(rank, port, str(tmp_path)) for rank in (0, 1)], tmp_path) == [0, 0]
    whole = fill(fill(SuccessTally(means=("psnr",)), 0), 1)
    sums = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sums[0] == sums[1]
    assert sums[0] == pytest.approx(whole.sums)
    assert sums[0]["pixel_included"] == 3 and sums[0]["num_images"] == 4


def test_tally_rejects_bad_arguments():
    with pytest.raises(ValueError, match="means"):
        SuccessTally(means=("a", "a"))
    with pytest.raises(ValueError, match="clash"):
        SuccessTally(means=("num_images",))
    with pytest.raises(KeyError, match="declared"):
        SuccessTally().add_mean("psnr", torch.ones(2))
    with pytest.raises(TypeError, match="attainment_thr"):
        SuccessTally(attainment_thr="0.5")
    with pytest.raises(TypeError, match="reduce"):
        strategy_sum(object())
    y, y_p, _ = constructed()
    with pytest.raises(ValueError, match="poisoned_hr"):
        label_attainment(y, y, y, y_p[:2])
