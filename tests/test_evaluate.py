"""The robustness report (``lit-sr evaluate``) on a tiny config, CPU.

The learnt model is a tiny EDSR x2 (16 features, 2 blocks) trained for 300 Adam steps on crops
of the embedded training photographs: a randomly initialised EDSR barely reacts to its input and
comes out *more* robust than bicubic (measured: ~57 vs ~46 dB SR PSNR at 2/255), which is not
what Choi et al. study; once it has learnt to super-resolve (it beats bicubic), it amplifies
perturbations and bicubic is the more robust "model".
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from datamodules import export_embedded_photos
from datamodules.sr import EMBEDDED_TRAIN, load_embedded_photo
from lit_sr.archs import build_arch
from lit_sr.attacks.spec import eps_label, parse_eps
from lit_sr.errors import ConfigError
from lit_sr.io import read_image, save_weights
from lit_sr.jobs.evaluate import load_config, parse_config, run_report
from lit_sr.jobs.evaluate.cli import main
from lit_sr.ops import imresize

ROOT = Path(__file__).resolve().parents[1]
EDSR_KWARGS = {"num_feat": 16, "num_block": 2, "img_range": 1.0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, trained):
    """Two exported validation photos (64 px) and the weights file of the suite's trained tiny EDSR
    (tests/conftest.py's ``trained``: 16 features, 2 blocks, img_range 1, x2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("robustness")
    export_embedded_photos(root / "photos", "val", max_side=64)
    save_weights(trained, root / "edsr_x2.pth")
    yield root
    torch.set_num_threads(threads)


def _quick_raw(assets: Path) -> dict:
    """configs/evaluate/robustness_quick.yaml pointed at the test assets, at x2 with 3-step attacks."""
    raw = yaml.safe_load((ROOT / "configs" / "evaluate" / "robustness_quick.yaml").read_text())
    raw["scale"] = 2
    raw["device"] = "cpu"
    raw["datasets"] = {"photos": str(assets / "photos")}
    raw["models"] = {
        "edsr": {"arch": "edsr", "arch_kwargs": EDSR_KWARGS, "weights": str(assets / "edsr_x2.pth")},
        "bicubic": {"arch": "bicubic"},
    }
    raw["eps"] = ["2/255", "8/255"]
    raw["attacks"] = {"ifgsm": {"steps": 3}, "partial": {"steps": 3}, "universal": {"steps": 3, "crop_size": 16}}
    return raw


@pytest.mark.slow
def test_report_writes_tables_plots_summary_and_ranks_bicubic_most_robust(assets, tmp_path):
    config_path = tmp_path / "quick.yaml"
    config_path.write_text(yaml.safe_dump(_quick_raw(assets)))
    out = tmp_path / "report"
    assert main(["--config", str(config_path), "--out", str(out), "--no-progress"]) == 0

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {(m, a, e) for m in ("edsr", "bicubic") for a in ("ifgsm", "partial", "universal") for e in (2, 8)}
    assert {(r["model"], r["attack"], round(float(r["eps_255"]))) for r in rows} == expected
    assert len(rows) == len(expected)
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == len(rows) and data["meta"]["device"] == "cpu"

    for r in rows:
        assert int(r["n_images"]) == 2 and int(r["skipped"]) == 0
        # the L_inf budget bounds the LR distortion
        assert float(r["lr_psnr"]) >= 20 * math.log10(255 / float(r["eps_255"])) - 1e-6
    cell = {(r["model"], r["attack"], round(float(r["eps_255"]))): r for r in rows}
    # the trained EDSR beats bicubic on clean images, and is less robust (Choi et al.'s finding)
    assert float(cell["edsr", "ifgsm", 2]["clean_hr_psnr"]) > float(cell["bicubic", "ifgsm", 2]["clean_hr_psnr"])
    for eps in (2, 8):
        assert float(cell["bicubic", "ifgsm", eps]["sr_psnr"]) > float(cell["edsr", "ifgsm", eps]["sr_psnr"]) + 0.5
        for model in ("edsr", "bicubic"):
            # the partial attack damages its outer region less than the full attack damages the image
            assert float(cell[model, "partial", eps]["sr_psnr"]) > float(cell[model, "ifgsm", eps]["sr_psnr"])
    # transfer at 8/255: the diagonal (white-box) is the table's own ifgsm result for each model.
    # (Off the diagonal nothing is asserted: with the HR-reference loss and 3 steps, the attack
    # made on bicubic hurts the EDSR more than the EDSR's own attack does.)
    transfer = data["transfer"]
    for i, name in enumerate(transfer["names"]):
        assert transfer["sr_psnr"][i][i] == pytest.approx(float(cell[name, "ifgsm", 8]["sr_psnr"]), abs=1e-6)
    assert len(data["defenses"]) == 2 and {d["defense"] for d in data["defenses"]} == {"resize"}

    for name in ("psnr_vs_eps_photos_ifgsm.png", "psnr_vs_eps_photos_universal.png", "transfer_photos.png"):
        image = read_image(out / "plots" / name)
        assert min(image.shape[-2:]) > 100
    summary = (out / "summary.md").read_text()
    assert "| model | clean HR PSNR | eps 2/255 | eps 8/255 |" in summary
    assert "Most to least robust (mean SR PSNR over eps): bicubic" in summary
    assert "## Transferability" in summary and "## Defenses" in summary
    assert not list(out.rglob(".*"))  # no temporary files left behind by the atomic writes


def test_shipped_configs_parse():
    for name in ("robustness_choi2019.yaml", "robustness_quick.yaml"):
        cfg = load_config(ROOT / "configs" / "evaluate" / name)
        assert "bicubic" in cfg.models and cfg.attacks
    choi = load_config(ROOT / "configs" / "evaluate" / "robustness_choi2019.yaml")
    assert [eps_label(e) for e in choi.eps] == ["eps1", "eps2", "eps4", "eps8", "eps16", "eps32"]
    assert {a.kind for a in choi.attacks} == {"ifgsm", "partial", "universal"}
    assert all(a.kwargs["steps"] == 50 for a in choi.attacks)


def _mutate(raw: dict, path: str, value) -> dict:
    node = raw
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("modles", {}, "modles"),
        ("models.edsr.wieghts", "x.pth", "wieghts"),
        ("models.edsr.arch", "edsr9", "edsr9"),
        ("attacks.ifgsm.stepz", 3, "stepz"),
        ("attacks.ifgsm.steps", 0, "steps"),
        ("attacks.fgsm", {}, "fgsm"),
        ("eps", ["8/0"], "8/0"),
        ("eps", [0.5, 2.0], r"eps\[1\]"),
        ("transfer", {"dataset": "Set5"}, "Set5"),
        ("defenses.methods", {"blur": {}}, "blur"),
        ("batch_size", 0, "batch_size"),
    ],
)
def test_bad_config_keys_raise_naming_the_key(assets, path, value, match):
    raw = _mutate(_quick_raw(assets), path, value)
    with pytest.raises(ConfigError, match=match):
        parse_config(raw, source="quick.yaml")


