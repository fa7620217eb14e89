"""The commands and snippets of the README and the guide (docs/*.md), run as documented (small overrides),
and what the text says they produce.

The commands are parsed from the fenced blocks of README.md and every docs/*.md page, so a changed
page changes the test:
every ``bash`` command must match exactly one entry of ``HANDLERS`` (run and checked here) or of
``EXCLUDED`` (with the reason it is not run here); every ``python`` / ``yaml`` block must match a
snippet handler; a block in another language, or a handler that matches nothing, fails. One tiny
quickstart training (the README's own ``fit`` command with a few steps) is shared by the checks that
need a trained run. Networks are randomly initialised or trained for a few steps.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the README and the guide's pages
TEXT = "\n\n".join(p.read_text() for p in DOCS)  # what the text says, wherever a page says it


# --------------------------------------------------------------------------- README parsing
@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int
    path: str = "README.md"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def fenced_blocks(text: str, path: str = "README.md") -> list[Block]:
    return [Block(m.group(1), m.group(2), text[: m.start()].count("\n") + 1, path)
            for m in re.finditer(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands(body: str) -> list[str]:
    """One string per command: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            commands.append(" ".join(tokens))
    return commands


BLOCKS = [b for p in DOCS for b in fenced_blocks(p.read_text(), str(p.relative_to(ROOT)))]
COMMANDS = [cmd for b in BLOCKS if b.lang == "bash" for cmd in shell_commands(b.body)]

