"""RobustFinetuneModule: adversarial inputs within eps, the eps schedule across resume, robustness gained.

Tiny randomly initialised EDSR (8 features, 1 block, x2) on 32 px patches of the embedded photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_sr.attacks import IFGSM, PGD
from lit_sr.io import save_weights
from lit_sr.metrics import psnr
from lit_sr.modules import RobustFinetuneModule, SRModule

TINY = {"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1}, "scale": 2}


def data(**kw):
    from datamodules import EmbeddedPhotosDataModule

    args = {"scale": 2, "patch_size": 32, "batch_size": 8, "repeat": 2, "max_side": 96, "max_val_images": 2}
    return EmbeddedPhotosDataModule(**{**args, **kw})


def trainer(tmp_path, callbacks=(), **kw) -> L.Trainer:
    args = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "limit_val_batches": 0, "default_root_dir": str(tmp_path)}
    return L.Trainer(callbacks=list(callbacks), **{**args, **kw})


class Recorder(L.Callback):
    """Records, per training step, the global step, the eps in use and the adversarial batch."""

    def __init__(self):
        self.steps: list[tuple[int, float]] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.states: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append((trainer.global_step, pl_module.current_eps()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append((outputs["lr_attacked"], outputs["lr_adv"], self.steps[-1][1]))
        self.states.append((pl_module.net.training, all(p.requires_grad for p in pl_module.net.parameters())))


def test_training_inputs_respect_eps_and_the_attack_restores_the_model(tmp_path):
    torch.manual_seed(0)
    module = RobustFinetuneModule(attack="pgd", eps=8 / 255, steps=2, attack_fraction=0.5, eps_ramp_epochs=4.0,
                                  scheduler="none", export_weights=False, **TINY)
    rec = Recorder()
    trainer(tmp_path, [rec], max_steps=4).fit(module, datamodule=data())
    assert len(rec.batches) == 4
    eps_seen = []
    for clean, adv, eps in rec.batches:
        assert adv.shape == clean.shape and clean.shape[0] == 4  # half of the batch of 8
        delta = (adv - clean).abs().amax().item()
        assert delta <= eps + 1e-6 and delta > 0.5 * eps  # within the budget, and actually used
        assert adv.min() >= 0 and adv.max() <= 1
        eps_seen.append(eps)
    assert eps_seen == sorted(eps_seen) and eps_seen[0] < eps_seen[-1] <= 8 / 255  # the ramp rises
    # the attack ran inside training_step, yet the net is back in train mode with trainable parameters
    assert rec.states == [(True, True)] * 4


def test_craft_leaves_no_gradient_on_the_model():
    module = RobustFinetuneModule(attack="fast", eps=4 / 255, **TINY)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    adv, seconds = module.craft(lr, hr)
    assert all(p.grad is None for p in module.net.parameters())
    assert module.net.training and seconds >= 0
    assert (adv - lr).abs().amax() <= 4 / 255 + 1e-6


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="attack"):
        RobustFinetuneModule(attack="fgsm-free", **TINY)
    with pytest.raises(ValueError, match="attack_fraction"):
        RobustFinetuneModule(attack_fraction=0.0, **TINY)
    with pytest.raises(ValueError, match="eps"):
        RobustFinetuneModule(eps=8, **TINY)


def test_resume_continues_the_eps_schedule(tmp_path):
    torch.manual_seed(0)
    kw = dict(attack="fast", eps=8 / 255, eps_ramp_epochs=3.0, scheduler="none", export_weights=False, **TINY)
    first = Recorder()
    t1 = trainer(tmp_path, [first], max_epochs=1)
    t1.fit(RobustFinetuneModule(**kw), datamodule=data())
    per_epoch = len(first.steps)
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)
    second = Recorder()
    trainer(tmp_path, [second], max_epochs=2).fit(RobustFinetuneModule(**kw), datamodule=data(), ckpt_path=ckpt)
    ramp = 3 * per_epoch
    steps = first.steps + second.steps
    assert [s for s, _ in steps] == list(range(2 * per_epoch))  # the resumed run continued the step count
    for step, eps in steps:
        assert eps == pytest.approx(8 / 255 * (step + 1) / ramp)  # ... and with it the eps ramp
    assert second.steps[0][1] > first.steps[-1][1]


def held_out(scale=2):
    """The two embedded validation photographs (64 x 64 HR crops), with bicubic LR."""
    from datamodules import load_embedded_photo
    from datamodules.sr import EMBEDDED_VAL
    from lit_sr.ops import imresize

    hr = torch.stack([load_embedded_photo(n, 96)[:, :64, :64] for n in EMBEDDED_VAL[:2]])
    lr = (imresize(hr, 1 / scale).clamp(0, 1) * 255).round() / 255
    return lr, hr


def attacked_psnr(net, lr, hr, eps=8 / 255):
    """Choi et al.'s SR PSNR-Y (attacked SR vs clean SR), per image the minimum over 10-step I-FGSM
    (HR reference) and 20-step PGD against the clean output (2 restarts), then the mean."""
    net.eval()
    with torch.no_grad():
        clean = net(lr).clamp(0, 1)
    worst = None
    attacks = [IFGSM(net, eps=eps, steps=10, reference="hr")]
    attacks += [PGD(net, eps=eps, steps=20, reference="clean", seed=s) for s in (0, 1)]
    for atk in attacks:
        with torch.no_grad():
            p = psnr(net(atk(lr, hr=hr)).clamp(0, 1), clean, crop_border=2, y_channel=True)
        worst = p if worst is None else torch.minimum(worst, p)
    return worst.mean().item()


def clean_psnr(net, lr, hr):
    with torch.no_grad():
        return psnr(net.eval()(lr).clamp(0, 1), hr, crop_border=2, y_channel=True).mean().item()


@pytest.mark.slow
def test_robust_finetuning_raises_psnr_under_attack_against_a_clean_finetuning_control(tmp_path):
    """From one clean base, 40 robust steps beat 40 further clean steps under attack on held-out images
    (SR PSNR-Y, worst of I-FGSM and restarted PGD), and lose at most 1 dB of clean PSNR-Y against that
    control (a stated margin for so short a run). Measured 2026-12-01: +1.8 dB under attack, -0.6 dB clean."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    base = SRModule(lr=2e-3, scheduler="none", export_weights=False, **TINY)
    trainer(tmp_path, max_steps=150).fit(base, datamodule=data(repeat=8))
    weights = save_weights(base.net, tmp_path / "base.pth")
    lr, hr = held_out()

    def finetune(module):
        torch.manual_seed(1)
        trainer(tmp_path, max_steps=40).fit(module, datamodule=data(repeat=8))
        return module.net

    common = dict(lr=1e-3, scheduler="none", export_weights=False, **TINY)
    control = finetune(SRModule(pretrained=str(weights), **common))
    robust = finetune(RobustFinetuneModule(weights=str(weights), attack="pgd", eps=8 / 255, steps=3,
                                           consistency_weight=1.0, attack_seed=0, **common))
    control_attacked, robust_attacked = attacked_psnr(control, lr, hr), attacked_psnr(robust, lr, hr)
    assert robust_attacked > control_attacked + 0.5, (robust_attacked, control_attacked)
    assert clean_psnr(robust, lr, hr) > clean_psnr(control, lr, hr) - 1.0


