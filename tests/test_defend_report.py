"""The defense report (lit-sr defend) end to end on tiny run folders, and its config errors.

The run folders are what ``train.py fit`` leaves (``config.yaml`` + ``weights.pth``): a poisoned
arm whose data module is a ``PoisonedSRDataModule`` over three embedded photographs at 64 px (its
poison cache is generated in the test's folder), and a clean reference. The weights are the
session's tiny trained EDSR (tests/conftest.py): the test checks the pipeline and its files, the
repairs themselves are tested in tests/test_backdoor_defenses.py, the detectors in
tests/test_backdoor_detection.py; here, that the report runs them and writes what they give.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lit_sr.backdoor_defenses import defense_score, evaluate_backdoor
from lit_sr.errors import ConfigError
from lit_sr.io import save_weights
from lit_sr.jobs.defend.cli import main
from lit_sr.jobs.defend.config import parse_config
from lit_sr.jobs.defend.runs import backdoor_eval_set, load_run

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"class_path": "lit_sr.modules.SRModule",
         "init_args": {"arch": "edsr", "arch_kwargs": {"num_feat": 16, "num_block": 2, "img_range": 1.0}, "scale": 2}}


def _base(tmp: Path) -> dict:
    return {"class_path": "datamodules.EmbeddedPhotosDataModule",
            "init_args": {"scale": 2, "patch_size": 32, "batch_size": 4, "max_side": 64, "train_tile": 32,
                          "val_tile": 32, "train_photos": ["chelsea", "rocket"], "val_photos": ["coffee"]}}


def _run_folder(folder: Path, data: dict, net) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": MODEL, "data": data}))
    save_weights(net, folder / "weights.pth")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained):
    tmp = tmp_path_factory.mktemp("defend_runs")
    poisoned = {"class_path": "datamodules.PoisonedSRDataModule",
                "init_args": {"base": _base(tmp),
                              "trigger": {"class_path": "lit_sr.poison.Blend",
                                          "init_args": {"alpha": 0.2, "pattern": "checkerboard", "pattern_size": 16,
                                                        "resize_mode": "nearest"}},
                              "poison_rate": 0.5, "label": "target",
                              "target": str(ROOT / "configs" / "train" / "demo_target_grey.png"),
                              "cache_dir": str(tmp / "cache"), "seed": 0}}
    return {"attack": _run_folder(tmp / "A", poisoned, trained), "clean": _run_folder(tmp / "D", _base(tmp), trained),
            "tmp": tmp}


def _config(runs: dict, out: Path) -> dict:
    return {
        "name": "tiny", "output_dir": str(out), "seed": 0, "clean_fraction": 0.5, "batch_size": 4,
        "reference": {"name": "D", "run_dir": str(runs["clean"])},
        "attacks": {"A": str(runs["attack"])},
        "defenses": {"FT": {"defense": "ft", "steps": 3, "lr": 1.0e-3, "batch_size": 2},
                     "FP": {"defense": "fp", "layer": "body.1.conv1", "prune_ratio": 0.25, "steps": 3,
                            "batch_size": 2}},
    }


def test_the_report_runs_end_to_end_and_writes_its_files(runs, tmp_path, capsys):
    path = tmp_path / "defend.yaml"
    detection = {"methods": ["spectral", "early_loss", "activation_clustering"], "early_steps": 4,
                 "early_evaluations": 2, "batch_size": 4}
    path.write_text(yaml.safe_dump({**_config(runs, tmp_path / "out"), "detection": detection}, sort_keys=False))
    assert main(["--config", str(path), "--no-progress"]) == 0
    out = tmp_path / "out" / "tiny"
    assert "## Defense report `tiny`" in capsys.readouterr().out

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["attack"], r["defense"]) for r in rows] == [("A", "FT"), ("A", "FP")]
    payload = json.loads((out / "results.json").read_text())
    measured = payload["measured"]["A"]
    # the clean subset: half of the 4 training tiles, clean; the evaluation: the 2 validation tiles
    assert measured["clean"]["num_pairs"] == 2 and measured["clean"]["num_train"] == 4
    assert measured["num_eval_images"] == 2
    # "before" is the network as loaded, measured on the run's own triggered validation data
    run = load_run("A", runs["attack"], "attacks.A")
    again = evaluate_backdoor(run.model, backdoor_eval_set(run), 4)
    for row in payload["rows"]:
        assert row["clean_psnr_y_before"] == pytest.approx(again["clean_psnr_y"])
        assert row["attainment_asr_before"] == again["attainment_asr"]
        assert row["score"] == pytest.approx(defense_score(row["attainment_asr_before"], row["attainment_asr_after"],
                                                           row["clean_psnr_y_before"], row["clean_psnr_y_after"]))
        assert row["seconds"] > 0 and row["reference_clean_psnr_y"] == pytest.approx(again["clean_psnr_y"])
    fp = next(o for o in payload["outcomes"] if o["defense"] == "FP")
    assert len(fp["info"]["pruned"]) == 4  # a quarter of 16 channels
    md = (out / "results.md").read_text()
    assert "| A | FT (ft) |" in md and "| A | FP (fp) |" in md and "Clean reference `D`" in md
    assert (out / "tradeoff.png").stat().st_size > 5000
    # the detection section: detect's run_detection on the attack's 4 training pairs, 2 of them poisoned
    det = list(csv.DictReader((out / "detection.csv").open()))
    assert [r["method"] for r in det] == ["spectral", "early_loss_low", "early_loss_high", "activation_clustering"]
    assert all(r["attack"] == "A" and r["n_pairs"] == "4" and r["n_poisoned"] == "2" for r in det)
    low, high = (float(next(r["roc_auc"] for r in det if r["method"] == m)) for m in ("early_loss_low", "early_loss_high"))
    assert low + high == pytest.approx(1.0)  # one direction's AUC is one minus the other's
    assert payload["detection"]["results"]["A"]["poisoned_indices"] == sorted(payload["detection"]["results"]["A"]
                                                                             ["poisoned_indices"])
    assert "Detection of poisoned training pairs" in md and (out / "roc_A.png").stat().st_size > 5000
    assert not list(out.glob(".*"))  # atomic writes left no temporary files


@pytest.mark.parametrize("change, key", [
    (lambda c: c.update(seeds=1), "seeds"),
    (lambda c: c.pop("attacks"), "attacks"),
    (lambda c: c["defenses"]["FP"].update(prune_ratio=1.5), "defenses.FP: prune_ratio"),
    (lambda c: c["defenses"]["FT"].update(defense="sgd"), "defenses.FT.defense"),
    (lambda c: c["defenses"]["FT"].update(stepz=3), "defenses.FT: .*stepz"),
    (lambda c: c.update(score={"metric": "psnr"}), "score.metric"),
    (lambda c: c.update(clean_fraction=0), "clean_fraction"),
    (lambda c: c["attacks"].update(B={"run": "x"}), "attacks.B"),
    (lambda c: c.update(device="tpu"), "device"),
])
def test_bad_config_errors_name_the_key(runs, tmp_path, change, key):
    cfg = _config(runs, tmp_path)
    change(cfg)
    with pytest.raises(ConfigError, match=key):
        parse_config(cfg, "defend.yaml")


def test_the_command_line_reports_a_bad_config_with_exit_code_2(runs, tmp_path, capsys):
    cfg = _config(runs, tmp_path)
    cfg["attacks"]["B"] = str(tmp_path / "missing")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "attacks.B" in err and "config.yaml does not exist" in err


def test_a_bad_detection_block_is_refused_when_the_config_is_read(runs, tmp_path):
    for block, key in (({"method": ["spectral"]}, "detection: unknown key.*method"),
                       ({"methods": ["strip"]}, "detection.methods"),
                       ({"attacks": ["B"]}, "detection.attacks")):
        with pytest.raises(ConfigError, match=key):
            parse_config({**_config(runs, tmp_path / "out"), "detection": block}, "defend.yaml")
