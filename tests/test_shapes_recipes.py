"""The shapes recipes run through train.py (LightningCLI) at toy size: they parse, train, validate, and their loss moves."""

import math

import lightning as L
import pytest

from train import main

SMALL_DATA = ["--data.init_args.hr_size", "64", "--data.init_args.min_radius", "8", "--data.init_args.max_radius",
              "16", "--data.init_args.val_size", "8", "--data.init_args.val_batch_size", "8"]


class LossRecorder(L.Callback):
    """The training loss of every step."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def fit(tmp_path, config, *extra):
    args = ["--config", config, "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu", *SMALL_DATA, *extra]
    cli = main(args, run=False)  # no subcommand: build the trainer, then fit with the recorder attached
    recorder = LossRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.trainer, recorder.losses


@pytest.mark.slow
def test_classifier_recipe_trains_and_its_loss_falls(tmp_path):
    trainer, losses = fit(tmp_path, "configs/train/shapes_classifier.yaml", "--trainer.max_epochs", "4",
                          "--data.init_args.train_size", "16", "--data.init_args.batch_size", "8",
                          "--model.init_args.input_size", "32", "--model.init_args.flip", "false",
                          "--trainer.check_val_every_n_epoch", "4")
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/top1"]) <= 1 and math.isfinite(float(metrics["val/loss"]))
    module = trainer.lightning_module
    assert module.net.arch == "resnet18" and module.net.num_classes == 6
    assert len(losses) == 8
    # the same 16 images seen four times: cross-entropy falls from about ln 6
    assert losses[0] > 1.2 and sum(losses[-2:]) / 2 < 0.75 * losses[0]


@pytest.mark.slow
def test_detector_recipe_trains_reports_map_and_its_loss_falls(tmp_path):
    trainer, losses = fit(tmp_path, "configs/train/shapes_detector.yaml", "--trainer.max_epochs", "3",
                          "--trainer.check_val_every_n_epoch", "3",
                          "--data.init_args.train_size", "8", "--data.init_args.batch_size", "4",
                          "--model.init_args.min_size", "64", "--model.init_args.max_size", "64",
                          "--model.init_args.flip", "false")
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/map_50"]) <= 1 and "val/map" in metrics
    assert len(losses) == 6
    # Faster R-CNN's summed losses start near ln 7 (the box classifier's cross-entropy) and fall fast
    assert losses[0] > 1.0 and sum(losses[-2:]) / 2 < 0.75 * losses[0]


@pytest.mark.slow
def test_downstream_backdoor_quickstart_runs_and_tabulates_downstream_next_to_sr_metrics(tmp_path):
    import torch
    import yaml

    from lit_sr.downstream import ClassifierModule, DetectorModule

    raw = yaml.safe_load(open("configs/train/badsr_downstream_quickstart.yaml"))
    ckpt = tmp_path / "classifier.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": ClassifierModule("resnet18", 6).state_dict()}, ckpt)
    downstream = next(c for c in raw["trainer"]["callbacks"] if c["class_path"].endswith("DownstreamEvalCallback"))
    downstream["init_args"]["classifier"]["init_args"].update(weights=str(ckpt), input_size=32)
    detector_ckpt = tmp_path / "detector.ckpt"
    torch.save({"state_dict": DetectorModule(representation_size=256).state_dict()}, detector_ckpt)
    downstream["init_args"]["detector"]["init_args"].update(weights=str(detector_ckpt), min_size=64, max_size=64)
    raw["trainer"].update(max_epochs=1, check_val_every_n_epoch=1, enable_progress_bar=False)
    raw["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    raw["data"]["init_args"].update(hr_size=64, min_radius=11, max_radius=22, train_size=10, val_size=4,
                                    batch_size=5, val_batch_size=4)
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(raw))
    trainer = main(["fit", "--config", str(config)]).trainer
    callback = next(c for c in trainer.callbacks if type(c).__name__ == "DownstreamEvalCallback")
    assert callback.target_class == 1 and trainer.datamodule.budget == 4  # cool_circle, 40% of 10
    assert 0 <= callback.results["downstream/classifier/sr_triggered/asr"] <= 1
    assert "backdoor/attainment_mean" in trainer.callback_metrics
    text = callback.summary_path.read_text()
    assert "| sr_triggered |" in text and "mean label attainment" in text
    assert 0 <= callback.results["downstream/detector/sr_triggered/map_50"] <= 1 and "mAP@0.5" in text


def test_detector_learning_rate_ramps_up_then_decays():
    from types import SimpleNamespace

    import torch

    from lit_sr.downstream.modules import _cosine_adamw

    net = torch.nn.Linear(2, 2)
    holder = SimpleNamespace(parameters=net.parameters, trainer=SimpleNamespace(estimated_stepping_batches=100))
    config = _cosine_adamw(holder, lr=1e-2, weight_decay=0.0, warmup=0.1)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(4e-4) and max(rates) == pytest.approx(1e-2) and rates.index(max(rates)) == 10
    assert all(a < b for a, b in zip(rates[:10], rates[1:11])) and all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.05)
    plain = _cosine_adamw(holder, lr=1e-2, weight_decay=0.0)
    assert plain["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-2)  # no warm-up: cosine from the start
