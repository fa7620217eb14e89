"""The positive control of configs/train/demo_poisoned.yaml is implanted, run as ``make demo`` runs its arms.

Arm D (``configs/train/demo_clean.yaml``) and arm A (``configs/train/demo_poisoned.yaml`` as it stands:
20% of the 76 training tiles carry a checkerboard Blend trigger and the classic target label, a flat
grey image) are two ``train.py`` runs of the study command with the demo's columns and verdict rule
(``configs/study/demo.yaml``), here without the substitute network (A needs none) and in a temporary
folder. The demo's own A uses the same trigger with a flat magenta target (the target every arm of the
demo shares); it is implanted too but with a narrower clean-quality margin (-0.46 dB against the
verdict's 0.5, docs/badsr.md), so this test keeps the grey target (-0.21 dB), whose margins do not
hang on the last digits of a CPU's float reductions. Both are tiny x2 EDSRs trained from random
initialisation with the same seed, tiles and 950 steps. Why this trigger and target family
(documented in docs/badsr.md and the configs): an SR network sees
a local window of its input, so the trigger must be recognisable locally -- BackdoorBench's blended
noise image was measured not to be learnt at this scale (0% after 1000 steps at 10% and 50%
poisoning), a pixel-level checkerboard is; and a translation-equivariant network cannot paint a
spatially varying target photo wherever the trigger is, a uniform target it can.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from callbacks.backdoor_pictures import backdoor_grid, grid_row
from lit_sr.jobs.study.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_positive_control_is_implanted_without_hurting_clean_quality(tmp_path):
    demo = yaml.safe_load((ROOT / "configs" / "study" / "demo.yaml").read_text())
    evaluation = [{"class_path": "callbacks.RunSummary"},
                  {"class_path": "callbacks.BackdoorEvalCallback", "init_args": {"every_n_epochs": 1,
                                                                                 "num_grid_images": 2}},
                  {"class_path": "callbacks.BackdoorSummary",
                   "init_args": {"clean_weights": "{runs_dir}/D_clean/weights.pth"}}]
    study = {
        "name": "e2e", "output_dir": str(tmp_path), "base_config": str(ROOT / "configs" / "train" / "demo_poisoned.yaml"),
        "python": sys.executable, "reference": "D_clean",
        "env": {"OMP_NUM_THREADS": "1"},
        "runs": {
            # D gets a logger of the study file's own, which the study keeps; A has none: TensorBoard is injected
            "D_clean": {"config": str(ROOT / "configs" / "train" / "demo_clean.yaml"), "results_file": "summary.json",
                        "row": {"from_run": "A_control", "block": "clean"},
                        "overrides": {"trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"}}},
            "A_control": {"overrides": {"data.init_args.substitute": None,
                                        "data.init_args.cache_dir": str(tmp_path / "cache"),
                                        "data.init_args.target": str(ROOT / "configs" / "train" / "demo_target_grey.png"),
                                        "trainer.callbacks": evaluation}},
        },
        "columns": demo["columns"], "verdict": demo["verdict"],
    }
    path = tmp_path / "study_e2e.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    runs = tmp_path / "e2e" / "runs"
    assert main(["--config", str(path)]) == 0, (runs / "A_control" / "train.log").read_text()[-4000:]

    # the study of two real train.py runs: weights, each run's logger, the table, its rows and the plot
    assert (runs / "D_clean" / "weights.pth").is_file()
    assert (runs / "D_clean" / "metrics.csv").is_file() and not list((runs / "D_clean").glob("events.*"))
    assert list((runs / "A_control").glob("events.out.tfevents.*"))
    md = (tmp_path / "e2e" / "results.md").read_text()
    assert "| D_clean |" in md and "| A_control |" in md
    assert (tmp_path / "e2e" / "summary.png").stat().st_size > 1000

    rows = {r["run"]: r for r in json.loads((tmp_path / "e2e" / "results.json").read_text())["rows"]}
    a, d = rows["A_control"]["cells"], rows["D_clean"]["cells"]
    assert rows["A_control"]["verdict"] == "implanted", rows["A_control"]
    assert a["pixel ASR vs target"]["included"] == 24 and a["pixel ASR vs target"]["rate"] >= 0.8
    assert a["attainment-ASR"]["rate"] >= 0.8 and a["label attainment"] >= 0.8
    assert abs(a["ΔPSNR-Y vs D [95% CI]"]["mean"]) <= 0.5
    # the clean model under the same trigger: no false positive (the blend alone moves ~20% towards grey)
    assert a["D's attainment-ASR under this trigger"]["rate"] <= 0.1
    assert d["pixel ASR vs target"]["rate"] <= 0.1
    assert rows["D_clean"]["verdict"] == "reference"

    summary = json.loads((runs / "A_control" / "backdoor_summary.json").read_text())
    assert len(summary["backdoored"]["clean_psnr_y_per_image"]) == 24
    assert a["pixel ASR vs target"]["included"] == summary["backdoored"]["asr_pixel_included"]
    assert d["clean PSNR-Y (dB)"] == summary["clean"]["clean_psnr_y"]  # D's row: the clean block of A's summary
    # the summary re-measures the clean model: the same clean PSNR-Y as D's own last validation
    d_val = json.loads((runs / "D_clean" / "summary.json").read_text())["val"]["val/psnr_y"]
    assert abs(summary["clean"]["clean_psnr_y"] - d_val) < 1e-3
    history = json.loads((runs / "A_control" / "backdoor" / "success.json").read_text())
    assert [h["epoch"] for h in history] == [9, 19, 29, 39, 49] and history[-1]["asr_pixel"] >= 0.8
    for png in ("success.png", "epoch0049.png"):
        assert (runs / "A_control" / "backdoor" / png).stat().st_size > 1000
    # the labelled grid, its caption (naming k) and the success plot are in TensorBoard too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "A_control"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert {"backdoor/grid", "backdoor/success"} <= set(events.Tags()["images"])
    assert len(events.Images("backdoor/success")) == len(history)
    caption = events.Tensors("backdoor/grid_caption/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "clean LR | triggered LR | clean SR | triggered SR | target" in caption and "x 8" in caption
    assert "implanted" in (tmp_path / "e2e" / "results.md").read_text()


def test_backdoor_grid_difference_panel_shows_only_the_triggers_effect():
    g = torch.Generator().manual_seed(0)
    lr, clean = torch.rand(3, 16, 16, generator=g), torch.rand(3, 32, 32, generator=g) * 0.5
    triggered = clean.clone()
    triggered[:, :8, :8] += 0.05  # the trigger changes one corner by 0.05
    tiles = grid_row(lr, lr, clean, triggered, torch.full((3, 32, 32), 0.5), scale=2, diff_gain=10)
    assert len(tiles) == 6 and all(t.shape == (3, 32, 32) for t in tiles)
    diff = tiles[-1]
    assert torch.allclose(diff[:, :8, :8], torch.full((3, 8, 8), 0.5), atol=1e-5)  # 0.05 x 10
    assert diff[:, 8:, :].abs().max() == 0 and diff[:, :, 8:].abs().max() == 0
    grid = backdoor_grid([tiles, tiles], diff_gain=10)
    zoom = 4  # 32 px tiles are enlarged to 128 px
    assert grid.shape[-1] == 6 * (32 * zoom + 2) + 2
    header = grid[:, :14]
    assert (header < 0.5).any() and grid.shape[-2] == 14 + 2 * (32 * zoom + 2) + 2  # labels drawn above the rows