class _RankReport(L.Callback):
    """Writes, on every rank, the logged metrics, the sum of its final weights and the indices of the
    batches it attacked to ``<out>/rank<k>.json``."""

    def __init__(self, out: Path, base_sum: float):
        self.out, self.base_sum, self.indices = out, base_sum, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.extend(int(i) for i in batch["index"])

    def on_fit_end(self, trainer, pl_module):
        report = {
            "world_size": trainer.world_size,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "weights_sum": float(sum(p.detach().double().sum() for p in pl_module.net.parameters())),
            "base_sum": self.base_sum,
            "train_indices": self.indices,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.slow  # forked ranks, but over 2.5 s (measured): left out by make test-fast
def test_ddp_robust_fit_syncs_weights_and_metrics(tmp_path, forked_ddp):
    """A 2-process gloo robust fine-tuning, its ranks forked from the test process (conftest.py)."""
    from lit_sr.archs import build_arch

    torch.manual_seed(0)
    base = build_arch("edsr", num_feat=8, num_block=1, upscale=2)
    weights = save_weights(base, tmp_path / "base.pth")
    L.seed_everything(0)
    module = RobustFinetuneModule(weights=str(weights), attack="pgd", eps=4 / 255, steps=2, attack_fraction=0.5,
                                  eps_ramp_epochs=1.0, consistency_weight=0.5, attack_seed=0, lr=1e-3,
                                  scheduler="none", export_weights=False, **TINY)
    base_sum = float(sum(p.detach().double().sum() for p in base.parameters()))
    tr = trainer(tmp_path, [_RankReport(tmp_path, base_sum)], devices=2, strategy="ddp_fork", max_epochs=2)
    forked_ddp(tr, "fit", module, datamodule=data(batch_size=4))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [r0["world_size"], r1["world_size"]] == [2, 2]
    for key in ("train/loss_robust_epoch", "train/attack_seconds_epoch", "train/loss_clean_epoch"):
        assert key in r0["metrics"], sorted(r0["metrics"])
        assert r0["metrics"][key] == r1["metrics"][key]  # sync_dist: reduced over both ranks
    assert r0["metrics"]["train/attack_seconds_epoch"] > 0
    assert r0["weights_sum"] == r1["weights_sum"] and r0["weights_sum"] != r0["base_sum"]  # gradients all-reduced
    assert r0["train_indices"] != r1["train_indices"]  # each rank attacked its own shard


def test_bf16_mixed_fit_attacks_under_bf16_autocast_within_eps(tmp_path):
    """Under ``precision="bf16-mixed"`` the training attack follows the trainer (bf16 autocast), its
    inputs stay within eps and [0, 1] (float32 tensors), and the losses stay finite."""
    torch.manual_seed(0)
    module = RobustFinetuneModule(attack="pgd", eps=4 / 255, steps=1, attack_fraction=0.5, consistency_weight=1.0,
                                  scheduler="none", export_weights=False, **TINY)
    rec = Recorder()
    seen = []

    class Autocasts(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module._autocast())

    before = [p.detach().clone() for p in module.net.parameters()]
    trainer(tmp_path, [rec, Autocasts()], max_steps=2, precision="bf16-mixed").fit(module, datamodule=data())
    assert seen == ["bf16", "bf16"]
    for clean, adv, eps in rec.batches:
        assert adv.dtype == torch.float32 and adv.min() >= 0 and adv.max() <= 1
        assert (adv - clean).abs().amax() <= eps + 1e-6
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters()))  # it trained
    assert module.attack_autocast is None and RobustFinetuneModule(attack_autocast="none", **TINY)._autocast() == "none"
