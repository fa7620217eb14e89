"""A 2-process CPU (gloo) DDP fit, run as a script by tests/test_ddp.py.

Each rank writes what it saw to ``<out>/rank<k>.json``; the test compares the files. Extra
components (attack evaluation, poisoned data) are switched on with flags so one script covers every
part that communicates between ranks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch


class RankReport(L.Callback):
    """Records, on every rank, the logged metrics and the indices of the training batches it saw."""

    def __init__(self, out: Path):
        self.out = out
        self.indices: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.indices.extend(int(i) for i in batch["index"])

    def on_fit_end(self, trainer, pl_module):
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "train_indices": self.indices,
        }
        dm = trainer.datamodule
        from callbacks.protocols import PoisonedData

        if isinstance(dm, PoisonedData):  # a poisoned data module: what this rank trains on
            report.update(poisoned_indices=dm.poisoned_indices, candidate_indices=list(dm.candidate_indices),
                          budget=dm.budget, config_hash=dm.poison_config()["config_hash"],
                          cache_dir=dm.poison_config()["cache_dir"], generated_samples=dm.generated_samples)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class LocalAttackReport(L.Callback):
    """Writes this rank's un-reduced attack sums and counts to ``<out>/rank<k>_attack.json``."""

    def __init__(self, out: Path, attack_eval):
        self.out, self.attack_eval = out, attack_eval

    def on_fit_end(self, trainer, pl_module):
        path = self.out / f"rank{trainer.global_rank}_attack.json"
        path.write_text(json.dumps(self.attack_eval.local_results))


def build(args):
    from datamodules import EmbeddedPhotosDataModule
    from lit_sr.modules import SRModule

    torch.set_num_threads(1)
    L.seed_everything(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="none", export_weights=True)
    data = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=2, max_side=96,
                                    max_val_images=2)
    from callbacks import RunSummary, SRImageLogger

    # image logging and the summary read trainer.log_dir, a collective call: they must not hang under DDP
    callbacks = [RankReport(Path(args.out)), SRImageLogger(num_images=1), RunSummary()]
    if args.attack:
        from callbacks import AdversarialEvalCallback

        attack_eval = AdversarialEvalCallback(attacks={"ifgsm": {"steps": 3}}, eps=[4 / 255], num_images=2,
                                              every_n_epochs=1, log_images=False)
        callbacks += [attack_eval, LocalAttackReport(Path(args.out), attack_eval)]
    if args.poison:
        from callbacks import BackdoorEvalCallback
        from datamodules import PoisonedSRDataModule

        out = Path(args.out)

        class PoisonReport(L.Callback):
            """Swaps the poisoned set after epoch 0 (identically on every rank, as the genetic selection does)
            and writes which poisoned samples this rank trained on, per epoch, to ``<out>/rank<k>_poison.json``."""

            def __init__(self):
                self.served: dict[str, list[int]] = {}
                self.initial: list[int] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                got = [int(i) for i, p in zip(batch["index"], batch["poisoned"]) if p]
                self.served.setdefault(str(trainer.current_epoch), []).extend(got)

            def on_train_epoch_end(self, trainer, pl_module):
                dm = trainer.datamodule
                if trainer.current_epoch == 0:
                    self.initial = dm.poisoned_indices
                    dm.set_poisoned_indices(dm.candidate_indices[-dm.budget:])

            def on_fit_end(self, trainer, pl_module):
                report = {"served": self.served, "initial": self.initial}
                (out / f"rank{trainer.global_rank}_poison.json").write_text(json.dumps(report))

        # train tiles: ~40 samples, so each rank meets poisoned ones in every epoch
        base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=32,
                                        val_tile=32, max_val_images=4)
        data = PoisonedSRDataModule(base=base, trigger={"name": "blend"}, poison_rate=0.3,
                                    cache_dir=str(out / "cache"), seed=0, target="coffee")
        callbacks += [PoisonReport(), BackdoorEvalCallback(num_grid_images=0)]
    return module, data, callbacks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--attack", action="store_true")
    parser.add_argument("--poison", action="store_true")
    args = parser.parse_args()
    module, data, callbacks = build(args)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, default_root_dir=args.out, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    from lit_sr.runtime import close_process_group

    close_process_group()  # gloo aborts at exit with the group left open


if __name__ == "__main__":
    main()
