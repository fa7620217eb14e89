"""SRModule end to end on CPU: overfitting, EMA export, test sets, tiled predict, the CLI config."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lit_sr.io import read_image, read_state_dict, write_image
from lit_sr.metrics import psnr
from lit_sr.modules import SRModule
from lit_sr.ops import imresize
from lit_sr.training.prediction_writer import PredictionWriter


class RepeatedPatch(Dataset):
    """One LR/HR pair repeated: the smallest data set a model can overfit."""

    def __init__(self, hr: torch.Tensor, scale: int, length: int):
        self.hr = hr
        self.lr = ((imresize(hr, 1 / scale).clamp(0, 1) * 255).round() / 255)
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return {"lr": self.lr, "hr": self.hr, "index": i, "path": "patch"}


def quiet_trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.mark.slow
def test_tiny_model_overfits_and_beats_bicubic(tmp_path, photos):
    torch.manual_seed(0)  # randomly initialised tiny EDSR
    hr = photos["chelsea"][:, 100:164, 200:264]
    scale = 2
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 16, "num_block": 2}, scale=scale, lr=2e-3,
                      scheduler="none", ema_decay=0.9, export_weights=False)
    train = DataLoader(RepeatedPatch(hr, scale, 300), batch_size=1)
    val = DataLoader(RepeatedPatch(hr, scale, 1), batch_size=1)
    lr_img = train.dataset.lr[None]
    bicubic = psnr(imresize(lr_img, scale).clamp(0, 1), hr[None], crop_border=scale, y_channel=True).item()
    before = psnr(module.super_resolve(lr_img), hr[None], crop_border=scale, y_channel=True).item()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, train, val)
    after = trainer.callback_metrics["val/psnr_y"].item()
    assert after > before + 5
    assert after > bicubic, f"model {after:.2f} dB vs bicubic {bicubic:.2f} dB"
    assert trainer.callback_metrics["val/bicubic_psnr_y"].item() == pytest.approx(bicubic, abs=1e-3)
    # EMA export in BasicSR format, and the EMA differs from the raw weights
    path = module.export(tmp_path / "w.pth")
    ema, raw = read_state_dict(path), read_state_dict(path, key="params")
    assert set(ema) == set(raw) == set(module.net.state_dict())
    assert not torch.equal(ema["conv_first.weight"], raw["conv_first.weight"])


def test_scale_mismatch_and_bad_options():
    with pytest.raises(ValueError, match="upscale=2 disagrees"):
        SRModule(arch="edsr", arch_kwargs={"upscale": 2}, scale=4)
    with pytest.raises(ValueError, match="scheduler"):
        SRModule(scheduler="step")
    with pytest.raises(TypeError, match="num_feats"):
        SRModule(arch="edsr", arch_kwargs={"num_feats": 4})


def test_test_sets_and_tiled_predict(tmp_path, photos):
    from datamodules import HRFolderDataModule

    for name in ("a", "b"):
        write_image(photos["coffee"][:, :48, :64], tmp_path / f"set_{name}" / "img.png")
    write_image(photos["astronaut"][:, :40, :36], tmp_path / "lr_in" / "x.png")
    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, tile=16, tile_overlap=4)
    writer = PredictionWriter(output_dir=str(tmp_path / "out"), tile=16, tile_overlap=4)
    dm = HRFolderDataModule(train_hr=str(tmp_path / "set_a"), val_hr=str(tmp_path / "set_a"), scale=2,
                            patch_size=16, num_workers=0,
                            test_sets={"SetA": str(tmp_path / "set_a"), "SetB": str(tmp_path / "set_b")},
                            predict_path=str(tmp_path / "lr_in"))
    trainer = quiet_trainer(tmp_path)
    results = trainer.test(module, datamodule=dm, verbose=False)
    keys = set().union(*results)
    assert {"test/SetA/psnr_y", "test/SetB/ssim_y", "test/SetA/bicubic_psnr_y"} <= keys
    trainer = quiet_trainer(tmp_path, callbacks=[writer])
    trainer.predict(module, datamodule=dm)
    written = [[str(path) for path in writer.written]]
    out = Path(written[0][0])
    assert out.name == "x_x2.png"
    sr = read_image(out)
    assert sr.shape == (3, 80, 72)
    # tiling must agree with the untiled forward away from tile seams up to blending of overlaps
    whole = module.net.eval()(read_image(tmp_path / "lr_in" / "x.png")[None]).clamp(0, 1)[0]
    assert (sr - whole).abs().mean() < 0.02


@pytest.mark.slow
def test_quickstart_config_runs_a_few_steps(tmp_path):
    from train import main

    root = Path(__file__).resolve().parents[1]
    main([
        "fit", "--config", str(root / "configs" / "train" / "quickstart.yaml"),
        "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.init_args.max_val_images", "1", "--data.init_args.max_side", "192",
    ])
    logdir = next((tmp_path / "runs" / "quickstart").iterdir())
    assert (logdir / "weights.pth").is_file() and (logdir / "summary.json").is_file()
    assert list((logdir / "images").glob("*.png"))
    assert list(logdir.glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- checkpoints, resume, CLI
ROOT = Path(__file__).resolve().parents[1]


def recipe_checkpoint_callbacks(name: str, **last_overrides) -> list:
    """The ModelCheckpoint / LastCheckpoint entries of a recipe, instantiated as the CLI would."""
    import importlib

    import yaml

    callbacks = []
    for entry in yaml.safe_load((ROOT / "configs" / "train" / f"{name}.yaml").read_text())["trainer"]["callbacks"]:
        if not entry["class_path"].endswith(("ModelCheckpoint", "LastCheckpoint")):
            continue
        module_name, cls_name = entry["class_path"].rsplit(".", 1)
        kwargs = dict(entry.get("init_args") or {})
        if cls_name == "LastCheckpoint":
            kwargs.update(last_overrides)
        callbacks.append(getattr(importlib.import_module(module_name), cls_name)(**kwargs))
    return callbacks


class WorseningModule(SRModule):
    """A tiny SRModule whose logged val/psnr_y falls at every validation (a diverging run)."""

    def validation_step(self, batch, batch_idx):
        self.log("val/psnr_y", 30.0 - self.global_step, batch_size=batch["lr"].shape[0])


def tiny_module(cls=SRModule, **kwargs) -> SRModule:
    torch.manual_seed(0)
    defaults = dict(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3)
    defaults.update(kwargs)
    return cls(**defaults)


def patch_loaders(photos, length: int = 4):
    hr = photos["chelsea"][:, 100:132, 200:232]
    return DataLoader(RepeatedPatch(hr, 2, length), batch_size=1), DataLoader(RepeatedPatch(hr, 2, 1), batch_size=1)


@pytest.mark.parametrize("recipe", ["quickstart", "edsr_x4_div2k", "esrgan_x4_div2k"])
def test_last_checkpoint_is_the_final_state_when_the_metric_gets_worse(tmp_path, photos, recipe):
    from lightning.pytorch.loggers import CSVLogger

    train, val = patch_loaders(photos)
    # Step-based recipes: save every 3 steps, validate every 2, stop at 9 (mid-epoch, off both grids).
    step_based = recipe != "quickstart"
    callbacks = recipe_checkpoint_callbacks(recipe, **({"every_n_train_steps": 3} if step_based else {}))
    assert len(callbacks) == 2
    schedule = dict(max_steps=9, val_check_interval=2, check_val_every_n_epoch=None) if step_based else \
        dict(max_epochs=3, check_val_every_n_epoch=1)
    trainer = quiet_trainer(tmp_path, enable_checkpointing=True, callbacks=callbacks,
                            logger=CSVLogger(tmp_path, name="run"), **schedule)
    module = tiny_module(WorseningModule)
    trainer.fit(module, train, val)
    final_step = trainer.global_step
    assert final_step == (9 if step_based else 12)
    ckpt_dir = Path(trainer.log_dir) / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    best = torch.load(ckpt_dir / "best.ckpt", weights_only=True)
    assert last["global_step"] == final_step
    assert best["global_step"] == (2 if step_based else 4)  # the first validation scored highest
    assert trainer.checkpoint_callback.best_model_path.endswith("best.ckpt")
    # weights.pth is the last state, weights_best.pth the best one, and each says so.
    log_dir = Path(trainer.log_dir)
    w_last = torch.load(log_dir / "weights.pth", weights_only=True)
    w_best = torch.load(log_dir / "weights_best.pth", weights_only=True)
    assert w_last["meta"] == {"state": "last", "global_step": final_step}
    assert w_best["meta"]["state"] == "best" and w_best["meta"]["global_step"] == best["global_step"]
    assert w_best["meta"]["monitor"] == "val/psnr_y" and w_best["meta"]["checkpoint"] == "best.ckpt"
    for key, value in w_last["params"].items():
        torch.testing.assert_close(value, last["state_dict"][f"net.{key}"], rtol=0, atol=0)
        torch.testing.assert_close(w_best["params"][key], best["state_dict"][f"net.{key}"], rtol=0, atol=0)
    assert not torch.equal(w_last["params"]["conv_first.weight"], w_best["params"]["conv_first.weight"])


class LrRecorder(L.Callback):
    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def run_and_record(tmp_path, photos, module, max_epochs, ckpt_path=None):
    train, val = patch_loaders(photos)
    recorder = LrRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=max_epochs, callbacks=[recorder], limit_val_batches=0)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer, recorder.lrs


@pytest.mark.parametrize("scheduler", ["cosine", "multistep"])
def test_resume_with_a_longer_run_follows_the_new_schedule(tmp_path, photos, scheduler):
    kwargs = dict(scheduler=scheduler, milestones=[3, 10], gamma=0.5, eta_min=1e-7, export_weights=False)
    _, fresh = run_and_record(tmp_path / "fresh", photos, tiny_module(**kwargs), 4)
    short, first = run_and_record(tmp_path / "short", photos, tiny_module(**kwargs), 2)
    short.save_checkpoint(tmp_path / "two.ckpt")
    _, resumed = run_and_record(tmp_path / "resumed", photos, tiny_module(**kwargs), 4, tmp_path / "two.ckpt")
    assert len(fresh) == 16 and len(resumed) == 8
    # 4 steps per epoch: the resumed epochs 2 and 3 use the fresh 4-epoch run's learning rates.
    assert resumed == pytest.approx(fresh[8:], rel=1e-9)
    if scheduler == "cosine":
        assert first[4] == pytest.approx(1e-7 + (1e-3 - 1e-7) * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
        assert fresh[8] == pytest.approx(1e-7 + (1e-3 - 1e-7) * 0.5)  # half-way through 16 steps
    else:
        assert fresh[:4] == pytest.approx([1e-3] * 3 + [5e-4]) and fresh[10] == pytest.approx(2.5e-4)


def test_resume_with_a_new_lr_uses_it(tmp_path, photos):
    kwargs = dict(scheduler="cosine", eta_min=0.0, export_weights=False)
    short, _ = run_and_record(tmp_path / "short", photos, tiny_module(**kwargs), 2)
    short.save_checkpoint(tmp_path / "two.ckpt")
    with pytest.warns(UserWarning, match="with lr"):
        _, resumed = run_and_record(tmp_path / "resumed", photos, tiny_module(lr=4e-3, **kwargs), 4,
                                    tmp_path / "two.ckpt")
    _, fresh = run_and_record(tmp_path / "fresh", photos, tiny_module(lr=4e-3, **kwargs), 4)
    assert resumed == pytest.approx(fresh[8:], rel=1e-9)


@pytest.mark.slow
def test_gan_recipe_last_checkpoint_is_the_final_step_of_a_manual_optimisation_run(tmp_path):
    """The ESRGAN recipe's checkpoints with GANSRModule (manual optimisation, max_steps off the save grid)."""
    from lightning.pytorch.loggers import CSVLogger

    from lit_sr.modules import GANSRModule

    torch.manual_seed(0)  # random tiny RRDBNet and VGG-style discriminator, random VGG features
    module = GANSRModule(arch_kwargs=dict(num_feat=8, num_block=1, num_grow_ch=4), discriminator_kwargs={"num_feat": 8},
                         perceptual_layer_weights={"conv1_2": 1.0}, perceptual_pretrained=False, ema_decay=None,
                         milestones=[4])
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 3, 128, 128, generator=g)
    pairs = [{"lr": torch.nn.functional.avg_pool2d(h[None], 4)[0], "hr": h, "index": i, "path": f"p{i}"}
             for i, h in enumerate(hr)]
    train, val = DataLoader(pairs, batch_size=2), DataLoader(pairs[:1], batch_size=1)
    callbacks = recipe_checkpoint_callbacks("esrgan_x4_div2k", every_n_train_steps=3)
    trainer = quiet_trainer(tmp_path, enable_checkpointing=True, callbacks=callbacks, max_steps=8,
                            val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                            logger=CSVLogger(tmp_path, name="gan"))
    with pytest.warns(UserWarning):  # Lightning's note on manual optimisation and every_n_train_steps
        trainer.fit(module, train, val)
    ckpt_dir = Path(trainer.log_dir) / "checkpoints"
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == trainer.global_step == 8
    assert (ckpt_dir / "best.ckpt").is_file()
    meta = torch.load(Path(trainer.log_dir) / "weights.pth", weights_only=True)["meta"]
    assert meta == {"state": "last", "global_step": 8}


