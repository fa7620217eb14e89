"""Every recipe of ``configs/`` runs end to end on the stand-ins (issue 23, item 5): the day it runs on a
GPU with the real data, only the data, the device and the sizes below differ.

Stand-ins (:func:`lit_sr.standins.write_standins`, once per test process): DIV2K-, benchmark- and
CUFED-shaped folders with the official file names, and torchvision VGG16/VGG19/AlexNet files with
**random** weights, found through ``TORCH_HOME``. Each test runs in its own temporary folder (the
recipe's relative ``runs/...`` paths land there; ``configs`` is a link to the repository's).

What a test may change, and nothing else (the network, its losses, optimiser, callbacks, poisoning
and attacks stay as in the recipe):

* data paths: pointed at the stand-ins (``/data/DIV2K/...``, ``/data/CUFED/...``,
  ``/data/benchmark/...``, ``data/embedded_val``; DIV2K's ``train_prepared: null``, the header's own
  alternative, reads the images directly);
* device: CPU, one device, fp32 (``--trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto
  --trainer.precision 32-true``; a report's ``device: cpu``, ``autocast: none``);
* length: 2 training steps in one epoch (``max_steps``, ``max_epochs``, ``limit_train_batches``),
  validation once on one batch at the end of that epoch (``limit_val_batches``, ``val_check_interval``,
  ``check_val_every_n_epoch``), no sanity check; the optimisation steps of a trigger, a poisoned
  label, a substitute's training, an attack or a repair cut to 1-2;
* sizes: batch 1-2, the training patch shrunk (a full-size RCAN, SwinIR, RRDB/ESRGAN, DATSR, TTSR or
  MASA then takes about a second per step; ESRGAN's discriminator input follows its patch, the
  recipe's own rule), one validation image;
* weights the recipe reads (an earlier run's ``weights.pth``, a downstream model's checkpoint):
  files of randomly initialised networks of the architecture the recipe names
  (:func:`lit_sr.standins.write_random_weights`).

Cost: the full-size networks, the studies' arms and the reports take about 400 CPU-seconds (measured
under load, 2026-12-07), more than the whole suite's budget on two cores, so they carry the
``recipes`` mark: ``make test`` leaves them out and ``make test-recipes`` runs them all. The small
recipes, the three BadSR studies of issue 23 (scale ladder, substitute, target: one arm each), the quick
robustness report and the header check below run in ``make test``.

A recipe the test cannot run this way says why in its YAML header (a line starting
``# every-recipe test:``), and :func:`test_every_config_is_run_or_says_why` checks it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_sr.standins import write_random_weights, write_standins

ROOT = Path(__file__).resolve().parents[1]
HEAVY = [pytest.mark.slow, pytest.mark.recipes]  # left out of make test (see the module docstring)
CONFIGS = ROOT / "configs"
HEADER = "# every-recipe test:"

CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.precision", "32-true"]
SHORT = ["--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "1.0",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.num_sanity_val_steps", "0",
         "--trainer.enable_progress_bar", "false"]
EDSR_BASELINE = dict(num_feat=64, num_block=16, res_scale=1.0, img_range=255.0, rgb_mean=[0.4488, 0.4371, 0.4040])


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    # 32 px CUFED5: a full-size RefSR network validates in a second. 128 px DIV2K: BadSR's LPIPS trigger (AlexNet) needs an LR of at least 31 px; 10 training images
    # give the DIV2K BadSR recipe (poison_rate 0.1) a budget of one
    return write_standins(tmp_path_factory.mktemp("standins") / "data", div2k_size=(128, 128), div2k_train=10,
                          div2k_val=1, benchmark_side=48, cufed_train=2, cufed5_groups=1, cufed5_size=(32, 32),
                          scales=(4,))


@pytest.fixture()
def workdir(tmp_path, monkeypatch, standins):
    """The test's own folder as the current one, ``configs`` linked in, the stand-in weights found."""
    (tmp_path / "configs").symlink_to(CONFIGS, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(standins.torch_home))
    return tmp_path


def div2k(standins, prefix: str = "--data.init_args.") -> list[str]:
    d = standins.div2k
    return [f"{prefix}train_hr", str(d / "DIV2K_train_HR"), f"{prefix}train_lr", str(d / "DIV2K_train_LR_bicubic/X4"),
            f"{prefix}val_hr", str(d / "DIV2K_valid_HR"), f"{prefix}val_lr", str(d / "DIV2K_valid_LR_bicubic/X4"),
            f"{prefix}num_workers", "0", f"{prefix}max_val_images", "1"]


