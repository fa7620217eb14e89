"""Two-process DDP fits on CPU (gloo): metrics reduced across ranks, data sharded."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ddp(tmp_path: Path, *flags: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_fit_script.py"), "--out", str(tmp_path), *flags],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    return reports


def test_ddp_fit_reduces_val_metrics_across_ranks(tmp_path):
    r0, r1 = run_ddp(tmp_path)
    for key in ("val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y"):
        assert key in r0["metrics"]
        assert r0["metrics"][key] == r1["metrics"][key]
    # each rank trained on its own shard of the data
    assert r0["train_indices"] and r1["train_indices"]