# A bash command matching one of these patterns is run by the handler of that name.
HANDLERS = {
    r"^python train\.py fit --config configs/train/quickstart\.yaml$": "fit_quickstart",
    r"^python train\.py fit --config configs/train/quickstart\.yaml --trainer\.callbacks\+=": "callbacks_append",
    r"^python train\.py (fit|test) --config configs/train/\w+_div2k\.yaml": "parse_gpu_recipe",
    r"^python train\.py predict --config configs/train/quickstart\.yaml --ckpt_path": "predict_quickstart",
    r"^python train\.py fit --config configs/train/demo_clean\.yaml": "parse_only",
    r"^python train\.py fit --config configs/train/quickstart\.yaml --trainer\.logger\.init_args\.version quickstart$":
        "parse_only",
    r"^python train\.py fit --config configs/train/badsr_quickstart\.yaml": "parse_only",
    r"^python train\.py fit --config configs/train/robust_\w+\.yaml$": "parse_only",
    r"^python train\.py (fit|test) --config configs/train/refsr_quickstart\.yaml": "parse_only",
    r"^lit-sr evaluate --config configs/evaluate/robust_report_\w+\.yaml$": "report_config_loads",
    r"^python benchmarks/imresize\.py": "benchmark_quick",
    r"^lit-sr data (prepare|verify) /?": "data_prepare",
    r"^lit-sr data export-poisoned --training_config \w+ --out_dir \S+$": "export_poisoned_parses",
    r"^torchrun .* train\.py fit --config configs/train/badsr_\w+\.yaml": "torchrun_parse",
    r"^python benchmarks/(?!imresize\.py)\w+\.py --device cuda": "benchmark_flags",
    # --- backdoor defenses (defend) ---
    r"^lit-sr defend --config configs/defend/\w+\.yaml$": "defend_config_loads",

    # downstream checks (down3): minutes of training each; tests/test_shapes_recipes.py trains the two
    # shapes recipes a few steps, tests/test_downstream_callback.py runs the quickstart's callbacks
    r"^python train\.py fit --config configs/train/(shapes_(classifier|detector)|badsr_downstream_quickstart)\.yaml$":
        "parse_only",
}
# ... or is deliberately not run here, for this reason.
EXCLUDED = {
    r"^make demo$": "five train.py runs of minutes (configs/study/demo.yaml); the positive control of "
                    "configs/train/demo_poisoned.yaml is run as the demo runs its arms by test_backdoor_e2e.py, the study command end to end by "
                    "test_study.py, the pipeline piecewise by test_poisoned_datamodule.py and "
                    "test_backdoor_callbacks.py",
    r"^make demo-quick$": "the demo's runs, shorter: still minutes of training (see make demo)",
    r"^lit-sr study --config configs/study/\w+\.yaml": "minutes to hours of training per study; the "
                    "study command is run end to end by test_study.py (a two-run study of real train.py runs)",
    r"^make test$": "the whole test suite, this file included",
    r"^pip install -e '?\.\[all\]'?$": "installs the checkout; tests/test_wheel.py builds the wheel, installs it in a "
                                       "fresh environment and runs lit-sr from outside the checkout",
    r"^tensorboard --logdir runs$": "starts a web server; the events it reads are checked in "
                                    "test_tensorboard_hparams_are_logged_with_their_metrics",
    r"^lit-sr evaluate --config configs/evaluate/robustness_\w+\.yaml( |$)":
        "the robustness report's commands and overrides are run by tests/test_evaluate.py (the report's own tests)",
    r"^make robustness$": "trains the quickstart (tens of minutes on two CPU cores) before the report; "
                          "tests/test_evaluate.py checks that its data, weights and report paths agree (dry run)",
    # detect (issue 12, detection of poisoned pairs)
    r"^python benchmarks/backdoor_detection\.py --study-dir runs/demo": "needs the trained arms of make demo "
        "(minutes); every detector, the metrics and the data-module path are run by tests/test_backdoor_detection.py",

    # --- backdoor defenses (defend) ---
    r"^make defend$": "needs make demo's four trained arms and runs minutes of repairs; the same command runs end "
                      "to end on tiny run folders in tests/test_defend_report.py, and its config loads below",

    # refsr3: the RefSR report
    r"^lit-sr evaluate-refsr --config configs/evaluate_refsr/quick\.yaml$":
        "needs the quickstart's trained weights (minutes of training); tests/test_refsr_report.py runs this "
        "config file through the same command line on a tiny network, and the report end to end",
    # one config dialect (docs/configs.md)
    r"^lit-sr (robust|defend|evaluate-refsr) --config configs/\w+/\w+\.yaml --":
        "the --print_config and dotted overrides of every job are run by tests/test_job_configs.py",
    # DATSR and LIIF quickstarts (docs/refsr.md, docs/liif.md)
    r"^lit-sr (fit|test) --config configs/train/(liif|datsr|ssmtf)_quickstart\.yaml":
        "minutes of CPU training; tests/test_recipes.py parses every training recipe, tests/test_liif_module.py, "
        "tests/test_datsr.py and tests/test_ssmtf.py train these networks a few steps",
    r"^OMP_NUM_THREADS=1 lit-sr refsr-claims --config configs/refsr_claims/cpu\.yaml":
        "trains three RefSR networks (53 min under load); tests/test_refsr_claims.py runs the command end to end "
        "on a tiny config and builds this one",
    r"^make robust$": "trains the quickstart and three robust fine-tunings (tens of minutes each on two CPU "
                      "cores) before the report; its report config loads in test_documented_report_configs_load, "
                      "the report's robust and index studies run in tests/test_robust_report.py",
}
# The first code line of each python / yaml block, and the handler that runs it.
SNIPPETS = {
    r"^from lit_sr\.archs import build_arch\n(?!from lit_sr\.attacks\.refsr_adv)": "snippet_weights",
    r"^from lit_sr\.archs import build_arch\nfrom lit_sr\.attacks\.refsr_adv import": "snippet_refsr_adv",
    r"^from lit_sr\.attacks import IFGSM": "snippet_attacks",
    r"^trainer:\n  callbacks:\n    - class_path: callbacks\.AdversarialEvalCallback": "yaml_adversarial",
    r"^trainer:\n  reload_dataloaders_every_n_epochs: 1\n  callbacks:\n    - class_path: callbacks\.PoisonSelectionCallback":
        "yaml_backdoor",
    r"^data:\n  class_path: datamodules\.PoisonedSRDataModule": "yaml_poisoned_data",
    r"^from lit_sr\.archs\.masa_arch import MASA\n": "snippet_masa",

    # --- backdoor defenses (defend) ---
    r"^from lit_sr\.backdoor_defenses import FinePruning, run_defense": "snippet_backdoor_defenses",
}


def matching(patterns: dict, text: str) -> list[str]:
    return [p for p in patterns if re.search(p, text)]


