"""Step metrics are logged only on the steps the logger writes: the same points, fewer log calls."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from lit_sr.modules import SRModule, sr_module


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
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.lr, self.hr = torch.rand(n, 3, 8, 8, generator=g), torch.rand(n, 3, 16, 16, generator=g)

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
