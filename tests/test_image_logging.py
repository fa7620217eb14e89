"""Pictures reach every Lightning logger (TensorBoard, MLflow on a local file store, CSV gets the PNG), and the
end-of-run hint names the loggers in use. The net is a randomly initialised tiny EDSR x2: plumbing is tested."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from callbacks import RunSummary, SRImageLogger
from callbacks.image_logger import COLUMNS, comparison_row
from datamodules import EmbeddedPhotosDataModule
from lit_sr.image_logging import log_image, logger_hints, logger_kind
from lit_sr.io import read_image, to_uint8_array
from lit_sr.modules import SRModule


def _tb_images(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0}).Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def test_log_image_reaches_tensorboard_and_mlflow_and_always_writes_the_png(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow comes with the loggers extra (mlflow-skinny), part of the dev extra")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3 asks for an opt-in to its file store
    torch.manual_seed(0)
    image = torch.rand(3, 20, 36)
    tb = TensorBoardLogger(tmp_path / "tb", name="", version="v")
    csv = CSVLogger(tmp_path / "csv", name="", version="v")
    ml = MLFlowLogger(experiment_name="lit-sr-test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    reached = log_image([tb, csv, ml], "val_images/0", image, step=7, png=tmp_path / "png" / "x.png", caption="a | b")
    assert reached == ["tensorboard", "mlflow", "png"]  # CSV holds numbers: it gets the PNG file only
    tb.experiment.flush()
    shown = _tb_images(tb.log_dir)
    assert [e.step for e in shown["val_images/0"]] == [7]
    assert (shown["val_images/0"][0].width, shown["val_images/0"][0].height) == (36, 20)
    expected = to_uint8_array(image)
    artifacts = list((tmp_path / "mlruns").rglob("images/val_images/0/step0000007.png"))
    assert len(artifacts) == 1
    assert (to_uint8_array(read_image(artifacts[0])) == expected).all()
    assert (to_uint8_array(read_image(tmp_path / "png" / "x.png")) == expected).all()
    assert "mlflow ui --backend-store-uri file:" in logger_hints([ml])


def test_log_image_refuses_a_batch_and_writes_the_png_with_no_logger(tmp_path):
    with pytest.raises(ValueError, match="one \\(3, H, W\\) image"):
        log_image([], "x", torch.rand(2, 3, 8, 8), 0)
    assert log_image([], "x", torch.rand(3, 8, 8), 0, png=tmp_path / "x.png") == ["png"]
    assert (tmp_path / "x.png").is_file()


def test_hints_name_the_loggers_in_use(tmp_path):
    csv = CSVLogger(tmp_path, name="", version="v")
    tb = TensorBoardLogger(tmp_path, name="runs", version="v")
    assert "tensorboard" not in logger_hints([csv]).lower()
    assert str(tmp_path / "v" / "metrics.csv") in logger_hints([csv])
    assert f"tensorboard --logdir {tmp_path / 'runs'}" in logger_hints([tb])
    assert logger_hints([]) == ""
    assert [logger_kind(x) for x in (csv, tb, object())] == ["csv", "tensorboard", "other"]


def test_comparison_row_names_its_columns():
    lr, sr, hr = torch.zeros(3, 16, 16), torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    row = comparison_row(lr, sr, hr, 2)
    assert row.shape[-2] > 32 + 4  # a header strip above the tiles
    header = row[:, :14]
    # dark text pixels over each of the four columns, on a white strip
    width = 32 + 2
    inked = [(header[:, :, 2 + i * width : 2 + i * width + 32] < 0.5).any().item() for i in range(len(COLUMNS))]
    assert inked == [True] * 4


def test_a_run_with_tensorboard_and_csv_logs_labelled_images_to_both_and_hints_both(tmp_path, caplog):
    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="none", export_weights=False)
    data = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=64, max_val_images=2)
    csv = CSVLogger(tmp_path, name="run", version="csv")
    tb = TensorBoardLogger(tmp_path, name="run", version="tb", default_hp_metric=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=[csv, tb], callbacks=[SRImageLogger(num_images=1), RunSummary()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    # trainer.log_dir is the first logger's (CSV): the PNG goes there, the picture also to TensorBoard
    png = tmp_path / "run" / "csv" / "images" / "epoch0000_0.png"
    assert png.is_file() and read_image(png).shape[-2] > 64
    assert "val_images/0" in _tb_images(tb.log_dir)
    text = caplog.text  # rank_zero_info goes to the lightning logger
    assert "tensorboard --logdir" in text and "metrics.csv" in text
