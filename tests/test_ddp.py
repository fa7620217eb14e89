"""Two-process DDP fits on CPU (gloo): metrics reduced across ranks, data sharded.

The two ranks are forked from the test process (``strategy="ddp_fork"``, the ``forked_ddp`` fixtures of
conftest.py); each writes what it saw to ``<out>/rank<k>*.json`` from a callback, and the tests compare
the files. One fit switches on every component that communicates between ranks (validation metrics,
attack evaluation, poisoned data and backdoor metrics).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest

from callbacks import AdversarialEvalCallback, BackdoorEvalCallback, RunSummary, SRImageLogger
from callbacks.protocols import PoisonedData
from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.modules import SRModule

pytestmark = pytest.mark.slow  # forked ranks, but over 2.5 s (measured): left out by make test-fast


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
        if isinstance(dm, PoisonedData):  # a poisoned data module: what this rank trains on
            report.update(poisoned_indices=dm.poisoned_indices, candidate_indices=list(dm.candidate_indices),
                          budget=dm.budget, config_hash=dm.poison_config()["config_hash"],
                          cache_dir=dm.poison_config()["cache_dir"], generated_samples=dm.generated_samples)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class LocalAttackReport(L.Callback):
    """Writes this rank's un-reduced attack sums and counts to ``<out>/rank<k>_attack.json``."""

    def __init__(self, out: Path, attack_eval: AdversarialEvalCallback):
        self.out, self.attack_eval = out, attack_eval

    def on_fit_end(self, trainer, pl_module):
        path = self.out / f"rank{trainer.global_rank}_attack.json"
        path.write_text(json.dumps(self.attack_eval.local_results))


class PoisonReport(L.Callback):
    """Swaps the poisoned set after epoch 0 (identically on every rank, as the genetic selection does)
    and writes which poisoned samples this rank trained on, per epoch, to ``<out>/rank<k>_poison.json``."""

    def __init__(self, out: Path):
        self.out = out
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
        (self.out / f"rank{trainer.global_rank}_poison.json").write_text(json.dumps(report))


def fit_two_ranks(out: Path, forked_ddp) -> list[dict]:
    """The 2-rank fit on the poisoned photos with the attack evaluation; returns both ranks' reports."""
    L.seed_everything(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="none", export_weights=True)
    attack_eval = AdversarialEvalCallback(attacks={"ifgsm": {"steps": 3}}, eps=[4 / 255], num_images=2,
                                          every_n_epochs=1, log_images=False)
    # train tiles: ~40 samples, so each rank meets poisoned ones in every epoch
    base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=32,
                                    val_tile=32, max_val_images=4)
    data = PoisonedSRDataModule(base=base, trigger={"name": "blend"}, poison_rate=0.3,
                                cache_dir=str(out / "cache"), seed=0, target="coffee")
    # image logging and the summary read trainer.log_dir, a collective call: they must not hang under DDP
    callbacks = [RankReport(out), SRImageLogger(num_images=1), RunSummary(), attack_eval,
                 LocalAttackReport(out, attack_eval), PoisonReport(out), BackdoorEvalCallback(num_grid_images=0)]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, default_root_dir=out, num_sanity_val_steps=0)
    forked_ddp(trainer, "fit", module, datamodule=data)
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    # what came back to the test process is rank 0's state: its trained weights and reduced metrics
    assert trainer.callback_metrics["val/psnr_y"].item() == reports[0]["metrics"]["val/psnr_y"]
    return reports


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, forked_ddp_module) -> tuple[Path, list[dict]]:
    """One 2-rank fit on the poisoned data with the attack callback, read by the three tests below:
    each checks its own component's reduction (validation metrics, attack metrics, the poisoned set)."""
    out = tmp_path_factory.mktemp("ddp")
    return out, fit_two_ranks(out, forked_ddp_module)


def test_ddp_fit_reduces_val_metrics_across_ranks(ddp_run):
    _, (r0, r1) = ddp_run
    for key in ("val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y"):
        assert key in r0["metrics"]
        assert r0["metrics"][key] == r1["metrics"][key]
    # each rank trained on its own shard of the data
    assert r0["train_indices"] and r1["train_indices"]


def test_ddp_attack_callback_metrics_are_reduced_across_ranks(ddp_run):
    tmp_path, (r0, r1) = ddp_run
    for metric in ("lr_psnr", "sr_psnr", "sr_ssim", "hr_psnr", "clean_hr_psnr"):
        key = f"attack/ifgsm/eps4/{metric}"
        assert key in r0["metrics"] and key in r1["metrics"], sorted(r0["metrics"])
        assert r0["metrics"][key] == r1["metrics"][key]
    assert r0["metrics"]["attack/ifgsm/eps4/lr_psnr"] >= 20 * math.log10(255 / 4) - 1e-6
    # each rank attacked its own validation photo, and the logged value is the image-weighted mean
    local = [json.loads((tmp_path / f"rank{r}_attack.json").read_text()) for r in (0, 1)]
    for metric in ("sr_psnr", "hr_psnr"):
        key = f"attack/ifgsm/eps4/{metric}"
        (s0, c0), (s1, c1) = local[0][key], local[1][key]
        assert c0 >= 1 and c1 >= 1 and s0 / c0 != s1 / c1
        assert math.isclose(r0["metrics"][key], (s0 + s1) / (c0 + c1), rel_tol=1e-6)


def test_ddp_poisoned_fit_trains_every_rank_on_the_same_set(ddp_run):
    tmp_path, (r0, r1) = ddp_run
    p0, p1 = (json.loads((tmp_path / f"rank{r}_poison.json").read_text()) for r in (0, 1))
    pool, budget = r0["candidate_indices"], r0["budget"]
    assert r1["candidate_indices"] == pool and r1["budget"] == budget and budget >= 4
    assert r0["config_hash"] == r1["config_hash"]
    # generation was sharded: each rank made its half of the pool and of the 4 validation images, and the
    # merged manifest lists every sample once
    assert r0["generated_samples"] + r1["generated_samples"] == len(pool) + 4
    assert abs(r0["generated_samples"] - r1["generated_samples"]) <= 2
    manifest = json.loads((Path(r0["cache_dir"]) / "manifest.json").read_text())
    assert sorted(int(e["index"]) for e in manifest["samples"].values()) == pool
    assert not (Path(r0["cache_dir"]) / "parts").exists()  # partial manifests merged and removed
    # the seeded initial set, then the set swapped in after epoch 0, are the same on both ranks
    assert p0["initial"] == p1["initial"] and len(p0["initial"]) == budget
    swapped = pool[-budget:]
    assert swapped != p0["initial"]
    assert r0["poisoned_indices"] == r1["poisoned_indices"] == swapped
    for report in (p0, p1):
        assert set(report["served"].get("0", [])) <= set(p0["initial"])
        assert set(report["served"].get("1", [])) <= set(swapped)
    for epoch in ("0", "1"):
        assert p0["served"].get(epoch) or p1["served"].get(epoch), f"no poisoned sample trained in epoch {epoch}"
    # backdoor metrics: counts summed over both ranks' validation shards, identical on both
    assert r0["metrics"]["backdoor/asr_pixel_included"] == 4
    for key in ("backdoor/asr_pixel", "backdoor/clean_psnr_y", "backdoor/poisoned_hr_psnr"):
        assert r0["metrics"][key] == r1["metrics"][key]