def set5_val(s) -> list[str]:
    """Validation on the 48 px Set5 stand-in (its first image): a full-size network validates in seconds."""
    b = s.benchmark / "Set5"
    return ["--data.init_args.val_hr", str(b / "HR"), "--data.init_args.val_lr", str(b / "LR_bicubic" / "X4")]


def sizes(patch: int, batch: int = 1, prefix: str = "--data.init_args.") -> list[str]:
    return [f"{prefix}patch_size", str(patch), f"{prefix}batch_size", str(batch)]


def cufed(standins, patch: int) -> list[str]:
    c = standins.cufed
    return ["--data.init_args.train_root", str(c / "train"), "--data.init_args.cufed5_root", str(c / "CUFED5"),
            "--data.init_args.num_workers", "0", "--data.init_args.max_val_images", "1", *sizes(patch)]


def vgg19(standins) -> str:
    return str(standins.checkpoints / "vgg19-dcbb9e9d.pth")


def edsr_weights(path: str) -> None:
    write_random_weights(path, "edsr", EDSR_BASELINE)


def _downstream_checkpoints() -> None:
    from lit_sr.downstream import ClassifierModule, DetectorModule

    for folder, module in (("shapes_classifier", ClassifierModule(arch="resnet18", num_classes=6, input_size=64)),
                           ("shapes_detector", DetectorModule(num_classes=6, min_size=128, max_size=128,
                                                              representation_size=256))):
        path = Path("runs", folder, "checkpoints", "best.ckpt")
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": module.state_dict()}, path)


def _fit_args(name: str, s) -> list[str]:
    """The overrides of training recipe ``name`` (see the module docstring for what may change)."""
    plain_div2k = {"edsr_x4_div2k": 48, "rcan_x4_div2k": 32, "rrdb_x4_div2k": 32, "swinir_x4_div2k": 32,
                   "carn_x4_div2k": 48}
    if name in plain_div2k:
        return [*div2k(s), *set5_val(s), *sizes(plain_div2k[name]), "--data.init_args.train_prepared", "null"]
    if name == "esrgan_x4_div2k":  # the VGG discriminator takes 128 px (or 256): the recipe's patch
        return [*div2k(s), *set5_val(s), *sizes(128), "--data.init_args.train_prepared", "null"]
    if name == "robust_finetune_edsr":
        return [*div2k(s), *sizes(48), "--model.init_args.steps", "1"]
    if name == "badsr_edsr_x4_div2k":
        base = "--data.init_args.base.init_args."
        return [*div2k(s, base), *sizes(32, prefix=base), "--data.init_args.trigger.init_args.steps", "1",
                "--data.init_args.poisoned_hr_steps", "1", "--data.init_args.generation_autocast", "none",
                "--data.init_args.candidate_rate", "0.1"]
    if name in ("datsr_cufed", "datsr_rec_cufed"):
        extra = ["--model.init_args.vgg_weights", vgg19(s)] if name == "datsr_cufed" else []
        return [*cufed(s, 40), "--model.init_args.arch_kwargs.vgg_weights", vgg19(s),
                "--model.init_args.arch_kwargs.extractor_weights", str(s.checkpoints / "vgg16-397923af.pth"), *extra]
    if name in ("ttsr_cufed", "ttsr_rec_cufed"):
        extra = ["--model.init_args.vgg_weights", vgg19(s)] if name == "ttsr_cufed" else []
        return [*cufed(s, 40), "--model.init_args.arch_kwargs.vgg_weights", vgg19(s), *extra]
    if name == "masa_cufed":
        return cufed(s, 40)
    if name == "badsr_quickstart":  # the recipe's 96 px photos and repeats: poison_rate 0.1 needs 10 samples
        base = "--data.init_args.base.init_args."
        return [*sizes(48, 2, base), f"{base}num_workers", "0", f"{base}max_val_images", "1",
                "--data.init_args.trigger.init_args.steps", "1",
                "--data.init_args.poisoned_hr_steps", "1", "--data.init_args.substitute.init_args.train_steps", "2"]
    if name == "demo_poisoned":
        return [*embedded(32, "--data.init_args.base.init_args."), "--data.init_args.poisoned_hr_steps", "1"]
    if name == "demo_clean":
        return embedded(32)
    if name in ("quickstart", "robust_quickstart"):
        extra = ["--model.init_args.steps", "1"] if name == "robust_quickstart" else []
        return [*embedded(48), *extra]
    if name == "liif_quickstart":  # its 96 px HR patch (the scale sampling crops up to 4 x 24 px): 160 px photos
        return [*embedded(96), "--data.init_args.max_side", "160"]
    if name in ("datsr_quickstart", "refsr_quickstart"):  # embedded reference pairs, already 96 px
        return ["--data.init_args.batch_size", "1", "--data.init_args.repeat", "1", "--data.init_args.num_workers", "0"]
    if name in ("shapes_classifier", "shapes_detector", "badsr_downstream_quickstart"):
        return ["--data.init_args.train_size", "8", "--data.init_args.val_size", "2", "--data.init_args.batch_size",
                "2", "--data.init_args.val_batch_size", "2", "--data.init_args.num_workers", "0"]
    return []


