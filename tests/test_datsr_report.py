"""DATSR in the two RefSR evaluation paths: the RefSR report (``lit_sr.jobs.evaluate_refsr``, ``lit-sr evaluate-refsr``) and the
AdversarialEvalCallback's RefSR mode during a real fit of ``RefSRModule(arch="datsr")``.

A randomly initialised tiny DATSR (``random_features``: the correspondence runs on random frozen
features) on 48-64 px embedded pairs: the plumbing is tested here (rows, levels, keys, the model
left untouched); that RefSR-Adv on DATSR beats noise of the same eps is tested in test_datsr.py.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from callbacks import AdversarialEvalCallback
from datamodules.refsr import EmbeddedRefPairsDataModule
from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.config import ModelSpec
from lit_sr.jobs.evaluate_refsr.report import RefSRReportConfig, run_refsr_report
from lit_sr.modules.refsr_module import RefSRModule

TINY = {"ngf": 8, "n_blocks": 1, "groups": 2, "embed_dim": 8, "depths": [1], "num_heads": [1], "window_size": 4,
        "img_size": 32, "random_features": True}
EPS = 8 / 255


@pytest.mark.slow
def test_the_refsr_report_runs_on_datsr(tmp_path):
    torch.manual_seed(0)
    data = EmbeddedRefPairsDataModule(max_side=48, levels=[1, 5], val_photos=("astronaut",))
    cfg = RefSRReportConfig(model=ModelSpec(arch="datsr", arch_kwargs=TINY, random_init=True), data=data,
                            attacks={"refsr_adv": {"steps": 2}},
                            eps=["8/255"], device="cpu")
    result = run_refsr_report(cfg, tmp_path, progress=False)
    rows = {(r["level"], r["row"]): r for r in result["rows"]}
    assert set(rows) == {(level, name) for level in (1, 5) for name in ("clean", "refsr_adv", "ref_noise")}
    floor = 20 * math.log10(255 / 8)  # a perturbation at +-eps everywhere
    for level in (1, 5):
        assert rows[level, "refsr_adv"]["ref_psnr"] >= floor - 1e-6
        # DATSR copies from its full-resolution reference: even 2 steps move the output more than noise
        assert rows[level, "refsr_adv"]["sr_psnr"] < rows[level, "ref_noise"]["sr_psnr"]
    assert (tmp_path / "plots" / "refsr_by_level.png").stat().st_size > 1000


def test_the_ttsr_only_defense_is_refused_on_datsr_by_name(tmp_path):
    data = EmbeddedRefPairsDataModule(max_side=48, levels=[1], val_photos=("astronaut",))
    cfg = RefSRReportConfig(model=ModelSpec(arch="datsr", arch_kwargs=TINY, random_init=True), data=data,
                            attacks={"refsr_adv": {"steps": 1}}, defenses={"gate": {"threshold": 0.5}}, device="cpu")
    with pytest.raises(ConfigError, match="defenses.gate: SimilarityGatedTTSR needs a TTSR"):
        run_refsr_report(cfg, tmp_path, progress=False)


@pytest.mark.slow
def test_refsr_adv_runs_in_the_callback_on_a_datsr_module(tmp_path):
    torch.manual_seed(0)
    module = RefSRModule(arch="datsr", arch_kwargs=TINY, export_weights=False)
    callback = AdversarialEvalCallback(attacks={"refsr_adv": {"steps": 2}}, eps=[EPS], num_images=2,
                                       num_grid_images=1)
    data = EmbeddedRefPairsDataModule(max_side=64, patch_size=32, batch_size=2, repeat=1, levels=[1],
                                      train_levels=[1], train_photos=("chelsea", "rocket", "retina"), val_photos=("astronaut", "coffee"))
    seen = {}
    module.on_validation_epoch_start = lambda: seen.update({n: p.detach().clone() for n, p in module.named_parameters()})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, callbacks=[callback],
                        logger=False, default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert float(metrics["attack/refsr_adv/eps8/ref_psnr"]) >= 20 * math.log10(255 / 8) - 1e-6
    assert float(metrics["attack/refsr_adv/eps8/sr_psnr"]) < 80  # the output moved
    assert math.isfinite(float(metrics["attack/refsr_adv/eps8/clean_hr_psnr"]))
    assert callback.local_results["attack/refsr_adv/eps8/sr_psnr"][1] == 2
    for name, param in module.named_parameters():
        assert torch.equal(param.detach(), seen[name]), name
