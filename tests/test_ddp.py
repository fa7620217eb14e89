"""Two-process DDP fits on CPU (gloo): metrics reduced across ranks, data sharded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts interpreters (DDP ranks): left out by make test-fast

ROOT = Path(__file__).resolve().parents[1]


def run_ddp(tmp_path: Path, *flags: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_fit_script.py"), "--out", str(tmp_path), *flags],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    return reports


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One 2-rank fit on the poisoned data with the attack callback, read by the three tests below:
    each checks its own component's reduction (validation metrics, attack metrics, the poisoned set),
    so one launch of the two ranks serves them all (each launch costs two interpreters' start-up)."""
    out = tmp_path_factory.mktemp("ddp")
    return out, run_ddp(out, "--attack", "--poison")


def test_ddp_fit_reduces_val_metrics_across_ranks(ddp_run):
    _, (r0, r1) = ddp_run
    for key in ("val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y"):
        assert key in r0["metrics"]
        assert r0["metrics"][key] == r1["metrics"][key]
    # each rank trained on its own shard of the data
    assert r0["train_indices"] and r1["train_indices"]


def test_ddp_attack_callback_metrics_are_reduced_across_ranks(ddp_run):
    import math

    tmp_path, (r0, r1) = ddp_run
    for metric in ("lr_psnr", "sr_psnr", "sr_ssim", "hr_psnr", "clean_hr_psnr"):
        key = f"attack/ifgsm/eps4/{metric}"
        assert key in r0["metrics"] and key in r1["metrics"], sorted(r0["metrics"])
        assert r0["metrics"][key] == r1["metrics"][key]
    assert r0["metrics"]["attack/ifgsm/eps4/lr_psnr"] >= 20 * math.log10(255 / 4) - 1e-6
    # each rank attacked its own validation photo, and the logged value is the image-weighted mean
    local = [json.loads((tmp_path / f"rank{r}_attack.json").read_text()) for r in (0, 1)]
    for metric in ("sr_psnr", "hr_psnr"):
        key = f"attack/ifgsm/eps4/{metric}"
        (s0, c0), (s1, c1) = local[0][key], local[1][key]
        assert c0 >= 1 and c1 >= 1 and s0 / c0 != s1 / c1
        assert math.isclose(r0["metrics"][key], (s0 + s1) / (c0 + c1), rel_tol=1e-6)


def test_ddp_poisoned_fit_trains_every_rank_on_the_same_set(ddp_run):
    tmp_path, (r0, r1) = ddp_run
    p0, p1 = (json.loads((tmp_path / f"rank{r}_poison.json").read_text()) for r in (0, 1))
    pool, budget = r0["candidate_indices"], r0["budget"]
    assert r1["candidate_indices"] == pool and r1["budget"] == budget and budget >= 4
    assert r0["config_hash"] == r1["config_hash"]
    # generation was sharded: each rank made its half of the pool and of the 4 validation images, and the
    # merged manifest lists every sample once
    assert r0["generated_samples"] + r1["generated_samples"] == len(pool) + 4
    assert abs(r0["generated_samples"] - r1["generated_samples"]) <= 2
    manifest = json.loads((Path(r0["cache_dir"]) / "manifest.json").read_text())
    assert sorted(int(e["index"]) for e in manifest["samples"].values()) == pool
    assert not (Path(r0["cache_dir"]) / "parts").exists()  # partial manifests merged and removed
    # the seeded initial set, then the set swapped in after epoch 0, are the same on both ranks
    assert p0["initial"] == p1["initial"] and len(p0["initial"]) == budget
    swapped = pool[-budget:]
    assert swapped != p0["initial"]
    assert r0["poisoned_indices"] == r1["poisoned_indices"] == swapped
    for report in (p0, p1):
        assert set(report["served"].get("0", [])) <= set(p0["initial"])
        assert set(report["served"].get("1", [])) <= set(swapped)
    for epoch in ("0", "1"):
        assert p0["served"].get(epoch) or p1["served"].get(epoch), f"no poisoned sample trained in epoch {epoch}"
    # backdoor metrics: counts summed over both ranks' validation shards, identical on both
    assert r0["metrics"]["backdoor/asr_pixel_included"] == 4
    for key in ("backdoor/asr_pixel", "backdoor/clean_psnr_y", "backdoor/poisoned_hr_psnr"):
        assert r0["metrics"][key] == r1["metrics"][key]