def test_every_fenced_block_is_run_or_excluded_with_a_reason():
    problems = []
    used = set()
    for block in BLOCKS:
        if block.lang == "bash":
            for cmd in shell_commands(block.body):
                hits = matching(HANDLERS, cmd) + matching(EXCLUDED, cmd)
                used.update(hits)
                if len(hits) != 1:
                    problems.append(f"{block.where}: {cmd!r} matches {len(hits)} entries "
                                    f"(add a handler to HANDLERS or a reasoned entry to EXCLUDED)")
        elif block.lang in ("python", "yaml"):
            hits = matching(SNIPPETS, block.body)
            used.update(hits)
            if len(hits) != 1:
                problems.append(f"{block.where}: {block.lang} block starting "
                                f"{block.body.splitlines()[0]!r} matches {len(hits)} SNIPPETS entries")
        elif block.lang == "":
            # Plain blocks are layouts and printed tables; a command hidden in one would go untested.
            for text_line in block.body.splitlines():
                if re.match(r"\s*(python|make|\$) ", text_line):
                    problems.append(f"{block.where}: command in a plain block: {text_line!r}")
        else:
            problems.append(f"{block.where}: fenced block in {block.lang!r}: not covered")
    stale = [p for p in [*HANDLERS, *EXCLUDED, *SNIPPETS] if p not in used]
    assert not problems, "\n".join(problems)
    assert not stale, f"entries that match nothing in README.md or docs/*.md: {stale}"


# --------------------------------------------------------------------------- running train.py
def tokens_of(cmd: str) -> list[str]:
    """``python train.py <args>`` -> ``<args>``."""
    tokens = shlex.split(cmd)
    assert tokens[:2] == ["python", "train.py"], cmd
    return tokens[2:]


def run_cli(args: list[str], run: bool = True):
    from train import main

    return main(args, run=run)


def quiet(save_dir: Path) -> list[str]:
    """Appended to a documented quickstart command: a few steps, small images, output in ``save_dir``."""
    return ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch",
            "1", "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(save_dir),
            "--data.init_args.max_val_images", "1", "--data.init_args.max_side", "192"]


def print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def command(pattern_name: str) -> list[str]:
    found = [c for c in COMMANDS if any(HANDLERS[p] == pattern_name for p in matching(HANDLERS, c))]
    assert found, f"README.md and docs/*.md have no command for {pattern_name}"
    return found


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, monkeypatch_module):
    """The README's ``python train.py fit --config configs/train/quickstart.yaml``, 2 epochs of 2 steps."""
    monkeypatch_module.chdir(ROOT)
    save_dir = tmp_path_factory.mktemp("runs")
    cmds = set(command("fit_quickstart"))  # documented in more than one section, always the same command
    assert len(cmds) == 1, cmds
    (cmd,) = cmds
    cli = run_cli([*tokens_of(cmd), *quiet(save_dir)])
    return Path(cli.trainer.log_dir), cli.trainer.global_step


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_fit_quickstart_writes_what_the_readme_lists(quickstart_run):
    log_dir, final_step = quickstart_run
    assert log_dir.parent.name == "quickstart" and log_dir.name.startswith("version_")
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "weights.pth", "weights_best.pth",
                 "config.yaml", "summary.json"):
        assert (log_dir / name).is_file(), name
    assert list((log_dir / "images").glob("*.png")) and list(log_dir.glob("events.out.tfevents.*"))
    last = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == final_step == 4
    meta = torch.load(log_dir / "weights.pth", weights_only=True)["meta"]
    assert meta == {"state": "last", "global_step": final_step}
    assert torch.load(log_dir / "weights_best.pth", weights_only=True)["meta"]["state"] == "best"
    # "Validation logs val/psnr_rgb, val/psnr_y, val/ssim_y and val/bicubic_*"
    val = json.loads((log_dir / "summary.json").read_text())["val"]
    text = TEXT
    sentence = text[text.index("Validation logs"):].split(".", 1)[0]
    documented = set(re.findall(r"`(val/\w+)`", sentence))
    assert documented == {"val/psnr_rgb", "val/psnr_y", "val/ssim_y"} and "`val/bicubic_*`" in sentence
    assert documented | {f"val/bicubic_{m}" for m in ("psnr_rgb", "psnr_y", "ssim_y")} <= set(val)


