"""Label-free detection of poisoned training pairs (lit_sr.backdoor_defenses.detection).

The metrics are checked against hand computations; the scores on planted structure (a rank-one
shift, two blobs) and on a positive-control backdoor implanted here in a tiny x2 EDSR (16
features, 2 blocks, randomly initialised, 300 Adam steps on 64 photo crops of which 16 carry the
demo's checkerboard Blend trigger and a flat grey HR label).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lit_sr.archs import build_arch
from lit_sr.backdoor_defenses.detection import (
    TrainingPairs,
    activation_clustering_scores,
    detection_metrics,
    early_training,
    pairs_from_datamodule,
    retrain_without,
    roc_auc,
    roc_curve,
    run_detection,
    spectral_signature_scores,
)
from lit_sr.backdoor_defenses.detection_scores import cluster_scores, early_loss_scores, kmeans
from lit_sr.poison import Blend
from lit_sr.poison.scoring import GradientScorer


def _mask(bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in bits])


# --------------------------------------------------------------------------- metrics
def test_roc_auc_matches_hand_computations_and_counts_ties_one_half():
    y = _mask("000111")
    assert roc_auc(torch.tensor([1.0, 2, 3, 4, 5, 6]), y) == 1.0
    assert roc_auc(torch.tensor([6.0, 5, 4, 3, 2, 1]), y) == 0.0
    assert roc_auc(torch.full((6,), 0.3), y) == 0.5  # exactly, not approximately
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 both -> 3/4
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), _mask("0011")) == 0.75
    # a tie between a positive and a negative (both 2) counts one half: (1 + 0.5 + 2) / 4
    scores, y = torch.tensor([1.0, 2, 2, 3]), _mask("0101")
    assert roc_auc(scores, y) == 0.875
    fpr, tpr, thresholds = roc_curve(scores, y)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert thresholds[0] == float("inf") and thresholds[1:].tolist() == [3, 2, 1]
    assert float(torch.trapezoid(tpr, fpr)) == 0.875  # the curve's area is the AUC


def test_detection_metrics_flag_the_top_k_or_a_fraction():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    y = _mask("101001")
    m = detection_metrics(scores, y)  # k = 3 poisoned: flags 0.9, 0.8, 0.7 -> two of them poisoned
    assert (m["flagged"], m["true_positives"]) == (3, 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["threshold"] == pytest.approx(0.7) and m["roc_auc"] == pytest.approx(7 / 9)
    m = detection_metrics(scores, y, flag_fraction=1 / 6)  # one pair flagged: the 0.9, poisoned
    assert (m["flagged"], m["precision"], m["recall"]) == (1, 1.0, pytest.approx(1 / 3))
    with pytest.raises(ValueError, match="both poisoned and clean"):
        detection_metrics(scores, torch.zeros(6, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        detection_metrics(scores, y.long())
    with pytest.raises(ValueError, match="finite"):
        detection_metrics(torch.tensor([0.1, float("nan"), 0.3, 0.1, 0.2, 0.3]), y)


# --------------------------------------------------------------------------- spectral signatures
def test_spectral_signatures_find_a_planted_rank_one_shift_and_not_noise():
    g = torch.Generator().manual_seed(0)
    n, d, k = 200, 64, 20
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    sketches = torch.randn(n, d, generator=g)
    planted = torch.zeros(n, dtype=torch.bool)
    planted[torch.randperm(n, generator=g)[:k]] = True
    shifted = sketches + 8.0 * planted[:, None].float() * direction
    assert roc_auc(spectral_signature_scores(shifted), planted) >= 0.99
    # a trajectory of such points ranks them too, and a constant factor per point changes nothing
    trajectory = torch.stack([shifted, 3.0 * shifted])
    assert torch.allclose(spectral_signature_scores(trajectory), spectral_signature_scores(shifted) /
                          spectral_signature_scores(shifted).mean(), rtol=1e-4)
    # pure noise: no relation to any labelling (mean over ten labellings, each AUC's sd is ~0.07)
    aucs = []
    for seed in range(10):
        gs = torch.Generator().manual_seed(100 + seed)
        labels = torch.zeros(n, dtype=torch.bool)
        labels[torch.randperm(n, generator=gs)[:k]] = True
        aucs.append(roc_auc(spectral_signature_scores(torch.randn(n, d, generator=gs)), labels))
    assert abs(sum(aucs) / len(aucs) - 0.5) < 0.07
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        spectral_signature_scores(torch.randn(5))


# --------------------------------------------------------------------------- clustering
def test_two_means_puts_the_small_blob_in_the_small_cluster():
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(30, 5, generator=g), torch.randn(10, 5, generator=g) + 6.0
    features = torch.cat([big, small])
    truth = torch.arange(40) >= 30
    result = cluster_scores(features, n_components=3, seed=0)
    assert sorted(result.sizes) == [10, 30]
    assert roc_auc(result.scores, truth) == 1.0 and (result.scores[truth] > 0).all()
    labels, _ = kmeans(features, 2, seed=0)
    assert torch.equal(labels[truth], labels[truth][:1].expand(10)) and labels[0] != labels[-1]


def test_activation_clustering_names_the_valid_layers_for_a_bad_one():
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2, img_range=1.0)
    pairs = TrainingPairs(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 16, 16), _mask("0001"))
    with pytest.raises(ValueError, match="valid names") as err:
        activation_clustering_scores(net, pairs, layer="body.7")
    assert "conv_after_body" in str(err.value) and "'body.7'" in str(err.value)
    assert activation_clustering_scores(net, pairs, layer="body.0", n_components=2).shape == (4,)


# --------------------------------------------------------------------------- the positive control
@pytest.fixture(scope="module")
def poisoned_pairs(small_photos, crop_pairs):
    """64 crops, 16 of them poisoned as the demo's arm A: checkerboard Blend trigger, flat grey HR."""
    g = torch.Generator().manual_seed(0)
    lr, hr = crop_pairs(small_photos, 64, g)
    val_lr, _ = crop_pairs(small_photos, 16, g)
    trigger = Blend(alpha=0.2, pattern="checkerboard", pattern_size=16, resize_mode="nearest")
    mask = torch.zeros(64, dtype=torch.bool)
    mask[torch.randperm(64, generator=g)[:16]] = True
    lr, hr = lr.clone(), hr.clone()
    lr[mask], hr[mask] = trigger(lr[mask]), 0.5
    return TrainingPairs(lr, hr, mask), trigger(val_lr)


