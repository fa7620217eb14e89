"""Downstream columns of the robustness report on a tiny config: equal to the classifier run by hand, CSV and summary."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torchvision

from datamodules.shapes import export_shapes
from lit_sr.attacks.spec import AttackRunner
from lit_sr.downstream import DownstreamClassifier
from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate import parse_config, run_report
from lit_sr.jobs.evaluate.downstream import DOWNSTREAM_FIELDS
from lit_sr.jobs.evaluate.runner import build_model, load_pairs


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream_report")
    export_shapes(str(root / "shapes"), "val", count=6, hr_size=32, min_radius=6, max_radius=14, max_objects=2)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=6).state_dict(), root / "resnet18-shapes.pth")
    return root


def raw_config(root, **downstream):
    return {
        "models": {"bicubic": {"arch": "bicubic"}},
        "datasets": {"shapes": str(root / "shapes")},
        "attacks": {"ifgsm": {"steps": 2}},
        "eps": ["4/255", "16/255"],
        "scale": 2, "device": "cpu", "batch_size": 4, "out": str(root / "out"),
        "downstream": {"classifier": {"arch": "resnet18", "num_classes": 6, "input_size": 32,
                                      "weights": str(root / "resnet18-shapes.pth")}, **downstream},
    }


def test_export_writes_images_and_exact_labels(assets):
    labels = json.loads((assets / "shapes" / "labels.json").read_text())
    assert len(labels["images"]) == 6 and labels["class_names"][1] == "cool_circle"
    for entry in labels["images"].values():
        assert len(entry["boxes"]) == len(entry["labels"]) >= 1 and entry["label"] in entry["labels"]


def test_downstream_columns_equal_the_classifier_run_by_hand(assets):
    cfg = parse_config(raw_config(assets))
    result = run_report(cfg, progress=False)
    classifier = DownstreamClassifier("resnet18", 6, weights=str(assets / "resnet18-shapes.pth"), input_size=32).eval()
    model = build_model(cfg.models["bicubic"], torch.device("cpu"))
    pairs = load_pairs(assets / "shapes", 2)
    names = json.loads((assets / "shapes" / "labels.json").read_text())["images"]
    labels = torch.tensor([names[p.name]["label"] for p in pairs])
    lr, hr = torch.stack([p.lr for p in pairs]), torch.stack([p.hr for p in pairs])
    with torch.no_grad():
        hr_pred = classifier(hr).argmax(1)
        clean_pred = classifier(model(lr).clamp(0, 1)).argmax(1)
    for row in result["rows"]:
        assert set(DOWNSTREAM_FIELDS[:4]) <= set(row)
        adv, _ = AttackRunner(cfg.attacks[0], model, row["eps"], seed=cfg.seed, batch_size=4).run(lr[:4], hr[:4])
        adv2, _ = AttackRunner(cfg.attacks[0], model, row["eps"], seed=cfg.seed, batch_size=4).run(lr[4:], hr[4:])
        with torch.no_grad():
            adv_pred = classifier(model(torch.cat([adv, adv2])).clamp(0, 1)).argmax(1)
        assert row["down_hr_top1"] == pytest.approx(float((hr_pred == labels).double().mean()))
        assert row["down_clean_top1"] == pytest.approx(float((clean_pred == labels).double().mean()))
        assert row["down_top1"] == pytest.approx(float((adv_pred == labels).double().mean()))
        assert row["down_agreement"] == pytest.approx(float((adv_pred == hr_pred).double().mean()))
    with open(result["files"]["csv"]) as handle:
        header = next(csv.reader(handle))
    assert "down_top1" in header and "down_map_50" in header
    summary = (assets / "out" / "summary.md").read_text()
    assert "## Downstream models on the SR outputs" in summary and "### shapes: ifgsm, top-1" in summary


@pytest.mark.slow
def test_detector_columns_and_named_errors(assets):
    detector = {"random_init": True, "num_classes": 7, "min_size": 32, "max_size": 32, "score_thresh": 0.0,
                "box_batch_size_per_image": 16}
    raw = raw_config(assets, detector=detector)
    raw["eps"] = ["8/255"]
    row = run_report(parse_config(raw), out_dir=assets / "out_det", progress=False)["rows"][0]
    for key in ("down_hr_map_50", "down_clean_map_50", "down_map_50", "down_map"):
        assert 0.0 <= row[key] <= 1.0
    assert row["down_vanished"] >= 0 and row["down_hallucinated"] >= 0
    with pytest.raises(ConfigError, match="crop_size must be null"):
        parse_config({**raw, "crop_size": 8})
    with pytest.raises(ConfigError, match=r"downstream.classifier: unknown argument\(s\) \['weigths'\]"):
        parse_config({**raw, "downstream": {"classifier": {"arch": "resnet18", "weigths": "x"}}})
    with pytest.raises(ConfigError, match="downstream.labels: 'other'"):
        parse_config({**raw, "downstream": {**raw["downstream"], "labels": {"other": "x.json"}}})
    missing = raw_config(assets, labels={"shapes": str(assets / "nowhere.json")})
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        run_report(parse_config(missing), out_dir=assets / "out_missing", progress=False)