def test_missing_files_and_weights_fail_before_any_compute(assets, tmp_path, capsys):
    raw = _quick_raw(assets)
    raw["models"]["edsr"]["weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        run_report(parse_config(raw), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    del raw["models"]["edsr"]["weights"]
    with pytest.raises(ConfigError, match="weights is required"):
        run_report(parse_config(raw), tmp_path / "out", progress=False)

    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(_mutate(_quick_raw(assets), "datasets.photos", str(tmp_path / "nowhere"))))
    assert main(["--config", str(config_path), "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eps_strings_and_labels():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps(0.5) == 0.5
    assert eps_label(8 / 255) == "eps8" and eps_label(0.01) == "eps2.55"
    with pytest.raises(ConfigError, match="eps"):
        parse_eps("eight")


# --------------------------------------------------------------------------- the command line (jsonargparse)


def test_cli_weights_override_replaces_a_missing_path_and_keeps_the_entry(assets, tmp_path, capsys):
    """``--models.<name>.weights PATH`` (issue 14: "unrecognized arguments") sets one key of one model."""
    raw = _quick_raw(assets)
    raw["models"]["edsr"]["weights"] = str(tmp_path / "not_there.pth")
    config_path = tmp_path / "quick.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    fast = ["--max_images", "1", "--attacks", "{ifgsm: {steps: 1}}", "--eps", "[8/255]", "--transfer", "null",
            "--defenses", "null", "--no-progress"]

    assert main(["--config", str(config_path), "--out", str(tmp_path / "no"), *fast]) == 2
    assert "models.edsr.weights" in capsys.readouterr().err and not (tmp_path / "no").exists()

    out = tmp_path / "report"
    weights = str(assets / "edsr_x2.pth")
    assert main(["--config", str(config_path), "--models.edsr.weights", weights, "--out", str(out), *fast]) == 0
    data = json.loads((out / "results.json").read_text())
    model = data["config"]["models"]["edsr"]
    # the override set the path and kept the rest of the entry from the file
    assert model["weights"] == weights and model["arch_kwargs"] == EDSR_KWARGS
    assert {(r["model"], r["attack"], r["n_images"]) for r in data["rows"]} == {("edsr", "ifgsm", 1), ("bicubic", "ifgsm", 1)}
    assert data["transfer"] is None and data["defenses"] == []


def test_shipped_quick_config_takes_the_issue_14_override(tmp_path):
    cfg = load_config(ROOT / "configs" / "evaluate" / "robustness_quick.yaml",
                      ["--models.EDSR-quickstart.weights", str(tmp_path / "w.pth"), "--max_images", "1"])
    spec = cfg.models["EDSR-quickstart"]
    assert spec.weights == str(tmp_path / "w.pth") and spec.arch_kwargs == {"num_feat": 32, "num_block": 4}
    assert cfg.max_images == 1 and cfg.raw["models"]["EDSR-quickstart"]["weights"] == str(tmp_path / "w.pth")
    # a whole mapping on the command line replaces that one entry (the other attacks stay)
    cfg = load_config(ROOT / "configs" / "evaluate" / "robustness_quick.yaml", ["--attacks.ifgsm", "{steps: 2}", "--transfer.eps", "2/255"])
    assert {a.label: a.kwargs.get("steps") for a in cfg.attacks} == {"ifgsm": 2, "partial": 10, "universal": 10}
    assert eps_label(cfg.transfer.eps) == "eps2" and cfg.transfer.attack == "ifgsm"
    # a key inside a mapping sets that key alone: the rest of the entry and the other entries stay
    cfg = load_config(ROOT / "configs" / "evaluate" / "robustness_quick.yaml",
                      ["--attacks.universal.steps", "3", "--models.EDSR-quickstart.arch_kwargs.num_feat", "8"])
    assert {a.label: (a.kwargs["steps"], a.kwargs.get("crop_size")) for a in cfg.attacks} == {
        "ifgsm": (10, None), "partial": (10, None), "universal": (3, 32)}
    assert cfg.models["EDSR-quickstart"].arch_kwargs == {"num_feat": 8, "num_block": 4}
    assert cfg.models["EDSR-quickstart"].weights == "runs/quickstart/quickstart/weights.pth"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["--models.EDSR-quickstart.weigths", "x.pth"], r"--models\.EDSR-quickstart\.weigths: unknown key"),
        (["--models.EDSR-quickstart.strict", "maybe"], r"--models\.EDSR-quickstart\.strict: .*maybe"),
        (["--attacks.ifgsm.steps", "0"], r"attacks\.ifgsm.*steps"),
        (["--attacks.ifgsm.stepz", "3"], r"attacks\.ifgsm.*stepz"),
        (["--transfer.epz", "0.1"], r"--transfer\.epz: unknown key"),
        (["--transfer.eps", "2"], r"transfer\.eps"),
        (["--autocast", "fp16"], "autocast"),
        (["--max_images", "0"], "max_images"),
        (["--defenses.attack", "universal"], r"defenses\.attack: 'universal' is a universal attack"),
    ],
)
def test_bad_command_line_overrides_name_the_dotted_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs" / "evaluate" / "robustness_quick.yaml", overrides)


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("models.edsr.wieghts", "x.pth", r"models\.edsr\.wieghts: unknown key"),
        ("models.edsr.strict", "maybe", r"models\.edsr\.strict: .*maybe"),
        ("models.edsr.scale", 0, r"models\.edsr\.scale"),
        ("transfer.epz", 1, r"transfer\.epz: unknown key"),
        ("defenses.methods.resize", {"shrink": 1, "defence": "jpeg"}, r"defenses\.methods\.resize.*defence"),
        ("autocast", False, "autocast"),
    ],
)
def test_bad_yaml_keys_and_values_name_the_dotted_key(assets, tmp_path, path, value, match):
    raw = _mutate(_quick_raw(assets), path, value)
    with pytest.raises(ConfigError, match=match):
        parse_config(raw, source="quick.yaml")
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"bad.yaml: .*{match}"):
        load_config(config_path)