def embedded(patch: int, prefix: str = "--data.init_args.") -> list[str]:
    """The embedded photographs at 96 px (the stand-in of the recipe's larger ones), one validation image."""
    return [f"{prefix}max_side", "96", f"{prefix}repeat", "1", f"{prefix}max_val_images", "1",
            f"{prefix}num_workers", "0", *sizes(patch, 2, prefix)]


def _prepare(name: str) -> None:
    """Write the random stand-ins of the weights files recipe ``name`` reads."""
    if name in ("badsr_edsr_x4_div2k", "robust_finetune_edsr"):
        edsr_weights("runs/edsr_x4_div2k/version_0/weights.pth")
    elif name == "esrgan_x4_div2k":
        write_random_weights("runs/rrdb_x4_div2k/version_0/weights.pth", "rrdbnet",
                             dict(num_feat=64, num_block=23, num_grow_ch=32))
    elif name == "demo_poisoned":
        write_random_weights("runs/demo/runs/S_substitute/weights.pth", "edsr", dict(num_feat=16, num_block=2), scale=2)
    elif name == "robust_quickstart":
        write_random_weights("runs/quickstart/quickstart/weights.pth", "edsr", dict(num_feat=32, num_block=4))
    elif name == "badsr_downstream_quickstart":
        _downstream_checkpoints()


def says_why(path: Path) -> str | None:
    lines = [line for line in path.read_text().splitlines() if line.startswith(HEADER)]
    return lines[0][len(HEADER):].strip() if lines else None


# a recipe whose header says why it cannot run is not collected (test_every_config_is_run_or_says_why checks the header)
TRAIN = sorted(p.stem for p in (CONFIGS / "train").glob("*.yaml") if not says_why(p))
FULL_SIZE = {"rcan_x4_div2k", "rrdb_x4_div2k", "swinir_x4_div2k", "esrgan_x4_div2k", "datsr_cufed",
             "datsr_rec_cufed", "ttsr_cufed", "ttsr_rec_cufed", "masa_cufed", "badsr_edsr_x4_div2k"}


@pytest.mark.slow  # every recipe for two steps: in make test, not in make test-fast
@pytest.mark.parametrize("name", [pytest.param(n, marks=HEAVY) if n in FULL_SIZE else n for n in TRAIN])
def test_training_recipe_runs_two_steps(name, workdir, standins):
    from lit_sr.jobs.train.cli import train_cli

    config = CONFIGS / "train" / f"{name}.yaml"
    _prepare(name)
    cli = train_cli(["fit", "--config", str(config), *CPU, *SHORT, *_fit_args(name, standins)])
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step >= 1, trainer.state
    val = [k for k in trainer.callback_metrics if k.startswith("val/")]
    assert val, f"{name}: no validation metric was logged: {sorted(trainer.callback_metrics)}"
    assert all(torch.isfinite(trainer.callback_metrics[k]).all() for k in val)
    assert (Path(trainer.log_dir) / "config.yaml").is_file()


# --------------------------------------------------------------------------- studies

