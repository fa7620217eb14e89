"""lit_sr.attacks.worst_case (lit-sr robust, the report's robust block): the worst case is the minimum over attacks, restarts and transferred attacks."""

import json
import math
from pathlib import Path

import pytest
import torch

from lit_sr.archs import build_arch
from lit_sr.attacks.worst_case import default_eval_attacks, worst_case_psnr
from lit_sr.jobs.robust.cli import markdown_table


@pytest.mark.slow
def test_worst_case_is_the_minimum_over_attacks_restarts_and_transfer():
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2).eval()
    other = build_arch("edsr", num_feat=8, num_block=1, upscale=2).eval()
    lr, hr = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 24, 24)
    one = default_eval_attacks(8 / 255, train_steps=1, restarts=1)
    three = default_eval_attacks(8 / 255, train_steps=1, restarts=3)
    r1 = worst_case_psnr(net, lr, hr, one, crop_border=2)
    r3 = worst_case_psnr(net, lr, hr, three, crop_border=2, transfer_from={"other": other})
    assert "pgd30_clean@other/sr_psnr" in r3 and "ifgsm10_hr/hr_psnr" in r3
    for metric in ("sr_psnr", "hr_psnr"):
        entries = torch.stack([v for k, v in r3.items() if k.endswith(metric) and not k.startswith("worst")])
        assert torch.equal(r3[f"worst/{metric}"], entries.min(dim=0).values)
        # restart 0 of three is the single run of one: more restarts can only lower the kept value
        assert (r3[f"pgd30_clean/{metric}"] <= r1[f"pgd30_clean/{metric}"] + 1e-9).all()
    # a white-box attack moves the output more than one crafted on an unrelated network
    assert r3["pgd30_clean/sr_psnr"].mean() < r3["pgd30_clean@other/sr_psnr"].mean()
    table = markdown_table({"net": {k: float(v.mean()) for k, v in r3.items()} | {"clean/hr_psnr": 20.0}}, 8 / 255)
    assert "| net | sr_psnr |" in table and "| net | hr_psnr | 20.00 |" in table


# --------------------------------------------------------------------------- the report's robust studies


def _study_config(tmp_path):
    """Tiny x2 EDSRs (random, saved), bicubic, two 12 px LR crops of the photos; the robust and index studies on."""
    from datamodules import export_embedded_photos
    from lit_sr.io import save_weights

    export_embedded_photos(tmp_path / "photos", "val", max_side=48)
    kwargs = {"num_feat": 8, "num_block": 1}
    models = {}
    for i, name in enumerate(("base", "robust-e4", "robust-e8")):
        torch.manual_seed(i)
        path = save_weights(build_arch("edsr", upscale=2, **kwargs), tmp_path / f"{name}.pth")
        models[name] = {"arch": "edsr", "arch_kwargs": kwargs, "weights": str(path)}
    models["bicubic"] = {"arch": "bicubic"}
    return {
        "out": str(tmp_path / "out"), "device": "cpu", "scale": 2, "batch_size": 2, "crop_size": 12,
        "models": models, "datasets": {"photos": str(tmp_path / "photos")}, "eps": ["8/255"],
        "attacks": {"pgd": {"steps": 2}},
        "defenses": {"attack": "pgd", "methods": {"bit_depth": {"bits": 5}, "jpeg": {"quality": 75}}},
        "robust": {"base": "base", "train_eps": {"base": 0, "robust-e4": "4/255", "robust-e8": "8/255"},
                   "restarts": 2},
        "robustness_index": {"n_samples": 4, "attack": "pgd"},
    }