def test_tensorboard_hparams_are_logged_with_their_metrics(quickstart_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    log_dir, _ = quickstart_run
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"val/psnr_y", "val/psnr_rgb", "val/ssim_y"} <= metric_tags
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["arch"].string_value == "edsr" and hparams["lr"].number_value == pytest.approx(1e-3)
    assert not [k for k in hparams if k.startswith("_")]  # no _class_path / _instantiator noise
    # the data module's hyper-parameters too, as configured (the quickstart's data module and its patch)
    assert hparams["data/class_path"].string_value == "datamodules.EmbeddedPhotosDataModule"
    assert hparams["data/init_args/patch_size"].number_value == 96
    # ... and in the checkpoint, which still loads without unpickling objects
    last = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["datamodule_hyper_parameters"]["data"]["init_args"]["patch_size"] == 96
    assert "val/psnr_y" in events.Tags()["scalars"]  # the series the HPARAMS tab reads


def test_callbacks_append_keeps_the_recipe_list(quickstart_run, tmp_path):
    (cmd,) = command("callbacks_append")
    args = tokens_of(cmd)
    assert args[0] == "fit"
    cli = run_cli([*args[1:], *quiet(tmp_path)], run=False)
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert {"EarlyStopping", "ModelCheckpoint", "LastCheckpoint", "SRImageLogger", "RunSummary"} <= set(names)
    stop = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EarlyStopping")
    assert (stop.monitor, stop.mode, stop.patience) == ("val/psnr_y", "max", 3)


@pytest.mark.parametrize("cmd", command("parse_gpu_recipe"))
def test_gpu_recipe_commands_parse(cmd, quickstart_run, capsys):
    # DIV2K is not on the test machine: the documented flags are parsed and the recipe checked.
    args = [a.replace("runs/.../best.ckpt", str(quickstart_run[0] / "checkpoints" / "best.ckpt"))
            for a in tokens_of(cmd)]
    printed = print_config(args, capsys)
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in printed["trainer"]["callbacks"]]
    assert callbacks.index("ModelCheckpoint") < callbacks.index("LastCheckpoint")
    assert printed["trainer"]["precision"] == "bf16-mixed"
    if "--ckpt_path" in args:
        assert Path(printed["ckpt_path"]).is_file()


@pytest.mark.parametrize("cmd", command("parse_only"))
def test_expensive_commands_parse(cmd, capsys):
    # The demo's commands: minutes of training and poisoning (make demo); here their flags are parsed.
    args = tokens_of(cmd)
    printed = print_config(args, capsys)
    for flag, value in zip(args, args[1:]):
        if flag.startswith("--trainer.logger.init_args."):
            assert str(printed["trainer"]["logger"]["init_args"][flag.rsplit(".", 1)[-1]]) == value


