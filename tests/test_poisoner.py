"""The Poisoner and its label makers: pure tensors, no Lightning, independent of batch composition."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_sr.poison import AdversarialTrigger, Blend
from lit_sr.poison.cache import to_float, to_stored
from lit_sr.poison.poisoned_hr import resize_target
from lit_sr.poison.poisoner import CleanLabel, FeatureAlignedLabel, Poisoner, TargetLabel

ROOT = Path(__file__).resolve().parents[1]


def batch(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 3, 32, 32, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    return lr, hr


def test_poison_applies_the_trigger_and_the_label_and_reports_stealth():
    lr, hr = batch()
    target = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1))
    poisoner = Poisoner(Blend(alpha=0.2), TargetLabel(target))
    lr_p, hr_p, stats = poisoner.poison(lr, hr, [4, 5, 6])
    assert lr_p.dtype == hr_p.dtype == torch.uint8 and lr_p.shape == lr.shape and hr_p.shape == hr.shape
    torch.testing.assert_close(lr_p, to_stored(Blend(alpha=0.2)(lr), True))
    torch.testing.assert_close(to_float(hr_p), to_float(to_stored(resize_target(target, 3, 32, 32, 3), True)))
    assert set(stats) == {"trigger_lr_psnr", "trigger_lr_ssim", "label_psnr", "label_ssim"}
    assert all(v.shape == (3,) for v in stats.values())
    assert (stats["label_psnr"] < 20).all() and (stats["trigger_lr_psnr"] > 15).all()
    _, clean_hr, clean_stats = Poisoner(Blend(), CleanLabel(), quantize=False).poison(lr, hr, [0, 1, 2])
    torch.testing.assert_close(clean_hr, hr)
    assert torch.isinf(clean_stats["label_psnr"]).all() or (clean_stats["label_psnr"] > 90).all()


def test_badsr_sample_does_not_depend_on_the_batch_it_is_in():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))
    from lit_sr.poison.specs import AdversarialTriggerSpec

    trigger = AdversarialTriggerSpec(steps=3, perceptual="ssim").build(net)
    label = FeatureAlignedLabel(net[:2], torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)), steps=3)
    poisoner = Poisoner(trigger, label)
    lr, hr = batch(3)
    together = poisoner.poison(lr, hr, [10, 11, 12])
    alone = poisoner.poison(lr[1:2], hr[1:2], [11])
    # same sample id, same result (8-bit), whether alone or with others: shards may batch differently
    assert (together[0][1:2].int() - alone[0].int()).abs().max() <= 1
    assert (together[1][1:2].int() - alone[1].int()).abs().max() <= 1
    assert not torch.equal(together[0], to_stored(lr, True))  # the trigger moved the input
    assert isinstance(trigger, AdversarialTrigger)


def test_poisoner_rejects_bad_input():
    lr, hr = batch(2)
    poisoner = Poisoner(Blend(), CleanLabel())
    with pytest.raises(ValueError, match="one entry per sample"):
        poisoner.poison(lr, hr, [0])
    with pytest.raises(TypeError, match="Trigger"):
        Poisoner(lambda x: x, CleanLabel())
    with pytest.raises(ValueError, match="trigger_reference"):
        Poisoner(Blend(), CleanLabel(), trigger_reference="lr")


@pytest.mark.slow
def test_the_poison_library_imports_no_lightning():
    code = ("import sys, lit_sr.poison.poisoner, lit_sr.poison.cache, lit_sr.poison.generation, lit_sr.poison.specs,"
            " lit_sr.poison.sharding, lit_sr.poison.substitute; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'callbacks', 'datamodules')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
