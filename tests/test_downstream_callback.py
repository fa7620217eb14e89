"""DownstreamEvalCallback's pictures (labels and boxes drawn, to TensorBoard and PNG), its classes read from the
data module, its summary table, and the downstream ASR of a backdoor leaving target-class samples out."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from callbacks.downstream_eval import DownstreamEvalCallback
from datamodules.poisoned_shapes import PoisonedShapesDataModule
from datamodules.shapes import CLASS_NAMES, ShapesDataModule
from lit_sr.io import read_image
from lit_sr.modules import SRModule

DATA = dict(scale=4, hr_size=64, val_size=6, min_radius=10, max_radius=20, val_batch_size=3, max_objects=2)


class FixedDetector(nn.Module):
    """One detection per image: class ``label`` at a fixed box, score 0.9 (a known thing to draw)."""

    def __init__(self, box=(8.0, 10.0, 40.0, 30.0), label=2):
        super().__init__()
        self.box, self.label = box, label

    def forward(self, images):
        return [{"boxes": torch.tensor([self.box]), "labels": torch.tensor([self.label]), "scores": torch.tensor([0.9])}
                for _ in images]


class ConstantClassifier(nn.Module):
    """Logits that always pick ``label``."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, images):
        return nn.functional.one_hot(torch.full((images.shape[0],), self.label), len(CLASS_NAMES)).float()


def sr_module():
    return SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=4)


def validate(tmp_path, callback, data, logger=False):
    L.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path, callbacks=[callback]).validate(sr_module(), datamodule=data, verbose=False)


def test_grid_with_boxes_and_labels_goes_to_tensorboard_and_png(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = DownstreamEvalCallback(classifier=ConstantClassifier(1), detector=FixedDetector(), num_images=2,
                                      max_batches=None)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    validate(tmp_path, callback, ShapesDataModule(**DATA), logger)
    assert callback.class_names == list(CLASS_NAMES)  # read from the data module, not typed in
    grid = read_image(callback.grid_path)
    conditions = ["hr", "bicubic", "sr_clean"]
    assert grid.shape[-2:] == (2 * 64 + 3 * 2, len(conditions) * 64 + (len(conditions) + 1) * 2)
    tile = grid[:, 2 : 2 + 64, 2 : 2 + 64]
    yellow = (tile[0] > 0.95) & (tile[1] > 0.95) & (tile[2] < 0.05)
    # the box's left edge (x = 8) is drawn in yellow along its height (y 10..30)
    assert yellow[12:28, 8].all()
    white = (tile > 0.97).all(0)
    assert white[40:60, 0].all() and white[40:60, 63].all()  # the label frame of the classifier's answer
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert "downstream/grid" in events.Tags()["images"]
    res = callback.results
    assert res["downstream/detector/hr/vanished"] == 0 and res["downstream/detector/sr_clean/hallucinated"] == 0
    text = callback.summary_path.read_text()
    assert "| sr_clean |" in text and "mAP@0.5" in text


def test_downstream_asr_leaves_out_target_class_samples_and_reads_the_target_from_the_data_module(tmp_path):
    data = PoisonedShapesDataModule(target_class="cool_circle", shapes=["circle"], train_size=20, **DATA)
    data.setup("validate")
    labels = torch.tensor([data.val_dataset[i]["label"] for i in range(6)])
    non_target = int((labels != 1).sum())
    assert 0 < non_target < 6  # both circle classes are in the split
    callback = DownstreamEvalCallback(classifier=ConstantClassifier(1), num_images=0, max_batches=None)
    validate(tmp_path, callback, data)
    assert callback.target_class == 1
    res = callback.results
    # a classifier that always answers the target: ASR 1 over the non-target samples only, top-1 = target share
    for cond in ("hr", "sr_clean", "sr_triggered", "backdoor_target"):
        assert res[f"downstream/classifier/{cond}/asr"] == 1.0
        assert res[f"downstream/classifier/{cond}/top1"] == pytest.approx(1 - non_target / 6)
    text = callback.summary_path.read_text()
    assert text.index("| sr_triggered |") < text.index("| backdoor_target |")
    assert "downstream ASR (target cool_circle)" in text and "pixel ASR" not in text  # no backdoor callback ran
    with pytest.raises(ValueError, match="not a class name"):
        validate(tmp_path, DownstreamEvalCallback(classifier=ConstantClassifier(1), target_class="blue_blob",
                                                  num_images=0), data)
