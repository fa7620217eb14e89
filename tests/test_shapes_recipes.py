"""The shapes recipes run through train.py (LightningCLI) at toy size: they parse, train and validate."""

import math

import pytest

from train import main

SMALL_DATA = ["--data.init_args.hr_size", "64", "--data.init_args.min_radius", "8", "--data.init_args.max_radius",
              "16", "--data.init_args.val_size", "8", "--data.init_args.val_batch_size", "8"]


def run(tmp_path, config, *extra):
    args = ["fit", "--config", config, "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu", *SMALL_DATA, *extra]
    return main(args).trainer


def test_classifier_recipe_trains_and_its_loss_moves(tmp_path):
    trainer = run(tmp_path, "configs/shapes_classifier.yaml", "--trainer.max_epochs", "1",
                  "--data.init_args.train_size", "64", "--data.init_args.batch_size", "8",
                  "--model.init_args.input_size", "32", "--trainer.log_every_n_steps", "1")
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/top1"]) <= 1
    module = trainer.lightning_module
    assert module.net.arch == "resnet18" and module.net.num_classes == 6
    assert math.isfinite(float(metrics["train/loss"]))


@pytest.mark.slow
def test_detector_recipe_trains_and_reports_map(tmp_path):
    trainer = run(tmp_path, "configs/shapes_detector.yaml", "--trainer.max_epochs", "1",
                  "--data.init_args.train_size", "8", "--data.init_args.batch_size", "4",
                  "--model.init_args.min_size", "64", "--model.init_args.max_size", "64")
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/map_50"]) <= 1 and "val/map" in metrics
    assert math.isfinite(float(metrics["train/loss"]))
