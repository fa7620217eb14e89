"""AdversarialEvalCallback inside real Lightning runs on CPU.

The network is a randomly initialised tiny EDSR x2 (8 features, 1 block) and the data the
scikit-image photographs shrunk to 64 px: the callback's plumbing (inference mode, logging, model
state, images) is what is tested here; attack strength is tested in test_attacks.py.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import AdversarialEvalCallback
from datamodules import EmbeddedPhotosDataModule
from lit_sr.io import read_image
from lit_sr.modules import SRModule


def _module() -> SRModule:
    torch.manual_seed(0)
    return SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3,
                    scheduler="none", export_weights=False)


def _data() -> EmbeddedPhotosDataModule:
    return EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=64, max_val_images=2)


def _trainer(tmp_path, callbacks, logger=False, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, default_root_dir=tmp_path,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


class StateProbe(L.Callback):
    """Snapshots the module at validation start and diffs it at validation end (placed after the attack callback)."""

    def __init__(self):
        self.checked = 0
        self.changes: list[str] = []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.flags = {n: p.requires_grad for n, p in pl_module.named_parameters()}
        self.grads = {n: None if p.grad is None else p.grad.clone() for n, p in pl_module.named_parameters()}
        self.modes = {n: m.training for n, m in pl_module.named_modules()}
        self.rng = torch.get_rng_state()

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.checked += 1
        for n, p in pl_module.named_parameters():
            if not torch.equal(p.detach(), self.params[n]):
                self.changes.append(f"param {n}")
            if p.requires_grad != self.flags[n]:
                self.changes.append(f"requires_grad {n}")
            before = self.grads[n]
            if (p.grad is None) != (before is None) or (before is not None and not torch.equal(p.grad, before)):
                self.changes.append(f"grad {n}")
        self.changes += [f"mode {n}" for n, m in pl_module.named_modules() if m.training != self.modes[n]]
        if not torch.equal(torch.get_rng_state(), self.rng):
            self.changes.append("global RNG state")


def test_fit_logs_attack_metrics_leaves_the_model_unchanged_and_writes_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    attack_cb = AdversarialEvalCallback(attacks={"ifgsm": {"steps": 3}, "partial": {"steps": 2}},
                                        eps=["2/255", 4 / 255], num_images=2, num_grid_images=1)
    probe = StateProbe()
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    trainer = _trainer(tmp_path, [attack_cb, probe], logger=logger, max_epochs=1, limit_train_batches=2,
                       num_sanity_val_steps=1)
    trainer.fit(_module(), datamodule=_data())

    metrics = trainer.callback_metrics
    for name in ("ifgsm", "partial"):
        for levels in (2, 4):
            for metric in ("lr_psnr", "sr_psnr", "hr_psnr", "sr_ssim", "clean_hr_psnr"):
                assert f"attack/{name}/eps{levels}/{metric}" in metrics, sorted(metrics)
            # ||x_adv - x||_inf <= eps bounds the LR MSE, hence the LR PSNR from below.
            bound = 20 * math.log10(255 / levels)
            assert float(metrics[f"attack/{name}/eps{levels}/lr_psnr"]) >= bound - 1e-6
    # a larger budget does more damage to the output
    assert float(metrics["attack/ifgsm/eps4/sr_psnr"]) < float(metrics["attack/ifgsm/eps2/sr_psnr"])
    # the sanity check is not attacked; the one real validation is, and changes nothing
    assert attack_cb._val_runs == 1
    assert probe.checked == 1 and probe.changes == []

    attacks_dir = tmp_path / "run" / "version_0" / "attacks"
    plot = read_image(attacks_dir / "epoch0000_psnr_vs_eps.png")
    assert plot.shape[0] == 3 and min(plot.shape[-2:]) > 100
    grid = read_image(attacks_dir / "epoch0000_ifgsm_eps4.png")
    # one row of five 2x-enlarged tiles of a 64 px photograph (mod-cropped) with 2 px padding
    assert grid.shape[-1] > 5 * 60 and grid.shape[-2] < 2 * 64
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0}).Reload()
    assert {"attack/psnr_vs_eps", "attack_images/ifgsm/eps4", "attack_images/partial/eps2"} <= set(
        events.Tags()["images"]
    )


def test_every_n_epochs_counts_validations_and_targeted_universal_attacks_run(tmp_path):
    attack_cb = AdversarialEvalCallback(
        attacks={"toward_flip": {"attack": "targeted", "steps": 5}, "universal": {"steps": 3, "crop_size": 16}},
        eps=[8 / 255], num_images=2, every_n_epochs=2, log_images=False,
    )
    module, data = _module(), _data()
    trainer = _trainer(tmp_path, [attack_cb])
    first = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert not any(k.startswith("attack/") for k in first)
    second = trainer.validate(module, datamodule=data, verbose=False)[0]
    # the targeted attack pulls the output towards its target (the upside-down HR image)
    assert second["attack/toward_flip/eps8/target_psnr"] > second["attack/toward_flip/eps8/clean_target_psnr"]
    assert "attack/universal/eps8/sr_psnr" in second
    assert second["attack/universal/eps8/lr_psnr"] >= 20 * math.log10(255 / 8) - 1e-6
    assert attack_cb.state_dict() == {"val_runs": 2}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attacks": {"ifgsm": {"stepz": 3}}}, "stepz"),
        ({"attacks": {"fgsm": {}}}, "fgsm"),
        ({"attacks": {"ifgsm": {"steps": 0}}}, "steps"),
        ({"attacks": {"ifgsm": {"eps": 0.1}}}, "eps"),
        ({"eps": [0.0]}, "eps"),
        ({"eps": ["8/0"]}, "8/0"),
        ({"num_images": 0}, "num_images"),
        ({"autocast": "fp16"}, "autocast"),
    ],
)
def test_bad_settings_raise_naming_them(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AdversarialEvalCallback(**kwargs)
