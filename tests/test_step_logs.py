"""Step metrics are logged only on the steps the logger writes: the same points, fewer log calls."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from lit_sr.modules import SRModule, sr_module
from lit_sr.modules.step_logs import step_logs_due


class Recorder(Logger):
    """Keeps what Lightning sends to a logger: (step, metrics)."""

    def __init__(self):
        super().__init__()
        self.points: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.points.append((step, {k: float(v) for k, v in metrics.items() if k.startswith("train/")}))


class Pairs(Dataset):
    """``n`` random x2 pairs (HR side ``hr``); their content does not matter here."""

    def __init__(self, n: int, hr: int = 16):
        g = torch.Generator().manual_seed(0)
        self.hr = torch.rand(n, 3, hr, hr, generator=g)
        self.lr = torch.nn.functional.avg_pool2d(self.hr, 2)

    def __len__(self) -> int:
        return len(self.lr)

    def __getitem__(self, i: int) -> dict:
        return {"lr": self.lr[i], "hr": self.hr[i], "index": i, "path": f"{i}.png"}


def _fit(tmp_path, max_steps: int) -> tuple[list, int, L.Trainer]:
    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="none", export_weights=False)
    calls = []
    real_log = module.log
    module.log = lambda name, *a, **k: (calls.append(name), real_log(name, *a, **k))[1]
    logger = Recorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, log_every_n_steps=5, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(Pairs(16), batch_size=2))  # 8 batches an epoch
    return logger.points, calls.count("train/loss"), trainer


def test_the_logger_gets_the_same_points_with_fewer_log_calls(tmp_path, monkeypatch):
    points, calls, trainer = _fit(tmp_path / "gated", 13)
    monkeypatch.setattr(sr_module, "step_logs_due", lambda module: True)  # what it did before: every step
    every_points, every_calls, _ = _fit(tmp_path / "every", 13)
    assert every_calls == 13
    assert [s for s, m in points if "train/loss" in m] == [4, 9] == [s for s, m in every_points if "train/loss" in m]
    assert points == every_points  # the same steps and values
    # steps 4 and 9 (the logger's), 7 (an epoch's last batch) and 12 (max_steps' last): 4 calls, not 13
    assert calls == 4
    # the end of the fit still holds the last step's loss, for monitors and summaries
    assert "train/loss" in trainer.callback_metrics


# --------------------------------------------------------------------------- the other modules
def _gan():
    from lit_sr.modules import GANSRModule, gan_module

    module = GANSRModule(arch_kwargs={"num_feat": 8, "num_block": 1, "num_grow_ch": 4}, scale=2,
                         discriminator="unet_discriminator",
                         discriminator_kwargs={"num_feat": 8}, perceptual_layer_weights={"conv1_2": 1.0},
                         perceptual_pretrained=False, export_weights=False)
    return module, gan_module, DataLoader(Pairs(16, hr=32), batch_size=2)


def _robust():
    from lit_sr.modules import RobustFinetuneModule, robust_module

    module = RobustFinetuneModule(arch="edsr", arch_kwargs={"num_feat": 4, "num_block": 1}, scale=2, attack="pgd",
                                  eps=4 / 255, steps=1, scheduler="none", export_weights=False)
    return module, robust_module, DataLoader(Pairs(16), batch_size=2)


def _refsr():
    from datamodules.refsr import EmbeddedRefPairsDataModule
    from lit_sr.modules import refsr_module

    module = refsr_module.RefSRModule(arch_kwargs={"n_feats": 8, "num_res_blocks": [1, 1, 1, 1]}, losses="rec",
                                      export_weights=False)
    data = EmbeddedRefPairsDataModule(max_side=64, patch_size=32, batch_size=1, repeat=4, levels=[1])
    data.setup("fit")
    return module, refsr_module, data.train_dataloader()


def _liif():
    from lit_sr.modules import ArbitraryScaleSRModule, arbitrary_scale_module

    module = ArbitraryScaleSRModule(arch_kwargs={"n_resblocks": 1, "n_feats": 8, "hidden_list": [16, 16]}, scale=4,
                                    inp_size=8, sample_q=16, scheduler="none", export_weights=False)
    return module, arbitrary_scale_module, DataLoader(Pairs(16, hr=32), batch_size=2)


def _fit_module(tmp_path, build, every_step: bool, monkeypatch) -> tuple[list, int, L.Trainer]:
    torch.manual_seed(0)
    module, source, loader = build()
    if every_step:  # what the module did before: self.log on every step
        monkeypatch.setattr(source, "step_logs_due", lambda module: True)
    calls = []
    real_log = module.log
    module.log = lambda name, *a, **k: (calls.append(name), real_log(name, *a, **k))[1]
    logger = Recorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=7, log_every_n_steps=3, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    monkeypatch.undo()
    # the attack's wall time is no deterministic value
    points = [(step, {k: v for k, v in m.items() if not k.startswith("train/attack_seconds")}) for step, m in logger.points]
    return points, len(calls), trainer


@pytest.mark.parametrize("build", [_gan, _robust, _refsr, _liif], ids=["gan", "robust", "refsr", "liif"])
def test_every_module_logs_step_metrics_on_the_loggers_steps_only(tmp_path, monkeypatch, build):
    points, calls, trainer = _fit_module(tmp_path / "gated", build, False, monkeypatch)
    every_points, every_calls, _ = _fit_module(tmp_path / "every", build, True, monkeypatch)
    # log_every_n_steps 3: steps 2 and 5 (the robust module's epoch means also come at the fit's end, step 6)
    assert [s for s, _ in points][:2] == [2, 5] and len(points) <= 3
    assert points == every_points  # the same names and values at those steps
    assert calls < every_calls  # the other steps made no step-only log calls
    assert any("loss" in name for name in trainer.callback_metrics)  # the end of fit holds the last values


class ManualNaN(L.LightningModule):
    """Manual optimisation, like the GAN and RefSR modules; its step-3 loss is NaN and never logged."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx: int) -> dict:
        opt = self.optimizers()
        loss = self.layer(batch).mean() * (float("nan") if self.global_step == 3 else 1.0)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        if step_logs_due(self):
            self.log("train/d_loss", loss.detach())
        return {"train/d_loss": loss.detach(), "train/d_real": loss.detach()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_manual_optimisation_step_that_diverges_stops_at_that_step_not_the_next_logged_one(tmp_path):
    from callbacks import NonFiniteLossError, StopOnNonFiniteLoss

    trainer = L.Trainer(accelerator="cpu", max_steps=20, log_every_n_steps=10, logger=Recorder(),
                        callbacks=[StopOnNonFiniteLoss()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"training stopped at step 4 \(epoch 0, batch 3\): train/d_loss = nan"):
        trainer.fit(ManualNaN(), DataLoader(torch.rand(40, 2), batch_size=2))