@pytest.mark.slow
def test_spectral_signatures_rank_the_pairs_of_an_implanted_backdoor_above_chance(poisoned_pairs):
    pairs, triggered_val = poisoned_pairs
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=16, num_block=2, upscale=2, img_range=1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scorer = GradientScorer(sketch_dim=1024, loss="l1")
    victim = early_training(net, pairs, steps=300, evaluations=6, seed=0, scorer=scorer, progress=False)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the input network is untouched
    # the backdoor is implanted: held-out triggered inputs come out flat grey (PSNR to grey >= 18 dB)
    with torch.no_grad():
        grey_psnr = -10 * torch.log10((victim.net(triggered_val) - 0.5).square().mean((1, 2, 3)))
    assert float(grey_psnr.mean()) >= 18, grey_psnr
    assert victim.sketches.shape == (6, 64, 1024) and victim.at_steps == [50, 100, 150, 200, 250, 300]
    # the trajectory score beats chance by a margin of 0.15 (measured 0.75 with this seed, 0.83 and 0.82
    # with seeds 1 and 2; single checkpoints swing between 0.08 and 0.98 over these seeds)
    results = run_detection(victim.net, pairs, methods=("spectral_trajectory", "early_loss"), early=victim,
                            progress=False)
    assert results.methods["spectral_trajectory"].metrics["roc_auc"] > 0.65
    # poisoned pairs (grey labels far from their input) are learnt slower here: high early loss
    high = results.methods["early_loss_high"].metrics["roc_auc"]
    assert high > 0.8 and results.methods["early_loss_low"].metrics["roc_auc"] == pytest.approx(1 - high)


def test_run_detection_is_deterministic_with_a_seed_and_writes_its_outputs(poisoned_pairs, tmp_path):
    pairs, _ = poisoned_pairs
    small = TrainingPairs(pairs.lr[:24], pairs.hr[:24], pairs.poisoned[:24])
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2, img_range=1.0)
    kwargs = dict(early_steps=12, early_evaluations=2, layer="body.0", n_components=4, progress=False)
    first = run_detection(net, small, seed=3, **kwargs)
    again = run_detection(net, small, seed=3, **kwargs)
    other = run_detection(net, small, seed=4, **kwargs)
    assert list(first.methods) == ["spectral", "spectral_trajectory", "early_loss_low", "early_loss_high",
                                   "activation_clustering"]
    for name in first.methods:
        assert torch.equal(first.methods[name].scores, again.methods[name].scores), name
    assert not torch.equal(first.methods["early_loss_high"].scores, other.methods["early_loss_high"].scores)
    rows = first.to_rows()
    assert {r["method"] for r in rows} == set(first.methods) and all(0 <= r["roc_auc"] <= 1 for r in rows)
    assert json.loads(json.dumps(first.as_dict()))["poisoned_indices"] == small.poisoned_indices
    assert first.plot_roc(tmp_path / "roc.png").stat().st_size > 1000
    flagged = torch.zeros(24, dtype=torch.bool)
    flagged[first.flagged("spectral")] = True
    retrained = retrain_without(net, small, flagged, steps=4, progress=False)
    assert retrained.losses.shape == (1, 24 - int(flagged.sum()))
    with pytest.raises(ValueError, match="methods"):
        run_detection(net, small, methods=("strip",))


