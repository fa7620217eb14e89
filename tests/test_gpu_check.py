"""scripts/gpu_check.sh --cpu: the GPU check runs end to end at toy size on the CPU (every step of
it, the DIV2K BadSR recipe's slice on stand-in data included), so the day it runs on a GPU only the
device and the sizes differ. Timings are printed, never asserted. Toy size: each step is one
interpreter's start-up plus seconds of work (the slice's EDSR is 8 features x 1 block); the recipe at its
own size is tests/test_every_recipe.py's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("train_throughput", "ifgsm_batched_vs_per_image", "per_sample_grads_vmap_vs_loop",
         "loader_vs_device_batches", "badsr_div2k_slice")


# In make test-recipes, not make test: its six interpreters cost ~70 CPU-s (measured 2026-12-07, idle),
# a tenth of the suite's budget on two cores.
@pytest.mark.slow
@pytest.mark.recipes
def test_gpu_check_cpu_mode_runs_every_step(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = out[out.index("gpu_check (cpu) summary:"):]
    for step in STEPS:
        assert re.search(rf"^\s+{step}\s+ok\s", summary, re.M), summary
    assert re.search(r"^\s+train_compiled\s+skipped", summary, re.M), summary  # compile: GPU only
    # each benchmark wrote its JSON, with the rows the GPU table is made of
    train = json.loads((tmp_path / "out" / "train_throughput.json").read_text())
    assert {"a", "e", "b", "c"} <= set(train["rows"][0]["img_s"])
    assert all(v > 0 for v in train["rows"][0]["img_s"].values())
    # the recipe's slice trained on the stand-in DIV2K and wrote its backdoor summary
    summaries = list((tmp_path / "out" / "badsr_div2k_slice").rglob("backdoor_summary.json"))
    assert summaries, out[-3000:]
    assert json.loads(summaries[0].read_text())["training"]["steps"] == 2


def test_gpu_check_rejects_an_unknown_argument():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--gpu-please"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "unknown argument: --gpu-please" in proc.stderr
