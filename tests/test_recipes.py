"""The recipe configs: each parses with LightningCLI (--print_config), builds the published network,
and its hyper-parameters are consistent (milestones inside the run, patch sizes that fit the network).

Models are instantiated with random weights (ESRGAN without its RRDB initialisation and with a random
VGG); no data is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_sr.archs import count_parameters

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"
# Recipe -> the parameter count of the network it must build (published configurations, x4).
RECIPES = {
    "edsr_x4_div2k": 1_517_571,
    "rcan_x4_div2k": 15_592_355,
    "rrdb_x4_div2k": 16_697_987,
    "esrgan_x4_div2k": 16_697_987,
    "swinir_x4_div2k": 11_900_199,
    "carn_x4_div2k": 1_111_875,
}


def load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", [*RECIPES, "quickstart"])
def test_print_config_parses(name, capsys):
    from train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == load(name)["model"]["class_path"]


def test_print_config_rejects_a_misspelt_argument(tmp_path):
    from train import main

    cfg = load("rcan_x4_div2k")
    cfg["model"]["init_args"]["milestone"] = cfg["model"]["init_args"].pop("milestones")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code not in (0, None)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_builds_the_published_network(name):
    from train import main

    overrides = ["--trainer.logger", "false"]
    if name == "esrgan_x4_div2k":  # no RRDB checkpoint or VGG file in tests
        overrides += ["--model.init_args.pretrained", "null", "--model.init_args.perceptual_pretrained", "false"]
    cli = main(["--config", str(CONFIGS / f"{name}.yaml"), *overrides], run=False)
    assert count_parameters(cli.model.net) == RECIPES[name]
    cfg = load(name)
    assert cli.trainer.max_steps == cfg["trainer"]["max_steps"]
    assert cli.model.hparams.lr == cfg["model"]["init_args"]["lr"]


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_hyperparameters_are_consistent(name):
    cfg = load(name)
    model, data, trainer = cfg["model"]["init_args"], cfg["data"]["init_args"], cfg["trainer"]
    assert model["scale"] == data["scale"] == 4
    assert data["patch_size"] % data["scale"] == 0
    assert model["milestones"] == sorted(model["milestones"])
    assert 0 < model["milestones"][-1] < trainer["max_steps"]
    assert trainer["precision"] == "bf16-mixed" and trainer["devices"] == "auto"
    for split in ("train", "val"):
        assert data[f"{split}_hr"].startswith("/data/DIV2K/")
    assert set(data["test_sets"]) == {"Set5", "Set14", "BSD100", "Urban100"}
    callbacks = {c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]}
    assert {"LearningRateMonitor", "ModelCheckpoint", "SRImageLogger", "RunSummary"} <= callbacks
    arch_kwargs = model.get("arch_kwargs", {})
    if model["arch"] == "swinir":  # the LR patch is the size the attention masks are built for
        assert data["patch_size"] // data["scale"] == arch_kwargs["img_size"]
        assert arch_kwargs["img_size"] % arch_kwargs["window_size"] == 0
    if name == "esrgan_x4_div2k":
        # The VGG discriminator sees the whole HR patch; two backward passes need find_unused_parameters.
        assert data["patch_size"] == model["discriminator_kwargs"]["input_size"]
        assert trainer["strategy"] == "ddp_find_unused_parameters_true"
    else:
        assert trainer["strategy"] == "ddp"


@pytest.mark.parametrize("name", [*RECIPES, "quickstart"])
def test_recipe_keeps_the_last_state_and_the_best_apart(name):
    # ModelCheckpoint(monitor, save_last) rewrites last.ckpt only on improvement (Lightning 2.6).
    entries = load(name)["trainer"]["callbacks"]
    kinds = [e["class_path"].rsplit(".", 1)[-1] for e in entries]
    assert kinds.count("LastCheckpoint") == 1 and kinds.count("ModelCheckpoint") == 1
    best = entries[kinds.index("ModelCheckpoint")]["init_args"]
    assert best["monitor"] == "val/psnr_y" and not best.get("save_last") and best["filename"] == "best"
    assert kinds.index("ModelCheckpoint") < kinds.index("LastCheckpoint")  # ckpt_path="best" uses the first


def test_a_missing_vgg_file_is_reported_first_with_its_name(tmp_path):
    from train import main

    missing = tmp_path / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FileNotFoundError) as error:
        main(["--config", str(CONFIGS / "esrgan_x4_div2k.yaml"), "--trainer.logger", "false",
              "--model.init_args.pretrained", "null", "--model.init_args.vgg_weights_path", str(missing)], run=False)
    message = str(error.value)
    assert message.startswith("VGG weights") and str(missing) in message.splitlines()[0]
    assert "Union subtypes" not in message.splitlines()[0]


def test_explicit_model_keys_reads_both_argument_forms():
    from lit_sr.jobs.train.cli import explicit_model_keys

    argv = ["fit", "--config", "a.yaml", "--model.init_args.lr=0.1", "--model.tile", "8", "--trainer.max_epochs", "3",
            "--model.init_args.lr", "0.2"]
    assert explicit_model_keys(argv) == ["model.init_args.lr", "model.tile"]
