"""A 2-process CPU (gloo) DDP robust fine-tuning, run as a script by tests/test_robust_module.py.

Rank 0 writes a tiny base network before the fit; both ranks fine-tune it with
:class:`~lit_sr.modules.RobustFinetuneModule` and write to ``<out>/rank<k>.json`` the logged metrics,
the sum of their final weights and the indices of the batches they attacked.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lightning as L
import torch


class RankReport(L.Callback):
    def __init__(self, out: Path, base_sum: float):
        self.out, self.base_sum, self.indices = out, base_sum, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.extend(int(i) for i in batch["index"])

    def on_fit_end(self, trainer, pl_module):
        report = {
            "world_size": trainer.world_size,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "weights_sum": float(sum(p.double().sum() for p in pl_module.net.parameters())),
            "base_sum": self.base_sum,
            "train_indices": self.indices,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def main() -> None:
    from datamodules import EmbeddedPhotosDataModule
    from lit_sr.archs import build_arch
    from lit_sr.io import save_weights
    from lit_sr.modules import RobustFinetuneModule

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = build_arch("edsr", num_feat=8, num_block=1, upscale=2)
    weights = out / "base.pth"
    if not weights.exists():  # both ranks build the same seeded net; one file suffices
        tmp = out / f"base.{os.getpid()}.tmp.pth"
        save_weights(base, tmp)
        tmp.replace(weights)
    L.seed_everything(0)
    module = RobustFinetuneModule(weights=str(weights), attack="pgd", eps=4 / 255, steps=2, attack_fraction=0.5,
                                  eps_ramp_epochs=1.0, consistency_weight=0.5, attack_seed=0, arch="edsr",
                                  arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3, scheduler="none",
                                  export_weights=False)
    data = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=2, max_side=96, max_val_images=2)
    base_sum = float(sum(p.double().sum() for p in base.parameters()))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RankReport(out, base_sum)], default_root_dir=str(out), num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    from lit_sr.runtime import close_process_group

    close_process_group()  # gloo aborts at exit with the group left open


if __name__ == "__main__":
    main()
