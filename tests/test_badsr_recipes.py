"""The BadSR recipes' checkpointing: ``last.ckpt`` holds the latest state after every epoch, the best
validation checkpoint is kept apart (both recipes' ModelCheckpoint entries, run on a tiny model)."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def recipe_checkpoints(name: str, dirpath: Path) -> list[L.pytorch.callbacks.ModelCheckpoint]:
    config = yaml.safe_load((ROOT / "configs" / "train" / name).read_text())
    built = []
    for entry in config["trainer"]["callbacks"]:
        if entry["class_path"].endswith("ModelCheckpoint"):
            module, cls = entry["class_path"].rsplit(".", 1)
            built.append(getattr(importlib.import_module(module), cls)(dirpath=dirpath, **entry["init_args"]))
    return built


class LastAtEpochStart(L.Callback):
    """Reads last.ckpt's epoch at the start of every epoch after the first (what a crash would resume)."""

    def __init__(self, path: Path):
        self.path, self.seen = path, {}

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.seen[trainer.current_epoch] = torch.load(self.path, weights_only=True)["epoch"]


@pytest.mark.parametrize("recipe", ["badsr_quickstart.yaml", "badsr_edsr_x4_div2k.yaml"])
def test_recipe_writes_last_ckpt_every_epoch_and_keeps_the_best_apart(tmp_path, recipe):
    from datamodules import EmbeddedPhotosDataModule
    from lit_sr.modules import SRModule

    L.seed_everything(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="none", export_weights=False)
    data = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=64, max_val_images=1,
                                    num_workers=0)
    ckpt_dir = tmp_path / "ckpt"
    probe = LastAtEpochStart(ckpt_dir / "last.ckpt")
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=2,
                        default_root_dir=tmp_path, callbacks=[*recipe_checkpoints(recipe, ckpt_dir), probe])
    trainer.fit(module, datamodule=data)
    # validation ran only after epoch 1, yet each epoch left its state in last.ckpt
    assert probe.seen == {1: 0, 2: 1}
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["epoch"] == 2
    best = sorted(p.name for p in ckpt_dir.glob("best-*.ckpt"))
    latest = sorted(p.name for p in ckpt_dir.glob("latest-*.ckpt"))
    assert len(best) == 1 and latest == ["latest-epoch=2.ckpt"], sorted(p.name for p in ckpt_dir.iterdir())
    assert {p.name for p in ckpt_dir.iterdir()} == {"last.ckpt", *best, *latest}  # nothing else piles up
    assert (ckpt_dir / "last.ckpt").is_symlink()  # the latest state is written once per epoch, not twice


def test_slurm_launcher_is_valid_bash_and_uses_lightnings_launcher():
    import subprocess

    script = ROOT / "scripts" / "slurm_badsr.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert 'srun "$PYTHON" train.py fit --config "$CONFIG"' in text
    assert '--trainer.num_nodes "$NODES"' in text and "#SBATCH --ntasks-per-node=" in text
    assert "configs/train/badsr_edsr_x4_div2k.yaml" in text and (ROOT / "configs" / "train" / "badsr_edsr_x4_div2k.yaml").is_file()