def test_make_robustness_trains_where_the_report_reads():
    """``make robustness`` (dry run): the data folder, the training's weights path and the report's agree."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.fail("make is not installed; the robustness target cannot be checked")
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "robustness"], capture_output=True, text=True, check=True)
    commands = dry.stdout.replace("\\\n", " ")
    train = next(line for line in commands.splitlines() if "train.py fit" in line)
    report = next(line for line in commands.splitlines() if "-m lit_sr evaluate" in line)
    export = next(line for line in commands.splitlines() if "export_embedded_photos" in line)
    version = train.split("--trainer.logger.init_args.version")[1].split()[0]
    logger = yaml.safe_load((ROOT / "configs" / "train" / "quickstart.yaml").read_text())["trainer"]["logger"]["init_args"]
    trained = f"{logger['save_dir']}/{logger['name']}/{version}/weights.pth"
    assert f"test -f {trained} ||" in train
    assert f"--models.EDSR-quickstart.weights {trained}" in report
    quick = yaml.safe_load((ROOT / "configs" / "evaluate" / "robustness_quick.yaml").read_text())
    assert quick["models"]["EDSR-quickstart"]["weights"] == trained  # the documented one-liner needs no override
    assert f"'{quick['datasets']['photos']}'" in export


def test_one_make_lr_for_the_datasets_and_the_report(tmp_path):
    """The report's image pairs and the data modules' pairs come from lit_sr.ops.make_lr, bit for bit."""
    from datamodules import ImageRecord, SRPairDataset
    from lit_sr.io import write_image
    from lit_sr.jobs.evaluate import load_pairs
    from lit_sr.ops import make_lr, mod_crop

    photo = load_embedded_photo(EMBEDDED_TRAIN[0], 64)[:, :41, :54]  # sizes that are not multiples of 4
    path = write_image(photo, tmp_path / "photos" / "odd.png")
    hr_file = read_image(path)
    lr, hr = make_lr(hr_file, 4)
    assert hr.shape[-2:] == (40, 52) and lr.shape[-2:] == (10, 13)
    assert torch.equal(hr, mod_crop(hr_file, 4))
    assert torch.equal(lr * 255, (lr * 255).round()) and 0 <= lr.min() and lr.max() <= 1  # 8-bit, as a file holds
    # MATLAB bicubic of the mod-cropped image, then quantised: close to the unquantised resize, not equal
    exact = imresize(hr, 1 / 4).clamp(0, 1)
    assert (lr - exact).abs().max() <= 0.5 / 255 + 1e-6 and not torch.equal(lr, exact)

    ds_lr, ds_hr = SRPairDataset([ImageRecord(name="odd", hr_path=path)], scale=4).load_pair(0)
    (pair,) = load_pairs(tmp_path / "photos", 4)
    assert torch.equal(ds_lr, lr) and torch.equal(ds_hr, hr)
    assert torch.equal(pair.lr, lr) and torch.equal(pair.hr, hr)
    with pytest.raises(ValueError, match="smaller than the scale"):
        make_lr(hr_file[:, :3, :3], 4)


def test_attack_runner_takes_the_one_autocast_spelling():
    from lit_sr.attacks.spec import AttackRunner, parse_attacks

    torch.manual_seed(0)
    net = build_arch("edsr", upscale=2, num_feat=8, num_block=1, img_range=1.0).eval()
    seen: list[torch.dtype] = []
    net.conv_first.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    lr = torch.rand(2, 3, 12, 12)
    hr = torch.rand(2, 3, 24, 24)
    (spec,) = parse_attacks({"ifgsm": {"steps": 2}})
    (per_attack,) = parse_attacks({"ifgsm": {"steps": 2, "autocast": "bf16"}})  # the same spelling inside a block
    cases = [(AttackRunner(spec, net, 4 / 255), torch.float32),
             (AttackRunner(spec, net, 4 / 255, autocast="bf16"), torch.bfloat16),
             (AttackRunner(per_attack, net, 4 / 255), torch.bfloat16)]
    for runner, dtype in cases:
        seen.clear()
        adv = runner.attack(lr, hr=hr)  # the attack's own forward passes, under its autocast
        assert seen and set(seen) == {dtype}
        _, metrics = runner.run(lr, hr)
        assert (adv - lr).abs().max() <= 4 / 255 + 1e-6 and metrics["sr_psnr"].dtype == torch.float64
    with pytest.raises(ValueError, match="AttackRunner.autocast"):
        AttackRunner(spec, net, 4 / 255, autocast=False)