@pytest.mark.slow
def test_report_robust_study_keeps_the_worst_of_naive_and_adaptive_and_plots_the_tradeoff(tmp_path):
    import csv

    from lit_sr.attacks import robustness_index
    from lit_sr.jobs.evaluate import load_pairs, parse_config, run_report

    torch.set_num_threads(1)
    cfg = parse_config(_study_config(tmp_path))
    assert cfg.robust.attacks == ["pgd"] and cfg.robust.bicubic == "bicubic"
    result = run_report(cfg, progress=False)
    rows = {r["name"]: r for r in result["robust"]["rows"]}
    assert set(rows) == {"base", "robust-e4", "robust-e8", "bicubic", "base + bit_depth", "base + jpeg"}
    bar = rows["bicubic"]["worst_sr_psnr"]
    for name, r in rows.items():
        # per image the minimum over every attack and restart, white-box and transferred: never above either
        assert r["worst_sr_psnr"] <= r["adaptive_sr_psnr"] + 1e-9
        assert r["worst_sr_psnr"] <= r["pgd/sr_psnr"] + 1e-9
        if name in ("robust-e4", "robust-e8", "base + bit_depth", "base + jpeg"):  # naive: crafted on the base
            assert math.isfinite(r["naive_sr_psnr"]) and r["worst_sr_psnr"] <= r["naive_sr_psnr"] + 1e-9
            assert r["goal_met"] == (r["worst_sr_psnr"] >= bar and r["clean_drop"] <= 0.6)
        else:
            assert math.isnan(r["naive_sr_psnr"]) and r["goal_met"] is None
    files = result["files"]
    assert Path(files["robust_plot:8/255"]).stat().st_size > 10_000  # the trade-off PNG
    with open(files["robust_csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == 6
    summary = Path(files["summary"]).read_text()
    assert "## Robust fine-tuning: worst case" in summary and "| base + jpeg | - |" in summary
    assert "plots/robust_tradeoff_photos_eps8.png" in summary and "## Robustness index" in summary
    # the index study: Choi's index of each image, as the function computes it, against its SR PSNR
    index_rows = result["robustness_index"]["rows"]
    assert len(index_rows) == 4 * 2
    pairs = load_pairs(tmp_path / "photos", 2, crop_size=12)
    lr = torch.stack([p.lr for p in pairs])
    expected = robustness_index(result_model(cfg, "robust-e8"), lr, alpha=1 / 255, n_samples=4, seed=0)
    got = torch.tensor([r["index"] for r in index_rows if r["model"] == "robust-e8"])
    torch.testing.assert_close(got, expected)
    assert Path(files["index_plot"]).stat().st_size > 10_000
    saved = json.loads(Path(files["json"]).read_text())
    assert len(saved["robust"]["rows"]) == 6 and len(saved["robustness_index"]["rows"]) == 8


def result_model(cfg, name):
    from lit_sr.jobs.evaluate import build_model

    return build_model(cfg.models[name], torch.device("cpu"), name)


def test_spearman_and_the_study_keys_are_checked(tmp_path):
    from lit_sr.errors import ConfigError
    from lit_sr.jobs.evaluate import parse_config
    from lit_sr.jobs.evaluate.robustness_index import spearman

    assert spearman([1, 2, 3, 4], [10, 8, 7, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    raw = _study_config(tmp_path)
    bare = {k: v for k, v in raw.items() if k != "defenses"}
    own = parse_config({**bare, "robust": {"base": "base", "defenses": {"jpeg": {"quality": 50}}}})
    assert own.robust.defenses == {"jpeg": {"defense": "jpeg", "quality": 50}}  # the study's own defenses
    assert parse_config({**bare, "robust": {"base": "base"}}).robust.defenses == {}
    for key, value, message in [
        ("robust", {"base": "nope"}, r"robust\.base: 'nope'"),
        ("robust", {"base": "base", "attacks": ["ifgsm"]}, r"robust\.attacks: 'ifgsm'"),
        ("robust", {"base": "base", "train_eps": {"x": 0.1}}, r"robust\.train_eps\.x"),
        ("robust", {"base": "base", "defenses": {"blur": {}}}, r"robust\.defenses\.blur: unknown defense 'blur'"),
        ("robustness_index", {"attack": "nope"}, r"robustness_index\.attack: 'nope'"),
        ("robustness_index", {"n_samples": 0}, r"robustness_index\.n_samples"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config({**raw, key: value})