STUDIES = sorted(p.stem for p in (CONFIGS / "study").glob("*.yaml"))
# the run of each study trained for two steps: its first poisoned arm (the one furthest from the base config)
TRAINED_ARM = {"badsr_div2k": "eps=0.05", "badsr_scale": "C_r1", "badsr_substitute": "swinir_to_swinir",
               "badsr_target": "B_texture", "demo": "C_badsr", "demo_quick": "E_victim_selection",
               "eps": "eps0.05", "paper_point": "photo_28dB", "poison_rate": "ga__poison_rate=0.1"}


def _study_overrides() -> list[str]:
    """The study's own ``--overrides.trainer.*`` flags: CPU and two steps for every run (a run's own value still wins)."""
    flat = dict(zip(CPU[::2], CPU[1::2])) | dict(zip(SHORT[::2], SHORT[1::2]))
    return [a for k, v in flat.items() for a in ("--overrides." + k[2:], v)]


def _arm_args(name: str, resolved: dict, s) -> list[str]:
    """The trained arm's data flags (after the study's configs on its command): stand-in sizes and 1-step poisoning."""
    if name == "badsr_div2k":
        return _fit_args("badsr_edsr_x4_div2k", s)
    data = resolved["data"]["init_args"]
    if "base" not in data:
        return embedded(32)
    args = [*embedded(32, "--data.init_args.base.init_args."), "--data.init_args.poisoned_hr_steps", "1"]
    if data["trigger"]["class_path"].endswith("AdversarialTriggerSpec"):
        args += ["--data.init_args.trigger.init_args.steps", "1"]
    if "substitute" in data and "train_steps" in (data["substitute"].get("init_args") or {}):
        args += ["--data.init_args.substitute.init_args.train_steps", "2"]
    return args


def _in_process(extra: list[str]):
    """A stand-in of :func:`lit_sr.child_process.run_child` that runs ``python -m lit_sr fit ...`` in this process."""
    import contextlib

    from lit_sr.__main__ import main

    def run_child(command, stdout=None, env=None, pass_fds=()):
        assert list(command[1:3]) == ["-m", "lit_sr"], command
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stdout):
            try:
                return main([*command[3:], *extra])
            except Exception as error:  # what a child's traceback would say, in its log
                print(f"{type(error).__name__}: {error}", file=stdout)
                return 1
    return run_child


# issue 23's three BadSR studies at toy size in make test; the others in make test-recipes
IN_MAKE_TEST = {"badsr_scale", "badsr_substitute", "badsr_target"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n if n in IN_MAKE_TEST else pytest.param(n, marks=HEAVY) for n in STUDIES])
def test_study_runs_parse_and_one_arm_trains(name, workdir, standins, monkeypatch):
    """Every run of the study: its resolved training command (the study's dry run) parsed and its
    classes built by the LightningCLI parser; one arm trained for two steps through the study runner."""
    from lit_sr.jobs.study import runner
    from lit_sr.jobs.train.cli import train_cli

    study = runner.load_study(CONFIGS / "study" / f"{name}.yaml",
                              ("--output_dir", str(workdir / "runs"), *_study_overrides()))
    runs = {r.name: r for r in study.runs}
    arm = runs[TRAINED_ARM[name]]
    if name == "badsr_div2k":
        _prepare("badsr_edsr_x4_div2k")
    # the weights the runs read from the runs before them (a substitute, a clean reference): random ones
    referenced = str([runner.run_overrides(study, r) for r in study.runs])
    for run in study.runs:
        if run is not arm and f"{study.runs_dir / run.name}/weights.pth" in referenced:
            model = _resolved(run, study)["model"]["init_args"]
            own = runner.run_overrides(study, run).get("model", {}).get("init_args", {})
            kwargs = own.get("arch_kwargs", model.get("arch_kwargs"))  # a run's arch_kwargs replace the base's
            write_random_weights(study.runs_dir / run.name / "weights.pth", model["arch"], kwargs, model["scale"])
    cli = None
    for run in study.runs:
        runner.write_overrides(study, run)
        argv = runner.run_command(study, run)[4:]  # python -m lit_sr fit | --config ...
        if cli is None:
            cli = train_cli(argv, run=False)
            continue
        built = cli.parser.instantiate_classes(cli.parser.parse_args(argv))
        assert built.model is not None and built.data is not None, run.name
    monkeypatch.setattr(runner, "run_child", _in_process(_arm_args(name, _resolved(arm, study), standins)))
    meta = runner.execute(study, arm)
    assert meta["status"] == "ok", runner.log_tail(study, arm, 40)
    summary = json.loads((study.runs_dir / arm.name / arm.results_file).read_text())
    assert summary["training"]["steps"] == 2