class LogsABackdoorMetric(L.Callback):
    """Stands in for BackdoorEvalCallback: logs a backdoor/* value during validation."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("backdoor/asr_pixel", 0.25)


def test_hparams_go_to_tensorboard_with_val_and_backdoor_metrics(tmp_path, photos):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    train, val = patch_loaders(photos)
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[LogsABackdoorMetric()])
    trainer.fit(tiny_module(ema_decay=0.9, export_weights=False), train, val)
    events = EventAccumulator(trainer.log_dir, size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y", "backdoor/asr_pixel"} <= {
        m.name.tag for m in experiment.metric_infos}
    hparams = {h.name for h in experiment.hparam_infos}
    assert {"arch", "lr", "ema_decay", "arch_kwargs/num_feat"} <= hparams
    assert {"val/psnr_y", "backdoor/asr_pixel"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_quickstart_cli_under_two_process_ddp_keeps_last_and_best(tmp_path):
    """`train.py fit` on 2 gloo ranks: LastCheckpoint's end-of-fit save, the exports and the hparams are collective-safe.

    The one test of the real launcher: ``--trainer.strategy ddp`` starts rank 1 as a fresh interpreter
    re-running ``train.py`` with the same arguments, the path users take. The other DDP tests fork their
    ranks from the test process (``ddp_fork``, tests/forked_ranks.py): each new interpreter costs ~10 CPU-s of
    imports, for fits of under a second, and that launcher is the same in every one of them.
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = ["fit", "--config", str(ROOT / "configs" / "train" / "quickstart.yaml"), "--trainer.accelerator", "cpu",
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "3",
            "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--data.init_args.max_val_images", "2", "--data.init_args.max_side", "192",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (log_dir,) = (tmp_path / "runs" / "quickstart").iterdir()
    last = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3  # max_steps ends the second epoch after one step: saved at fit end
    assert torch.load(log_dir / "weights.pth", weights_only=True)["meta"] == {"state": "last", "global_step": 3}
    best = torch.load(log_dir / "weights_best.pth", weights_only=True)["meta"]
    assert best["state"] == "best" and best["global_step"] in (2, 3)


def test_prediction_writer_rejects_bad_settings_and_modules(tmp_path):
    with pytest.raises(ValueError, match="tile_overlap must be smaller than tile=8"):
        PredictionWriter(output_dir=str(tmp_path), tile=8, tile_overlap=8)
    with pytest.raises(ValueError, match="tile"):
        PredictionWriter(output_dir=str(tmp_path), tile=0)
    writer = PredictionWriter(output_dir=str(tmp_path), tile=8, tile_overlap=4)
    with pytest.raises(TypeError, match="scale.*predict_tiling"):
        writer.on_predict_start(None, L.LightningModule())
    module = tiny_module()
    writer.on_predict_start(None, module)
    assert module.predict_tiling == (8, 4)
    with pytest.raises(KeyError, match="'path'"):
        writer.write_on_batch_end(None, module, torch.zeros(1, 3, 8, 8), [0], {"lr": torch.zeros(1, 3, 4, 4)}, 0)
    writer.on_predict_end(None, module)
    assert module.predict_tiling is None
