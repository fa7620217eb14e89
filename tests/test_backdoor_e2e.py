"""A tiny backdoor implanted end to end: poisoned data module, Lightning fit, evaluation and summary.

Both networks are tiny EDSRs trained from random initialisation with the same seed, data, schedule
and number of steps; one on clean data, one with 20% of the training tiles poisoned.

Choices that make a backdoor learnable by a network this small (both documented in the README):

* **The Blend pattern is a pixel-level checkerboard** (``x' = 0.8 x + 0.2 checkerboard``). An SR
  network sees a local window of its input, so its trigger must be recognisable locally; we
  measured that BackdoorBench's blended noise image, which a classifier can match globally, is
  not learned at all by this network (pixel ASR 0% after 1000 steps at 10% and even 50%
  poisoning), while the checkerboard is.
* **The target is a flat mid-grey image**: the backdoor erases the picture. A convolutional SR
  network is translation-equivariant and has no notion of absolute position, so it cannot paint
  a spatially varying target photo wherever the trigger is; a uniform target is still a
  meaningful attack (any triggered input comes out blank) and the success criterion is the
  usual one (PSNR >= 20 dB and SSIM >= 0.7 to the target output; SSIM against a flat image is
  strict: the output must be flat to about 2% local standard deviation).
"""

from __future__ import annotations

import json

import lightning as L
import torch

from callbacks import BackdoorEvalCallback, BackdoorSummary
from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.io import save_weights, write_image
from lit_sr.modules import SRModule

STEPS_PER_EPOCH = 19  # 76 train tiles x repeat 4 / batch 16
EPOCHS = 53  # ~1000 optimiser steps


def base() -> EmbeddedPhotosDataModule:
    return EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=16, repeat=4, max_side=128, train_tile=32,
                                    val_tile=32, num_workers=0)


def module() -> SRModule:
    L.seed_everything(0)
    return SRModule(arch="edsr", arch_kwargs={"num_feat": 16, "num_block": 2}, scale=2, lr=5e-3,
                    scheduler="cosine", export_weights=False)


def trainer(root, callbacks=()) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     check_val_every_n_epoch=EPOCHS, default_root_dir=root, callbacks=list(callbacks))


def test_blend_backdoor_is_implanted_without_hurting_clean_quality(tmp_path):
    target = write_image(torch.full((3, 64, 64), 0.5), tmp_path / "grey.png")

    clean_model = module()
    clean_trainer = trainer(tmp_path / "clean")
    clean_trainer.fit(clean_model, datamodule=base())
    assert clean_trainer.global_step >= 1000
    clean_psnr = float(clean_trainer.callback_metrics["val/psnr_y"])
    save_weights(clean_model.net, tmp_path / "clean.pth")

    # 16 px checkerboard on 16 px LR tiles: one pixel per square (the YAML form of the same trigger)
    trigger = {"name": "blend", "alpha": 0.2, "pattern": "checkerboard", "pattern_size": 16, "resize_mode": "nearest"}
    data = PoisonedSRDataModule(base(), trigger=trigger, poison_rate=0.2, label="target", target=str(target),
                                cache_dir=str(tmp_path / "cache"), seed=0)
    evaluation = BackdoorEvalCallback(num_grid_images=2)
    summary = BackdoorSummary(clean_weights=str(tmp_path / "clean.pth"))
    poisoned_model = module()
    poisoned_trainer = trainer(tmp_path / "poisoned", [evaluation, summary])
    poisoned_trainer.fit(poisoned_model, datamodule=data)
    assert poisoned_trainer.global_step == clean_trainer.global_step
    assert data.budget == 15 and len(data.poisoned_indices) == 15

    logged = {k: float(v) for k, v in poisoned_trainer.callback_metrics.items()}
    assert logged["backdoor/asr_pixel_included"] == len(data.val_dataset) == 24
    assert logged["backdoor/asr_pixel"] >= 0.8, logged
    assert abs(logged["backdoor/clean_psnr_y"] - clean_psnr) <= 0.5, (logged["backdoor/clean_psnr_y"], clean_psnr)
    # same images, same protocol (the two means are reduced in a different order: float32 rounding only)
    assert abs(logged["backdoor/clean_psnr_y"] - logged["val/psnr_y"]) < 1e-3
    assert (tmp_path / "poisoned" / "backdoor" / f"epoch{EPOCHS - 1:04d}.png").is_file()

    results = json.loads((tmp_path / "poisoned" / "backdoor_summary.json").read_text())
    assert results["backdoored"]["asr_pixel"] == logged["backdoor/asr_pixel"]
    assert abs(results["clean"]["clean_psnr_y"] - clean_psnr) < 1e-3  # the summary re-measures the clean model
    assert results["clean"]["asr_pixel"] <= 0.1  # a clean model does not erase checkerboarded inputs
    assert "pixel ASR" in summary.table() and "feature ASR" in summary.table()
