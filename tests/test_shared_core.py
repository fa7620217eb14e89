"""The shared core (issue 8, item 3): one validator, one frozen_eval / model_device, one autocast
argument with the same name and values everywhere, Literal choices that jsonargparse rejects at
parse time, the adversarial trigger on the attack base. (No import cycle in lit_sr.poison: tests/test_import_direction.py.)"""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

import lit_sr.attacks
import lit_sr.attacks.base
import lit_sr.poison
import lit_sr.poison.triggers
from lit_sr import runtime, validation
from lit_sr.archs import arch_kwargs_with_scale, build_arch
from lit_sr.attacks import IFGSM, PGD, Attack, PartialAttack, SquareAttack, TargetedAttack, UniversalAttack
from lit_sr.errors import ConfigError, RunError
from lit_sr.losses import GANLoss, PerceptualLoss
from lit_sr.poison import AdversarialTrigger, FeatureExtractor, make_poisoned_hr, per_sample_grad_stats
from lit_sr.poison.trigger_base import Trigger
from lit_sr.poison.triggers import BadNet, Blend, WaNet


@pytest.fixture(scope="module")
def edsr():
    torch.manual_seed(0)  # a randomly initialised tiny network
    return build_arch("edsr", num_feat=8, num_block=1, upscale=2)


# --------------------------------------------------------------------------- one implementation


@pytest.mark.parametrize(
    "module, names, home",
    [
        (lit_sr.attacks.base, ["check_eps", "check_int", "check_positive", "check_choice", "check_bool",
                               "check_images", "check_module"], validation),
        (lit_sr.poison.triggers, ["check_number", "check_choice", "check_images"], validation),
        (lit_sr.attacks.base, ["frozen_eval", "model_device", "autocast_context",
                               "grad_enabled_outside_inference"], runtime),
        (lit_sr.attacks, ["frozen_eval"], runtime),
    ],
)
def test_old_import_paths_are_the_shared_implementation(module, names, home):
    for name in names:
        assert getattr(module, name) is getattr(home, name), f"{module.__name__}.{name} is a copy"


def test_every_component_names_the_argument_that_is_not_a_network():
    from lit_sr.attacks import robustness_index
    from lit_sr.defenses import ResizeDefense

    lr = torch.rand(1, 3, 8, 8)
    for build, name in [
        (lambda: IFGSM("net", reference="hr"), "model"),
        (lambda: ResizeDefense("net"), "model"),
        (lambda: robustness_index("net", lr), "model"),
        (lambda: AdversarialTrigger("net", perceptual="ssim"), "substitute"),
        (lambda: FeatureExtractor("net"), "model"),
        (lambda: make_poisoned_hr("net", lr, lr), "feature_net"),
    ]:
        with pytest.raises(TypeError, match=f"^{name} must be a torch.nn.Module.*got str$"):
            build()


def test_arch_kwargs_with_scale_lives_in_archs_and_sr_module_re_exports_it():
    from lit_sr.modules.sr_module import arch_kwargs_with_scale as from_module

    assert from_module is arch_kwargs_with_scale
    assert arch_kwargs_with_scale("edsr", {"num_feat": 8}, 3) == {"num_feat": 8, "upscale": 3}
    assert arch_kwargs_with_scale("rrdbnet", None, 4) == {"scale": 4}
    with pytest.raises(ValueError, match="upscale=2 disagrees"):
        arch_kwargs_with_scale("edsr", {"upscale": 2}, 4)


def test_adversarial_trigger_is_an_attack_and_a_trigger_importable_everywhere(edsr):
    from lit_sr.poison.adversarial_trigger import AdversarialTrigger as home

    assert home is AdversarialTrigger is lit_sr.poison.triggers.AdversarialTrigger
    trigger = AdversarialTrigger(edsr, steps=2, perceptual="ssim", eps=4 / 255)
    assert isinstance(trigger, Attack) and isinstance(trigger, Trigger)
    assert trigger.substitute is trigger.model is edsr
    assert trigger.eps == pytest.approx(4 / 255) and trigger.config()["eps"] == pytest.approx(4 / 255)
    # eps=None: the config (a cache key) keeps None, the attack base holds the bound that never binds
    unbounded = AdversarialTrigger(edsr, steps=2, perceptual="ssim")
    assert unbounded.config()["eps"] is None and unbounded.eps == 1.0
    assert repr(unbounded).startswith("AdversarialTrigger(steps=2, lr=")


def test_adversarial_trigger_restores_the_substitute_like_every_attack(edsr):
    edsr.train()
    edsr.conv_first.weight.requires_grad_(False)  # a partly frozen network gets back what it had
    lr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    try:
        out = AdversarialTrigger(edsr, steps=2, perceptual="ssim")(lr)
        assert out.shape == lr.shape and edsr.training
        flags = {name: p.requires_grad for name, p in edsr.named_parameters()}
        assert flags.pop("conv_first.weight") is False and all(flags.values())
        assert all(p.grad is None for p in edsr.parameters())
    finally:
        edsr.conv_first.weight.requires_grad_(True)
        edsr.eval()


# --------------------------------------------------------------------------- one autocast argument


def _attacks(model):
    return {
        "IFGSM": lambda a: IFGSM(model, reference="hr", autocast=a),
        "PGD": lambda a: PGD(model, autocast=a),
        "TargetedAttack": lambda a: TargetedAttack(model, autocast=a),
        "PartialAttack": lambda a: PartialAttack(model, reference="hr", autocast=a),
        "UniversalAttack": lambda a: UniversalAttack(model, reference="hr", autocast=a),
        "SquareAttack": lambda a: SquareAttack(model, autocast=a),
        "AdversarialTrigger": lambda a: AdversarialTrigger(model, perceptual="ssim", autocast=a),
    }