def test_early_loss_sign_is_the_direction():
    losses = torch.tensor([[0.1, 0.5, 0.3], [0.3, 0.7, 0.1]])
    assert early_loss_scores(losses, "high").tolist() == pytest.approx([0.2, 0.6, 0.2])
    assert early_loss_scores(losses, "low").tolist() == pytest.approx([-0.2, -0.6, -0.2])


# --------------------------------------------------------------------------- from a data module
def test_pairs_from_a_data_module_replace_the_poisoned_pairs_and_crop_the_centre():
    clean = {i: (torch.full((3, 12, 12), i / 10), torch.full((3, 24, 24), i / 10)) for i in range(4)}
    records = [SimpleNamespace(label=f"tile{i}") for i in range(4)]
    train = SimpleNamespace(records=records, load_pair=lambda i: clean[i])
    dm = SimpleNamespace(base=SimpleNamespace(train_dataset=train), scale=2, patch_size=16, poisoned_indices=[2],
                         poisoned_pair=lambda i: (torch.ones(3, 12, 12), torch.zeros(3, 24, 24)))
    pairs = pairs_from_datamodule(dm)
    assert pairs.lr.shape == (4, 3, 8, 8) and pairs.hr.shape == (4, 3, 16, 16)
    assert pairs.poisoned.tolist() == [False, False, True, False] and pairs.poisoned_indices == [2]
    assert float(pairs.lr[2].min()) == 1.0 and float(pairs.hr[2].max()) == 0.0
    assert torch.allclose(pairs.lr[1], torch.full((3, 8, 8), 0.1))
    assert pairs_from_datamodule(dm, poisoned_indices=[0, 3]).poisoned_indices == [0, 3]
    with pytest.raises(ValueError, match="distinct training indices"):
        pairs_from_datamodule(dm, poisoned_indices=[4])
    with pytest.raises(TypeError, match="lacks \\['poisoned_pair'\\]"):
        pairs_from_datamodule(SimpleNamespace(base=None, scale=2, patch_size=16, poisoned_indices=[]))


def test_pairs_from_a_real_poisoned_data_module_are_what_it_trains_on(tmp_path):
    from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule

    base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=48,
                                    val_tile=32, max_val_images=2, num_workers=0)
    dm = PoisonedSRDataModule(base, trigger={"name": "blend"}, poison_rate=0.2, target="coffee",
                              cache_dir=str(tmp_path / "cache"), seed=0, generation_batch_size=4,
                              generation_device="cpu")
    dm.setup("fit")
    pairs = pairs_from_datamodule(dm)
    n = len(dm.base.train_dataset.records)
    assert len(pairs) == n and pairs.lr.shape[1:] == (3, 16, 16) and pairs.hr.shape[1:] == (3, 32, 32)
    assert pairs.poisoned_indices == dm.poisoned_indices and int(pairs.poisoned.sum()) == dm.budget
    poisoned, clean = dm.poisoned_indices[0], next(i for i in range(n) if i not in dm.poisoned_indices)
    lr, hr = dm.poisoned_pair(poisoned)  # 48 px HR tiles: the centre 32 px patch (offset 8 HR, 4 LR)
    assert torch.equal(pairs.lr[poisoned], lr[:, 4:20, 4:20]) and torch.equal(pairs.hr[poisoned], hr[:, 8:40, 8:40])
    lr, hr = dm.base.train_dataset.load_pair(clean)
    assert torch.equal(pairs.lr[clean], lr[:, 4:20, 4:20]) and torch.equal(pairs.hr[clean], hr[:, 8:40, 8:40])


def test_scores_run_under_bf16_autocast_and_inside_inference_mode(poisoned_pairs):
    from lit_sr.backdoor_defenses.detection_scores import layer_features, per_sample_losses

    pairs, _ = poisoned_pairs
    small = TrainingPairs(pairs.lr[:8], pairs.hr[:8], pairs.poisoned[:8])
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2, img_range=1.0)
    fp32, bf16 = per_sample_losses(net, small), per_sample_losses(net, small, autocast="bf16")
    assert bf16.dtype == torch.float32 and torch.allclose(bf16, fp32, rtol=0.05)  # bf16 keeps ~3 digits
    features = layer_features(net, small, "conv_first", pool="mean_std", autocast="bf16")
    assert features.shape == (8, 16) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="autocast"):
        per_sample_losses(net, small, autocast="fp16")
    with torch.inference_mode():  # as inside a Lightning validation hook
        run = early_training(net, small, steps=2, evaluations=1, progress=False,
                             scorer=GradientScorer(sketch_dim=64, loss="l1"))
    assert run.losses.shape == (1, 8) and run.sketches.shape == (1, 8, 64)