def _resolved(run, study) -> dict:
    """A run's training config as a mapping: its config files merged, then its overrides."""
    from lit_sr.jobs.study.runner import merge, run_overrides

    out: dict = {}
    for config in run.configs:
        out = merge(out, yaml.safe_load(Path(config).read_text()))
    return merge(out, run_overrides(study, run))


# --------------------------------------------------------------------------- reports


def _weights_of(models: dict, config: dict) -> None:
    """Random weights files, at the paths the config names, for every model of a report config that reads one."""
    for spec in models.values():
        if spec.get("weights"):
            kwargs = dict(spec.get("arch_kwargs") or {})
            write_random_weights(spec["weights"], spec["arch"], kwargs, spec.get("scale") or config.get("scale", 4))


def _report_args(job: str, name: str, s, config: dict) -> list[str]:
    set5 = str(s.benchmark / "Set5" / "HR")
    if job == "evaluate":
        args = ["--device", "cpu", "--autocast", "none", "--max_images", "1", "--out", "report"]
        args += [a for d in config["datasets"] for a in (f"--datasets.{d}", set5)]
        for attack in config["attacks"]:
            args += [f"--attacks.{attack}.steps", "1"]
            if "crop_size" in (config["attacks"][attack] or {}):
                args += [f"--attacks.{attack}.crop_size", "4"]
        if config.get("robustness_index"):
            args += ["--robustness_index.n_samples", "2", "--robustness_index.batch_size", "2"]
        return args
    if job == "robust":
        return ["--data", set5, "--train_steps", "1", "--restarts", "1", "--out", "report"]
    if job == "evaluate-refsr":
        return ["--device", "cpu", "--out", "report", "--attacks.refsr_adv.steps", "1", "--attacks.lr_pgd.steps", "1",
                "--attacks.ref_square.n_queries", "2", "--data.init_args.max_side", "48"]
    if job == "refsr-claims":
        return ["--device", "cpu", "--out", "report", "--steps", "2", "--finetune_steps", "2", "--attack_steps", "1"]
    raise AssertionError(job)


FOLDER = {"evaluate": "evaluate", "robust": "robust", "evaluate-refsr": "evaluate_refsr", "refsr-claims": "refsr_claims"}
# every report config but those whose header says why it is not run
REPORTS = [(job, p.stem) for job, folder in FOLDER.items() for p in sorted((CONFIGS / folder).glob("*.yaml"))
           if not says_why(p)]


@pytest.mark.slow
@pytest.mark.parametrize("job, name", [pytest.param(*r, marks=HEAVY) if r != ("evaluate", "robustness_quick")
                                       else r for r in REPORTS])
def test_report_runs_end_to_end(job, name, workdir, standins):
    from lit_sr.__main__ import main

    path = CONFIGS / FOLDER[job] / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    if job == "evaluate-refsr":
        _weights_of({"model": config["model"]}, config)
    elif "models" in config and job != "refsr-claims":
        _weights_of(config["models"], config)
    assert main([job, "--config", str(path), *_report_args(job, name, standins, config)]) == 0
    written = sorted(p.name for p in (workdir / "report").rglob("*") if p.is_file())
    assert any(n.endswith(".md") for n in written) and any(n.endswith((".json", ".csv")) for n in written), written


RUN_BY = {"train": set(TRAIN), "study": set(STUDIES), **{FOLDER[j]: {n for jj, n in REPORTS if jj == j} for j in FOLDER}}


def test_every_config_is_run_or_says_why():
    """Every config of configs/ (every job folder) is run by a test above, or its header says why not."""
    folders = ("train", "study", "evaluate", "evaluate_refsr", "refsr_claims", "robust", "defend")
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} >= set(folders)
    silent = []
    for folder in folders:
        for path in sorted((CONFIGS / folder).glob("*.yaml")):
            if path.stem not in RUN_BY.get(folder, set()) and not says_why(path):
                silent.append(str(path.relative_to(ROOT)))
    assert not silent, silent
    assert says_why(CONFIGS / "defend" / "quickstart.yaml").startswith("not run")
    assert ("evaluate", "robustness_choi2019") not in REPORTS and ("evaluate", "robustness_quick") in REPORTS