@pytest.mark.parametrize("legacy", [False, True, None, "bfloat16", "fp16", torch.bfloat16])
def test_every_attack_takes_only_none_or_bf16(edsr, legacy):
    for name, build in _attacks(edsr).items():
        assert build("none").autocast == "none" and build("bf16").autocast == "bf16", name
        with pytest.raises(ValueError, match="autocast"):
            build(legacy)


def test_poisoned_hr_and_gradients_take_only_none_or_bf16(edsr):
    hr, lr = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="autocast"):
        make_poisoned_hr(FeatureExtractor(edsr), hr, hr, steps=1, autocast=torch.bfloat16)
    with pytest.raises(ValueError, match="autocast"):
        per_sample_grad_stats(edsr, lr, hr, autocast=True)


class _DtypeProbe(nn.Module):
    """A x2 network that records the dtype its convolution computes in (a hook: it also sees the
    passes a FeatureExtractor cuts short at that layer)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.seen: list[torch.dtype] = []
        self.conv.register_forward_hook(lambda _m, _i, out: self.seen.append(out.dtype))

    def forward(self, x):
        return self.shuffle(self.conv(x))


@pytest.mark.parametrize("autocast, dtype", [("none", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_really_reaches_the_model(autocast, dtype):
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    hr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    runs = {
        "ifgsm": lambda m: IFGSM(m, steps=1, reference="hr", autocast=autocast)(lr, hr=hr),
        "trigger": lambda m: AdversarialTrigger(m, steps=1, perceptual="ssim", autocast=autocast)(lr, hr),
        "poisoned_hr": lambda m: make_poisoned_hr(FeatureExtractor(m, "conv"), hr, hr.flip(0), steps=1,
                                                  autocast=autocast)[0],
        "gradients": lambda m: per_sample_grad_stats(m, lr, hr, sketch_dim=None, autocast=autocast)[0],
    }
    for name, run in runs.items():
        probe = _DtypeProbe()
        out = run(probe)
        assert probe.seen and set(probe.seen) == {dtype}, name
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name  # results stay float32


# --------------------------------------------------------------------------- Literal choices


def _parser(component, skip=()) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(component, "x", skip=set(skip))
    return parser


@pytest.mark.parametrize(
    "component, skip, good, bad",
    [
        (BadNet, (), "corner=top_left", "corner=middle"),
        (BadNet, (), "value=checkerboard", "value=stripes"),
        (Blend, (), "resize_mode=nearest", "resize_mode=bicubic"),
        (WaNet, (), "mode=nearest", "mode=bicubic"),
        (AdversarialTrigger, ("substitute",), "l2_schedule=linear", "l2_schedule=cosine"),
        (AdversarialTrigger, ("substitute",), "perceptual=ssim", "perceptual=psnr"),
        (AdversarialTrigger, ("substitute",), "init=zero", "init=gauss"),
        (AdversarialTrigger, ("substitute",), "lpips_net=vgg", "lpips_net=resnet"),
        (AdversarialTrigger, ("substitute",), "autocast=bf16", "autocast=fp16"),
        (IFGSM, ("model",), "reference=hr", "reference=gt"),
        (IFGSM, ("model",), "loss=l2", "loss=huber"),
        (IFGSM, ("model",), "autocast=none", "autocast=true"),
        (SquareAttack, ("model",), "reference=hr", "reference=gt"),
        (GANLoss, (), "gan_type=hinge", "gan_type=ragan"),
        (PerceptualLoss, ("layer_weights",), "criterion=fro", "criterion=l3"),
        (PerceptualLoss, ("layer_weights",), "vgg_type=vgg16_bn", "vgg_type=vgg20"),
    ],
)
def test_jsonargparse_rejects_a_bad_choice_at_parse_time(component, skip, good, bad):
    parser = _parser(component, skip)
    key, value = good.split("=")
    assert getattr(parser.parse_args([f"--x.{good}"]).x, key) == value
    with pytest.raises(Exception, match=f"x.{bad.split('=')[0]}"):
        parser.parse_args([f"--x.{bad}"])


def test_jsonargparse_rejects_a_bad_poisoned_hr_norm():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(make_poisoned_hr, "p", skip={"feature_net", "hr", "target"})
    assert parser.parse_args(["--p.norm=rms"]).p.norm == "rms"
    with pytest.raises(Exception, match="p.norm"):
        parser.parse_args(["--p.norm=linf"])


# --------------------------------------------------------------------------- imports


# The poison modules' import-first check (no cycle, no lightning) runs in tests/test_import_direction.py,
# in the one fresh interpreter that makes every run-time import check.


def test_check_names_takes_a_list_of_names_and_names_the_argument_otherwise():
    from lit_sr.validation import check_names

    names = ("body.0", "body.1")
    assert check_names(names, "layers", "module names", "['body.0']") == ["body.0", "body.1"]
    for bad in ("body.0", [], ["body.0", ""], ["body.0", 3], None):
        with pytest.raises(ValueError, match=r"layers must be a non-empty list of module names \(e.g. \['body.0'\]\)"):
            check_names(bad, "layers", "module names", "['body.0']")


def test_one_config_error_and_one_resolve_device_naming_the_key(monkeypatch):
    assert issubclass(RunError, ConfigError) and issubclass(ConfigError, ValueError)
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^models\.x\.device: 'cuda:1' was requested but CUDA is not available"):
        runtime.resolve_device("cuda:1", key="models.x.device")
    with pytest.raises(ConfigError, match=r"^device: .*gpu"):
        runtime.resolve_device("gpu")
