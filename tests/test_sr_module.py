"""SRModule end to end on CPU: overfitting, EMA export, test sets, tiled predict, the CLI config."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from callbacks.prediction_writer import PredictionWriter
from lit_sr.io import read_image, read_state_dict, write_image
from lit_sr.metrics import psnr
from lit_sr.modules import SRModule
from lit_sr.ops import imresize


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


def test_quickstart_config_runs_a_few_steps(tmp_path):
    from train import main

    root = Path(__file__).resolve().parents[1]
    main([
        "fit", "--config", str(root / "configs" / "quickstart.yaml"),
        "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.init_args.max_val_images", "1", "--data.init_args.max_side", "192",
    ])
    logdir = next((tmp_path / "runs" / "quickstart").iterdir())
    assert (logdir / "weights.pth").is_file() and (logdir / "summary.json").is_file()
    assert list((logdir / "images").glob("*.png"))
    assert list(logdir.glob("events.out.tfevents.*"))
