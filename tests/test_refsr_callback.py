"""AdversarialEvalCallback on a reference-based SR model: RefSR-Adv (and an LR-side PGD) during a real fit.

The network is a randomly initialised tiny TTSR (8 features, 1+1+1+1 blocks) on 64 px embedded
pairs: the plumbing (the RefSR protocol, reference batches, metric keys, images, an untouched
model) is what is tested here; the attack's strength is tested in test_refsr.py.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks import AdversarialEvalCallback
from callbacks.protocols import RefSRModel
from datamodules.refsr import EmbeddedRefPairsDataModule
from lit_sr.errors import ConfigError
from lit_sr.modules.refsr_module import RefSRModule

TINY = {"n_feats": 8, "num_res_blocks": [1, 1, 1, 1]}


def _fit(tmp_path, callback, module=None):
    torch.manual_seed(0)
    module = module or RefSRModule(arch_kwargs=TINY, export_weights=False)
    data = EmbeddedRefPairsDataModule(max_side=64, patch_size=32, batch_size=2, repeat=1, levels=[1],
                                      train_levels=[1], train_photos=("chelsea", "rocket", "retina"),
                                      val_photos=("astronaut", "coffee"))
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, logger=logger,
                        callbacks=[callback], default_root_dir=tmp_path, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return trainer, module


@pytest.mark.slow
def test_refsr_adv_runs_in_the_callback_on_a_refsr_module(tmp_path):
    callback = AdversarialEvalCallback(attacks={"refsr_adv": {"steps": 2}, "pgd": {"steps": 2}}, eps=[8 / 255],
                                       num_images=2, num_grid_images=1)
    module = RefSRModule(arch_kwargs=TINY, export_weights=False)
    assert isinstance(module, RefSRModel)
    seen = {}
    module.on_validation_epoch_start = lambda: seen.update({n: p.detach().clone() for n, p in module.named_parameters()})
    trainer, module = _fit(tmp_path, callback, module)
    metrics = trainer.callback_metrics
    floor = 20 * math.log10(255 / 8)  # the PSNR of a perturbation at +-eps everywhere
    # the reference attack reports the reference's stealth, the LR attack the LR's
    assert float(metrics["attack/refsr_adv/eps8/ref_psnr"]) >= floor - 1e-6
    assert "attack/refsr_adv/eps8/lr_psnr" not in metrics
    assert float(metrics["attack/pgd/eps8/lr_psnr"]) >= floor - 1e-6
    for key in ("sr_psnr", "sr_ssim", "hr_psnr", "clean_hr_psnr"):
        assert math.isfinite(float(metrics[f"attack/refsr_adv/eps8/{key}"])), key
    assert float(metrics["attack/refsr_adv/eps8/sr_psnr"]) < 80  # the output moved
    assert callback.local_results["attack/refsr_adv/eps8/sr_psnr"][1] == 2  # both images attacked
    # the attacks left the module as validation found it (training changed it before)
    for name, param in module.named_parameters():
        assert torch.equal(param.detach(), seen[name]), name
        assert param.requires_grad, name
    pngs = sorted(p.name for p in (tmp_path / "run" / "version_0" / "attacks").glob("*.png"))
    assert pngs == ["epoch0000_pgd_eps8.png", "epoch0000_psnr_vs_eps.png", "epoch0000_refsr_adv_eps8.png"]


def test_reference_attacks_need_a_refsr_module_and_valid_settings(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter"):
        AdversarialEvalCallback(attacks={"refsr_adv": {"stepz": 2}})
    with pytest.raises(ConfigError, match="cannot run on a RefSR model"):
        AdversarialEvalCallback(attacks={"refsr_adv": {"steps": 2}, "partial": {"steps": 2}})
    # a block of partial attacks is SR-only: on reference batches it fails naming the kinds
    callback = AdversarialEvalCallback(attacks={"partial": {"steps": 1}}, eps=[8 / 255], num_images=1,
                                       log_images=False)
    with pytest.raises(TypeError, match="cannot run on a RefSR model .*partial"):
        _fit(tmp_path, callback)
    # a block with a reference attack has no SR reading (on batches without 'ref' it raises, naming it)
    sr_callback = AdversarialEvalCallback(attacks={"refsr_adv": {"steps": 1}}, num_images=1, log_images=False)
    assert sr_callback.specs is None and [s.label for s in sr_callback.ref_specs] == ["refsr_adv"]