def test_predict_writes_the_given_folder_with_the_given_tiling(quickstart_run, tmp_path, monkeypatch):
    from lit_sr.archs import build_arch
    from lit_sr.io import read_image, read_state_dict, write_image

    log_dir, _ = quickstart_run
    (cmd,) = command("predict_quickstart")
    torch.manual_seed(0)
    lr_dir, out_dir = tmp_path / "my_lr_images", tmp_path / "out"
    write_image(torch.rand(3, 40, 36), lr_dir / "a.png")
    write_image(torch.rand(3, 24, 28), lr_dir / "b.png")
    args = tokens_of(cmd)
    args = [{"runs/.../last.ckpt": str(log_dir / "checkpoints" / "last.ckpt"), "my_lr_images/": str(lr_dir),
             "out/": str(out_dir), "configs/train/quickstart.yaml": str(ROOT / "configs" / "train" / "quickstart.yaml")}.get(a, a)
            for a in args]
    assert args[args.index("--prediction.tile") + 1] == "128"
    # 32 px tiles with a 26 px overlap: half of it covers the 4-block EDSR's 13 px radius at x4.
    args[args.index("--prediction.tile") + 1], args[args.index("--prediction.tile_overlap") + 1] = "32", "26"
    monkeypatch.chdir(tmp_path)  # a stray ./predictions folder would show here
    run_cli([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_x4.png", "b_x4.png"]
    assert not (tmp_path / "predictions").exists()
    sr = read_image(out_dir / "a_x4.png")
    assert sr.shape == (3, 160, 144)
    net = build_arch("edsr", num_feat=32, num_block=4, upscale=4).eval()
    net.load_state_dict(read_state_dict(log_dir / "checkpoints" / "last.ckpt", key="params"))
    with torch.no_grad():
        whole = net(read_image(lr_dir / "a.png")[None]).clamp(0, 1)[0]
    assert (sr - whole).abs().max() <= 1 / 255 + 1e-6  # seamless: 8-bit rounding only


def test_command_line_model_arguments_win_over_the_checkpoint(quickstart_run, tmp_path, monkeypatch):
    from lit_sr.jobs.train.cli import SRLightningCLI

    # LightningCLI applies --ckpt_path's hyper-parameters only with a subcommand: build `fit`, skip fitting.
    monkeypatch.setattr(SRLightningCLI, "_run_subcommand", lambda self, subcommand: None)
    log_dir, _ = quickstart_run
    ckpt = str(log_dir / "checkpoints" / "last.ckpt")
    config = str(ROOT / "configs" / "train" / "quickstart.yaml")
    base = ["fit", "--config", config, "--trainer.logger", "false", "--ckpt_path", ckpt]
    with pytest.warns(UserWarning, match=r"--model\.init_args\.lr 0\.0123 given on the command line"):
        cli = run_cli([*base, "--model.init_args.lr", "0.0123", "--model.init_args.tile", "24"])
    assert cli.model.hparams.lr == pytest.approx(0.0123) and cli.model.hparams.tile == 24
    # A value from a --config file yields to the checkpoint (it describes the saved network).
    other = tmp_path / "lr.yaml"
    other.write_text("model:\n  init_args:\n    lr: 5.0e-4\n    tile: 40\n")
    cli = run_cli([*base[:3], "--config", str(other), *base[3:]])
    assert cli.model.hparams.lr == pytest.approx(1e-3) and cli.model.hparams.tile is None


def test_export_poisoned_command_names_a_built_in_poisoned_recipe():
    """The tour's export command: its recipe name resolves to the poisoned recipe; the export itself runs
    (tiny config, round trip through a training run) in tests/test_export.py."""
    from lit_sr.jobs.data.cli import ExportPoisoned
    from lit_sr.jobs.parser import job_parser, parse_job
    from lit_sr.recipes import resolve_config

    (cmd,) = command("export_poisoned_parses")
    cfg, _ = parse_job(job_parser(ExportPoisoned, "lit-sr data export-poisoned", "export"), after(cmd, "export-poisoned"))
    (config,) = cfg.training_config
    path = Path(resolve_config(config, "train"))
    assert path.is_file() and path.parent.name == "train"
    assert yaml.safe_load(path.read_text())["data"]["class_path"] == "datamodules.PoisonedSRDataModule"


# --------------------------------------------------------------------------- benchmarks
def run_script(argv: list[str], monkeypatch) -> None:
    """``python <argv>`` in this process (no second torch import), from the repository root."""
    import runpy

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.syspath_prepend(str((ROOT / argv[0]).parent))  # as `python script.py` would
    runpy.run_path(str(ROOT / argv[0]), run_name="__main__")


def test_benchmark_imresize_quick(tmp_path, monkeypatch):
    (cmd,) = command("benchmark_quick")
    out = tmp_path / "imresize.json"
    args = [a for a in shlex.split(cmd)[1:] if a not in ("--device", "cuda")]
    run_script([*args, "--device", "cpu", "--quick", "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["rows"]
    assert [r["scale"] for r in rows] == [0.25, 0.5, 2, 4]
    assert all(r["max_abs_diff"] < 1e-4 and r["speedup"] > 0 for r in rows)


@pytest.mark.parametrize("cmd", command("benchmark_flags"))
def test_benchmark_flags_exist(cmd, monkeypatch, capsys):
    # Each benchmark's own --quick run belongs to its owner's tests; here: the documented flags exist.
    script, *flags = shlex.split(cmd)[1:]
    with pytest.raises(SystemExit) as exit_info:
        run_script([script, "--help"], monkeypatch)
    assert exit_info.value.code in (0, None)
    usage = capsys.readouterr().out
    readme_line = next(line for line in TEXT.splitlines() if line.startswith(cmd.split(" #")[0]))
    for flag in [f for f in flags if f.startswith("--")] + ["--quick", "--out"] + re.findall(r"\+ (--\w+)", readme_line):
        assert flag in usage, f"{script} has no {flag}"


# --------------------------------------------------------------------------- snippets and tables
def snippet(handler: str) -> Block:
    (block,) = [b for b in BLOCKS if b.lang in ("python", "yaml") and any(
        SNIPPETS[p] == handler for p in matching(SNIPPETS, b.body))]
    return block


def test_snippet_weights(tmp_path, monkeypatch):
    from lit_sr.archs import build_arch, count_parameters
    from lit_sr.io import read_state_dict, save_weights

    block = snippet("snippet_weights")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # a random stand-in for the model-zoo file, in BasicSR's format
    zoo = build_arch("edsr", num_feat=64, num_block=16, upscale=4)
    zoo_file = re.search(r'load_weights\(net, "([^"]+)"\)', block.body).group(1)
    save_weights(zoo, zoo_file)
    scope: dict = {}
    exec(compile(block.body, block.where, "exec"), scope)
    claimed = int(re.search(r"([\d,]+) params", block.body).group(1).replace(",", ""))
    assert count_parameters(scope["net"]) == claimed
    saved = re.search(r'save_weights\(net, "([^"]+)"\)', block.body).group(1)
    for key, value in read_state_dict(saved).items():
        assert torch.equal(value, zoo.state_dict()[key])


def test_snippet_attacks():
    from lit_sr.archs import build_arch

    block = snippet("snippet_attacks")
    torch.manual_seed(0)  # tiny random x2 networks and 16 px LR crops stand in for the README's names
    tiny = dict(num_feat=8, num_block=1, upscale=2)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    scope = {"net": build_arch("edsr", **tiny).eval(), "lr": lr, "hr": hr, "loader": [{"lr": lr, "hr": hr}],
             "edsr": build_arch("edsr", **tiny).eval(), "bicubic": build_arch("bicubic", upscale=2),
             "rcan": build_arch("rcan", num_feat=8, num_group=1, num_block=1, squeeze_factor=4, upscale=2).eval()}
    # Smaller budgets (steps, samples, crop) than documented; the calls are the same.
    body = re.sub(r"steps=50", "steps=2", block.body)
    body = body.replace("n_samples=1024", "n_samples=4").replace("crop_size=80", "crop_size=8")
    body = body.replace("crop_border=4", "crop_border=2")
    exec(compile(body, block.where, "exec"), scope)
    comment = next(line for line in block.body.splitlines() if line.startswith("# per image:"))
    documented = set(re.findall(r"\b(\w+_(?:psnr|ssim))\b", comment))
    assert documented and documented <= set(scope["m"])
    assert (scope["lr_adv"] - lr).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize("handler,recipe", [("yaml_adversarial", "quickstart"), ("yaml_backdoor", "badsr_quickstart")])
def test_callback_yaml_as_a_second_config_replaces_the_list(handler, recipe, tmp_path, capsys):
    # The README says so (and shows --trainer.callbacks+= to add instead): check both halves.
    block = snippet(handler)
    extra = tmp_path / "callbacks.yaml"
    extra.write_text(block.body)
    printed = print_config(["fit", "--config", str(ROOT / "configs" / "train" / f"{recipe}.yaml"), "--config", str(extra)],
                           capsys)
    got = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert got == [c["class_path"] for c in yaml.safe_load(block.body)["trainer"]["callbacks"]]
    assert "replaces* the recipe's list" in TEXT


def test_parameter_table_counts_the_documented_arguments():
    from lit_sr.archs import build_arch, count_parameters

    text = TEXT
    table = text[text.index("| name | network | standard arguments"):].split("\n\n", 1)[0]
    rows = [r for r in table.splitlines()[2:] if r.startswith("| `")]
    assert len(rows) >= 8
    for row in rows:
        name, _, args, count = [c.strip() for c in row.strip("|").split(" | ")]
        kwargs = eval(f"dict({args.strip('`')})")  # the README's own literal arguments
        net = build_arch(name.strip("`"), **kwargs)
        assert count_parameters(net) == int(count.replace(",", "")), row


@pytest.mark.slow
def test_resume_with_a_new_lr_and_length_from_the_command_line(quickstart_run, tmp_path):
    import math

    log_dir, final_step = quickstart_run
    args = ["fit", "--config", str(ROOT / "configs" / "train" / "quickstart.yaml"), *quiet(tmp_path),
            "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt"), "--trainer.max_epochs", "4",
            "--model.init_args.lr", "0.004"]
    with pytest.warns(UserWarning, match="overrides the value 0.001"):
        cli = run_cli(args)
    assert cli.trainer.global_step == final_step + 4 == 8
    last = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    group = last["optimizer_states"][0]["param_groups"][0]
    assert last["lr_schedulers"][0]["base_lrs"] == [0.004] and group["initial_lr"] == 0.004
    # A fresh 4-epoch run of 2 steps per epoch at lr 0.004 ends at eta_min; the resumed steps log that run's lr.
    assert group["lr"] == pytest.approx(1e-7)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(cli.trainer.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("lr-Adam")}
    # log_every_n_steps 5: the first resumed step (4, half-way through 8) is logged; the old run's
    # schedule (lr 1e-3 over 4 steps) would give 1e-7 there.
    assert logged[4] == pytest.approx(1e-7 + (0.004 - 1e-7) * 0.5 * (1 + math.cos(math.pi * 4 / 8)), rel=1e-5)


@pytest.mark.parametrize("cmd", command("torchrun_parse"))
def test_torchrun_command_parses_its_train_py_part(cmd, capsys):
    # No cluster here: the part after torchrun's own flags is the train.py command, parsed as given.
    tokens = shlex.split(cmd)
    args = tokens[tokens.index("train.py") + 1:]
    printed = print_config(args, capsys)
    nodes = args[args.index("--trainer.num_nodes") + 1]
    assert str(printed["trainer"]["num_nodes"]) == nodes == tokens[tokens.index("--nnodes") + 1]


def test_poisoned_data_yaml_names_real_arguments():
    # The block abbreviates nested settings with {...}; every key it spells out must exist.
    import importlib
    import inspect

    block = snippet("yaml_poisoned_data")
    body = block.body.replace("{...}", "{}")
    data = yaml.safe_load(body)["data"]

    def cls_of(path):
        module, name = path.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    def check(entry):
        params = inspect.signature(cls_of(entry["class_path"]).__init__).parameters
        unknown = sorted(set(entry.get("init_args") or {}) - set(params))
        assert not unknown, f"{block.where}: {entry['class_path']} has no {unknown}"

    check(data)
    for key in ("base", "trigger", "substitute"):
        check(data["init_args"][key])


def after(cmd: str, token: str) -> list[str]:
    """The words of a documented command after ``token`` (its subcommand, or a flag's value)."""
    words = shlex.split(cmd)
    assert token in words, f"{cmd!r} has no {token!r}"
    return words[words.index(token) + 1:]


@pytest.mark.slow
def test_data_prepare_commands_run_on_small_folders(tmp_path, monkeypatch):
    # The documented prepare/verify commands, run as written with /data/... moved under tmp_path
    # onto two small synthetic images per data set (DIV2K / Flickr2K naming, official x4 LR files).
    import numpy as np
    from PIL import Image

    from lit_sr.jobs.data.cli import main as data_main

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    cmds = command("data_prepare")
    assert [after(c, "data")[0] for c in cmds].count("prepare") >= 2 and any(" verify " in c for c in cmds)
    prepared = 0
    for cmd in cmds:
        args = [a.replace("/data/", f"{tmp_path}/data/") for a in after(cmd, "data")]
        if args[0] == "prepare":
            hr_dir = Path(args[args.index("--hr_dir") + 1])
            # without --lr_dir the LR partners are made by MATLAB bicubic from the HR
            lr_dir = Path(args[args.index("--lr_dir") + 1]) if "--lr_dir" in args else None
            hr_dir.mkdir(parents=True, exist_ok=True)
            if lr_dir is not None:
                lr_dir.mkdir(parents=True, exist_ok=True)
            for stem in ("0001", "0002"):
                hr = rng.integers(0, 256, (520, 500, 3), dtype=np.uint8)
                Image.fromarray(hr).save(hr_dir / f"{stem}.png")
                if lr_dir is not None:
                    Image.fromarray(hr[::4, ::4]).save(lr_dir / f"{stem}x4.png")
        if args[0] == "prepare":
            # the first as written (a pool of spawned workers, one per core); the others in this process:
            # each spawned worker is a new interpreter that imports torch
            args += ["--no-progress"] + (["--workers", "1"] if prepared else [])
            prepared += 1
        assert data_main(args) == 0, cmd
        if args[0] == "prepare":
            out = Path(args[args.index("--out_dir") + 1])
            assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("cmd", command("report_config_loads"))
def test_documented_report_configs_load(cmd):
    # Running them needs the trained base and fine-tuned weights (minutes each); their configs must load.
    from lit_sr.jobs.evaluate import load_config

    cfg = load_config(ROOT / after(cmd, "--config")[0])
    assert cfg.models and cfg.attacks


def test_snippet_refsr_adv():
    # A tiny random TTSR and small budgets stand in for the documented sizes; the calls are the same.
    block = snippet("snippet_refsr_adv")
    body = re.sub(r'n_feats=64, num_res_blocks="16\+16\+8\+4", vgg_weights="[^"]+"',
                  'n_feats=8, num_res_blocks="1+1+1+1", vgg_weights=None', block.body)
    body = body.replace("steps=50", "steps=2").replace("square_queries=1000", "square_queries=4")
    assert body != block.body
    torch.manual_seed(0)
    lr, ref, hr = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    scope = {"lr": lr, "ref": ref, "hr": hr}
    exec(compile(body, block.where, "exec"), scope)
    assert torch.equal(scope["lr"], lr) and (scope["ref_adv"] - ref).abs().max() <= 8 / 255 + 1e-6
    documented = re.search(r"# rows: (.*?) \(", block.body).group(1).split(", ")
    rows = scope["rows"]
    names = set(rows) if isinstance(rows, dict) else {r["name"] if isinstance(r, dict) else r for r in rows}
    assert documented[0] in names and documented[1] in names, names


def test_snippet_masa():
    # A tiny random MASA stands in for the published size; the calls are the same.
    from lit_sr.archs.masa_arch import MASA, Match

    block = snippet("snippet_masa")
    body = block.body.replace("MASA()", "MASA(n_feats=8, n_blks=[1, 1, 1], n_blks_dec=[1, 1, 1, 1, 1, 1])")
    assert body != block.body
    torch.manual_seed(0)
    lr, ref = torch.rand(1, 3, 16, 12), torch.rand(1, 3, 50, 70)
    scope = {"lr": lr, "ref": ref}
    exec(compile(body, block.where, "exec"), scope)
    assert isinstance(scope["net"], MASA) and scope["sr"].shape == (1, 3, 64, 48)
    match = scope["match"]
    assert isinstance(match, Match) and match.soft.shape == (1, 4, 64)  # 2x2 blocks of 8x8 (LR padded to 16x16)
    for name in ("patch_top", "patch_left", "soft"):  # the fields the comment names
        assert name in block.body

# --------------------------------------------------------------------------- backdoor defenses (defend)
@pytest.mark.parametrize("cmd", command("defend_config_loads"))
def test_documented_defense_report_configs_load(cmd):
    # Running them needs make demo's arms (or the DIV2K runs); the configs and every defense in them must validate.
    from lit_sr.jobs.defend.config import load_config

    cfg = load_config(ROOT / after(cmd, "--config")[0])
    assert cfg.attacks and {e["defense"] for e in cfg.defenses.values()} == {"ft", "fp", "nad", "ibau", "anp"}


def test_snippet_backdoor_defenses(trained, batch):
    # The session's tiny trained EDSR stands in for a backdoored one; 2 steps instead of 200.
    from lit_sr.backdoor_defenses import BackdoorEvalSet, CleanSubset
    from lit_sr.poison import Blend

    block = snippet("snippet_backdoor_defenses")
    body = block.body.replace("steps=200", "steps=2")
    assert body != block.body
    lr, hr = batch
    grey = torch.full_like(hr, 0.5)
    trigger = Blend(alpha=0.2, pattern="checkerboard", pattern_size=16, resize_mode="nearest")
    scope = {"net": trained, "clean": CleanSubset(lr, hr), "evaluation": BackdoorEvalSet(lr, hr, trigger(lr), grey, grey)}
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    exec(compile(body, block.where, "exec"), scope)
    assert len(scope["fp"].info["pruned"]) == 8 and scope["out"].model is not trained
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
