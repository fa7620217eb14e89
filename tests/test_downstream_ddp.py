"""DownstreamEvalCallback under a 2-process CPU (gloo) DDP run: counts summed over ranks, identical on both.

The two ranks are forked from the test process (``strategy="ddp_fork"``, the ``forked_ddp`` fixture of
conftest.py); each writes its reduced results and its local, un-reduced counts to ``<out>/rank<k>.json``.
Downstream models are randomly initialised (``random_init=True``): the test checks the reduction,
not the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from callbacks.downstream_eval import DownstreamEvalCallback
from datamodules.shapes import ShapesDataModule
from lit_sr.downstream import DownstreamClassifier, DownstreamDetector
from lit_sr.modules import SRModule

pytestmark = pytest.mark.slow  # forked ranks, but over 2.5 s (measured): left out by make test-fast


class RankReport(L.Callback):
    """Records the validation indices this rank saw; writes them with the callback's reduced results and
    local counts to ``<out>/rank<k>.json`` at the end of the fit."""

    def __init__(self, out: Path, downstream: DownstreamEvalCallback):
        self.out, self.downstream = out, downstream
        self.indices: list[int] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.indices.extend(int(i) for i in batch["index"])

    def on_fit_end(self, trainer, pl_module):
        report = {"results": self.downstream.results, "local": self.downstream.local_counts, "indices": self.indices}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def test_downstream_counts_agree_on_both_ranks(tmp_path, forked_ddp):
    L.seed_everything(0)
    callback = DownstreamEvalCallback(
        classifier=DownstreamClassifier("resnet18", 6, random_init=True, input_size=None),
        detector=DownstreamDetector(num_classes=7, random_init=True, min_size=64, max_size=64, score_thresh=0.0,
                                    representation_size=64),
        max_batches=None, target_class=0, score_thresh=0.0, num_images=1,
        attacks={"ifgsm": {"class": "IFGSM", "eps": 4 / 255, "steps": 1, "reference": "hr"}})
    data = ShapesDataModule(scale=2, hr_size=32, train_size=8, val_size=8, max_objects=2, min_radius=4,
                            max_radius=8, batch_size=2, val_batch_size=2)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3, scheduler="none")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, limit_train_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback, RankReport(tmp_path, callback)],
                        default_root_dir=tmp_path, num_sanity_val_steps=0)
    forked_ddp(trainer, "fit", module, datamodule=data)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["results"] == r1["results"] and r0["results"]
    for cond in ("hr", "bicubic", "sr_clean", "sr_ifgsm"):
        key = f"classifier/{cond}"
        local0, local1 = r0["local"][key], r1["local"][key]
        assert local0["n"] == local1["n"] == 4  # each rank evaluated its own half of the 8 val images
        assert r0["results"][f"downstream/classifier/{cond}/n"] == 8
        top1 = (local0["correct"] + local1["correct"]) / 8
        assert r0["results"][f"downstream/classifier/{cond}/top1"] == top1
        det = f"detector/{cond}"
        assert (r0["results"][f"downstream/detector/{cond}/hr_detections"]
                == r0["local"][det]["hr_detections"] + r1["local"][det]["hr_detections"])
        assert f"downstream/detector/{cond}/map_50" in r0["results"]
    # both ranks saw different images: their local indices differ
    assert set(r0["indices"]).isdisjoint(r1["indices"])
    assert (tmp_path / "downstream").is_dir() or any(tmp_path.rglob("epoch0000.png"))
