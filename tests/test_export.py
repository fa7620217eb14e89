"""Exports that leave lit-sr: a poisoned training set as BasicSR-style PNG folders (round trip: export, train
from the folders, the same pairs as the poison cache) and adversarial examples as PNG with their metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from datamodules import DIV2KDataModule, EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.io import read_image, sha256_file
from lit_sr.jobs.data.cli import main as data_main
from lit_sr.modules import SRModule
from lit_sr.poison.export import export_poisoned


def _base() -> EmbeddedPhotosDataModule:
    return EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=64,
                                    max_val_images=2, num_workers=0)


def _poisoned(tmp_path: Path, quantize: bool) -> PoisonedSRDataModule:
    dm = PoisonedSRDataModule(_base(), trigger={"name": "blend"}, poison_rate=0.4, target="coffee",
                              cache_dir=str(tmp_path / "cache"), seed=0, generation_batch_size=4,
                              generation_device="cpu", quantize=quantize)
    dm.setup("fit")
    return dm


def _eight_bit(x: torch.Tensor) -> torch.Tensor:
    """What a PNG keeps of a [0, 1] float image: the nearest 8-bit value."""
    return (x.float().clamp(0, 1) * 255).round() / 255


@pytest.mark.parametrize("quantize", [True, False])
def test_export_then_a_paired_folder_run_sees_the_cache_pairs(tmp_path, quantize):
    dm = _poisoned(tmp_path, quantize)
    manifest_path = export_poisoned(dm, tmp_path / "export")
    manifest = json.loads(manifest_path.read_text())
    poisoned = dm.poisoned_indices
    assert manifest["poisoned_indices"] == poisoned and len(poisoned) >= 1
    assert manifest["trigger"]["name"] == "blend" and manifest["label"] == "target"
    assert manifest["rounded_to_8bit"] is (not quantize)  # a float cache is rounded; an 8-bit one is exact
    for record in manifest["records"]:
        assert sha256_file(tmp_path / "export" / "hr" / f"{record['name']}.png") == record["hr_sha256"]
    # lit-sr's paired-folder data module (BasicSR layout: same names in hr/ and lr_x2/) reads the export
    folders = DIV2KDataModule(train_hr=str(tmp_path / "export" / "hr"), train_lr=str(tmp_path / "export" / "lr_x2"),
                              val_hr=str(tmp_path / "export" / "hr"), val_lr=str(tmp_path / "export" / "lr_x2"),
                              scale=2, patch_size=32, batch_size=4, num_workers=0, max_val_images=1)
    folders.setup("fit")
    train = dm.base.train_dataset
    assert len(folders.train_dataset.records) == len(train.records)
    for i in range(len(train.records)):
        lr, hr = folders.train_dataset.load_pair(i)
        want_lr, want_hr = dm.poisoned_pair(i) if i in poisoned else train.load_pair(i)
        assert torch.equal(lr, _eight_bit(want_lr)) and torch.equal(hr, _eight_bit(want_hr)), i
        if i in poisoned:
            assert not torch.equal(hr, _eight_bit(train.load_pair(i)[1]))  # the poisoned HR, not the clean one
    # and a plain run trains on the folders
    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3, scheduler="none",
                      export_weights=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=folders)
    assert trainer.global_step == 1


def test_export_refuses_to_overwrite_and_the_command_exports_a_run_s_final_set(tmp_path, capsys):
    dm = _poisoned(tmp_path, True)
    export_poisoned(dm, tmp_path / "export")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_poisoned(dm, tmp_path / "export")
    config = {"data": {"class_path": "datamodules.PoisonedSRDataModule", "init_args": {
        "base": {"class_path": "datamodules.EmbeddedPhotosDataModule",
                 "init_args": {"scale": 2, "patch_size": 32, "batch_size": 4, "max_side": 64, "max_val_images": 2,
                               "num_workers": 0}},
        "trigger": {"class_path": "lit_sr.poison.Blend"}, "poison_rate": 0.4, "target": "coffee",
        "cache_dir": str(tmp_path / "cache2"), "generation_device": "cpu"}}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    pool = dm.candidate_indices
    summary = {"config": {"poisoned_indices": [pool[-1]]}}  # what a selection callback left, in a run summary
    (tmp_path / "backdoor_summary.json").write_text(json.dumps(summary))
    rc = data_main(["export-poisoned", "--training_config", str(tmp_path / "train.yaml"), "--out_dir", str(tmp_path / "cli"),
                    "--indices", str(tmp_path / "backdoor_summary.json")])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["poisoned_indices"] == [pool[-1]]
    assert [r["index"] for r in manifest["records"] if r["poisoned"]] == [pool[-1]]
    assert "1 poisoned" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"config": {}}')
    assert data_main(["export-poisoned", "--training_config", str(tmp_path / "train.yaml"), "--out_dir",
                      str(tmp_path / "cli2"), "--indices", str(tmp_path / "bad.json")]) == 2
    assert "config.poisoned_indices" in capsys.readouterr().err


def test_save_adversarial_writes_lossless_pngs_and_the_metrics_of_the_written_files(tmp_path, small_photos):
    from torch.utils.data import DataLoader

    from lit_sr.archs import build_arch
    from lit_sr.attacks import IFGSM
    from lit_sr.attacks.export import save_adversarial
    from lit_sr.metrics import psnr
    from lit_sr.ops import imresize

    hr = torch.stack([p[:, :32, :32] for p in small_photos[:3]])
    lr = _eight_bit(imresize(hr, 0.5).clamp(0, 1))
    batches = [{"lr": lr[i : i + 2], "hr": hr[i : i + 2], "index": torch.arange(i, min(i + 2, 3)),
                "path": [f"img{k}.png" for k in range(i, min(i + 2, 3))]} for i in (0, 2)]
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2, img_range=1.0)  # random weights: plumbing only
    attack = IFGSM(net, eps=8 / 255, steps=5, reference="hr")
    out = save_adversarial(attack, DataLoader(batches, batch_size=None), tmp_path / "adv", scale=2)
    rows = list(csv.DictReader(open(out)))
    assert [r["name"] for r in rows] == ["img0", "img1", "img2"]
    for k, row in enumerate(rows):
        adv = read_image(tmp_path / "adv" / "lr" / f"{row['name']}.png")
        assert (adv - lr[k]).abs().max() <= 8 / 255 + 1e-6  # still within eps after the 8-bit rounding
        assert float(row["lr_psnr"]) == pytest.approx(float(psnr(adv[None], lr[k : k + 1], y_channel=True)[0]), abs=1e-3)
        assert float(row["sr_psnr"]) < 60  # the written example still moves the output
        assert row["attack"] == "ifgsm" and float(row["eps"]) == pytest.approx(8 / 255)


def test_the_robustness_report_keeps_its_adversarial_examples_when_asked(tmp_path):
    from datamodules import export_embedded_photos
    from lit_sr.archs import build_arch
    from lit_sr.io import save_weights
    from lit_sr.jobs.evaluate import parse_config, run_report

    export_embedded_photos(tmp_path / "photos", "val", max_side=48)
    torch.manual_seed(0)
    save_weights(build_arch("edsr", num_feat=8, num_block=1, upscale=2, img_range=1.0), tmp_path / "edsr.pth")
    raw = {"models": {"edsr": {"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1, "img_range": 1.0},
                               "weights": str(tmp_path / "edsr.pth")}},
           "datasets": {"photos": str(tmp_path / "photos")}, "attacks": {"ifgsm": {"steps": 2}},
           "eps": ["8/255"], "scale": 2, "device": "cpu", "out": str(tmp_path / "report")}
    cfg = parse_config({**raw, "save_adversarial": True})
    result = run_report(cfg, progress=False)
    folder = tmp_path / "report" / "adversarial" / "edsr" / "photos" / "ifgsm" / "eps8"
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert len(rows) == result["rows"][0]["n_images"] == 2
    names = sorted(p.stem for p in (tmp_path / "photos").iterdir())
    assert sorted(r["name"] for r in rows) == names
    for row in rows:
        adv = read_image(folder / "lr" / f"{row['name']}.png")
        assert 0 < float(row["linf_255"]) <= 8 + 0.5  # the file moved, within eps up to the 8-bit rounding
        assert adv.shape[0] == 3
    # the per-image metrics are those whose mean is the report's row
    mean = sum(float(r["sr_psnr"]) for r in rows) / len(rows)
    assert mean == pytest.approx(result["rows"][0]["sr_psnr"], abs=1e-4)
    with pytest.raises(Exception, match="save_adversarial"):
        parse_config({**raw, "save_adversarial": "sometimes"})
