"""One config dialect for every job (lit_sr/jobs/parser.py): ``--help``, ``--print_config``, dotted overrides
and the same error, exit code 2, naming the dotted key of a misspelt key or a bad value.

In-process through ``lit_sr.__main__.main`` (what ``lit-sr <command>`` runs); the job itself is
replaced by a recorder where running it would take minutes, so that a test sees the config the job got.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lit_sr.__main__ import main
from lit_sr.jobs import parser as job_parser_module
from lit_sr.jobs.parser import ConfigError, check_keys, job_parser, parse_job

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "evaluate": "configs/evaluate/robustness_quick.yaml",
    "evaluate-refsr": "configs/evaluate_refsr/quick.yaml",
    "robust": "configs/robust/quickstart.yaml",
    "defend": "configs/defend/quickstart.yaml",
    "study": "configs/study/demo_quick.yaml",
    "refsr-claims": "configs/refsr_claims/cpu.yaml",
}
JOBS = [*CONFIGS, "data prepare", "data verify"]


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize("job", JOBS)
def test_every_job_has_help_with_config_and_print_config(job, capsys):
    assert _exit([*job.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert f"lit-sr {job}" in out and "--config CONFIG" in out and "--print_config" in out


@pytest.mark.parametrize("job", list(CONFIGS))
def test_print_config_prints_the_merged_config_and_reads_back(job, tmp_path, capsys):
    assert _exit([job, "--config", CONFIGS[job], "--print_config"]) == 0
    printed = capsys.readouterr().out
    merged = yaml.safe_load(printed)
    shipped = yaml.safe_load((ROOT / CONFIGS[job]).read_text())
    assert set(shipped) - {"extends", "anchors"} <= set(merged)
    # the printed config is a config: read back, it prints the same
    (tmp_path / "printed.yaml").write_text(printed)
    assert _exit([job, "--config", str(tmp_path / "printed.yaml"), "--print_config"]) == 0
    assert capsys.readouterr().out == printed


def test_print_config_of_the_data_commands(capsys):
    assert _exit(["data", "prepare", "--hr_dir", "hr", "--out_dir", "out", "--step", "16", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["hr_dir"] == "hr" and printed["step"] == 16 and printed["crop_size"] == 480
    assert _exit(["data", "verify", "--directory", "d", "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"directory": "d", "scale": None}


def _misspelt(job: str, tmp_path: Path) -> tuple[list[str], str]:
    """A copy of the job's shipped config with one key misspelt deep inside, and that key's dotted name."""
    if job.startswith("data"):
        path = tmp_path / "data.yaml"
        path.write_text("hr_dir: hr\nout_dir: out\ncrop_sise: 48\n" if job == "data prepare" else "directori: d\n")
        return [*job.split(), "--config", str(path)], "crop_sise" if job == "data prepare" else "directori"
    raw = yaml.safe_load((ROOT / CONFIGS[job]).read_text())
    key = {"evaluate": "models.EDSR-quickstart.weigths", "evaluate-refsr": "data.init_args.max_sid",
           "robust": "models.base.weigths", "defend": "reference.run_dri",
           "study": "runs.C_badsr.row.from_rum", "refsr-claims": "models.masa.arch_kwags"}[job]
    node = raw
    for part in key.split(".")[:-1]:
        node = node.setdefault(part, {})
    node[key.split(".")[-1]] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return [job, "--config", str(path)], key


@pytest.mark.parametrize("job", JOBS)
def test_a_misspelt_key_in_a_config_file_is_exit_code_2_naming_its_dotted_key(job, tmp_path, capsys):
    argv, key = _misspelt(job, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{key}: unknown key" in err and str(tmp_path) in err, err


@pytest.mark.parametrize("job, flag, value, message", [
    ("evaluate", "--attacks.ifgsm.stepz", "3", "attacks.ifgsm"),
    ("evaluate", "--models.EDSR-quickstart.strict", "maybe", "--models.EDSR-quickstart.strict: "),
    ("evaluate-refsr", "--model.wieghts", "w.pth", "--model.wieghts: unknown key"),
    ("robust", "--restarts", "0", "restarts"),
    ("defend", "--score.metric", "psnr", "--score.metric: "),
    ("study", "--verdict.min_success", "2", "verdict.min_success"),
])
def test_a_bad_flag_is_exit_code_2_naming_its_dotted_key(job, flag, value, message, capsys):
    assert main([job, "--config", CONFIGS[job], flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


# --------------------------------------------------------------------------- a dotted override reaches the job


@pytest.fixture()
def recorded(monkeypatch):
    """Replace each job's run function by one that records the config it gets."""
    seen = {}

    def recorder(name, result=None):
        def record(cfg, *args, **kwargs):
            seen[name] = cfg
            if result is None:
                raise SystemExit(0)
            return result
        return record

    import lit_sr.jobs.defend.cli as defend
    import lit_sr.jobs.evaluate.cli as evaluate
    import lit_sr.jobs.evaluate_refsr.cli as refsr
    import lit_sr.jobs.refsr_claims.cli as claims
    import lit_sr.jobs.study.cli as study

    monkeypatch.setattr(evaluate, "run_report", recorder("evaluate"))
    monkeypatch.setattr(refsr, "run_refsr_report", recorder("evaluate-refsr"))
    monkeypatch.setattr(defend, "run_report", recorder("defend"))
    monkeypatch.setattr(study.runner, "run_study", recorder("study"))
    monkeypatch.setattr(claims, "run_claims", recorder("refsr-claims"))
    return seen


def test_dotted_overrides_reach_the_reports(recorded):
    _exit(["evaluate", "--config", CONFIGS["evaluate"], "--attacks.ifgsm.steps", "20", "--transfer.eps", "2/255"])
    cfg = recorded["evaluate"]
    assert {a.label: a.kwargs["steps"] for a in cfg.attacks} == {"ifgsm": 20, "partial": 10, "universal": 10}
    assert cfg.transfer.eps == pytest.approx(2 / 255) and cfg.raw["attacks"]["ifgsm"] == {"steps": 20}

    _exit(["evaluate-refsr", "--config", CONFIGS["evaluate-refsr"], "--attacks.refsr_adv.steps", "3",
           "--data.init_args.max_side", "48", "--defenses.purify.purify_scale", "2"])
    cfg = recorded["evaluate-refsr"]
    assert {s.label: s.kwargs.get("steps") for s in cfg.specs}["refsr_adv"] == 3
    assert cfg.data.max_side == 48 and cfg.defenses["purify"] == {"threshold": None, "purify": "resize",
                                                                  "purify_scale": 2}

    _exit(["defend", "--config", CONFIGS["defend"], "--defenses.FT.steps", "7", "--output_dir", "/tmp/elsewhere"])
    cfg = recorded["defend"]
    assert cfg.defenses["FT"]["steps"] == 7 and cfg.defenses["FT"]["lr"] == 1e-3 and cfg.defenses["FP"]["steps"] == 200
    assert str(cfg.out_dir) == "/tmp/elsewhere/defend_quickstart"


def test_dotted_overrides_reach_the_refsr_claims(recorded):
    _exit(["refsr-claims", "--config", CONFIGS["refsr-claims"], "--models.masa.arch_kwargs.num_res_blocks", "[1, 1, 1]",
           "--attack_steps", "3", "--full_reference", "[datsr, masa]"])
    cfg = recorded["refsr-claims"]
    assert cfg.models["masa"].arch_kwargs["num_res_blocks"] == [1, 1, 1] and cfg.attack_steps == 3
    assert cfg.full_reference == ["datsr", "masa"] and cfg.models["masa"].arch == "masa"  # the entry's other keys kept


def test_a_dotted_override_reaches_the_study_runs(recorded):
    _exit(["study", "--config", CONFIGS["study"], "--overrides.trainer.max_epochs", "2", "--only", "A_control"])
    study = recorded["study"]
    runs = {r.name: r for r in study.runs}
    assert runs["A_control"].overrides["trainer"]["max_epochs"] == 2
    assert runs["S_substitute"].overrides["trainer"]["max_epochs"] == 8  # a run's own value still wins
    assert runs["C_badsr"].overrides["data"]["init_args"]["trigger"]["init_args"]["steps"] == 30  # extends: kept


def _photos(folder: Path, n: int = 2, size: int = 32) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def test_robust_and_data_run_with_their_overrides(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    # the worst case of bicubic alone, every path from the command line: models is a mapping, not NAME=ARCH:WEIGHTS
    assert main(["robust", "--data", str(photos), "--out", str(tmp_path / "robust"), "--scale", "2",
                 "--models", "{bicubic: {arch: bicubic}}", "--restarts", "1", "--eps", "4/255"]) == 0
    assert "PSNR-Y (dB) at eps = 4/255" in capsys.readouterr().out
    results = yaml.safe_load((tmp_path / "robust" / "robust_report.json").read_text())
    assert set(results) == {"bicubic"} and results["bicubic"]["worst/hr_psnr"] <= results["bicubic"]["ifgsm10_hr/hr_psnr"]

    config = tmp_path / "prepare.yaml"
    config.write_text(yaml.safe_dump({"hr_dir": str(photos), "out_dir": str(tmp_path / "prepared"), "scale": 2,
                                      "crop_size": 16, "step": 8, "workers": 1}))
    assert main(["data", "prepare", "--config", str(config), "--step", "16", "--no-progress"]) == 0
    assert "8 sub-images from 2 images" in capsys.readouterr().out  # 2 x 2 x 2 at step 16, not 3 x 3 at step 8
    assert main(["data", "verify", "--directory", str(tmp_path / "prepared"), "--scale", "2"]) == 0


# --------------------------------------------------------------------------- the helper itself


def test_the_schema_walk_names_keys_in_lists_and_mappings():
    from lit_sr.jobs.study.config import StudyConfig

    with pytest.raises(ConfigError, match=r"columns\[1\]\.format: .*percent"):
        check_keys({"columns": [{"path": "a"}, {"path": "b", "format": "percent"}]}, StudyConfig)
    with pytest.raises(ConfigError, match=r"runs\.A\.row\.block: .*Expected"):
        check_keys({"runs": {"A": {"row": {"block": [1]}}}}, StudyConfig)
    check_keys({"runs": {"A": None, "B": {"overrides": {"a.b": {"class_path": "x"}}}}}, StudyConfig)  # free-form


def test_later_config_files_and_flags_win(tmp_path):
    from lit_sr.jobs.robust.cli import RobustConfig

    first = tmp_path / "a.yaml"
    first.write_text("data: d\nmodels: {bicubic: {arch: bicubic}}\nrestarts: 3\nout: a\n")
    second = tmp_path / "b.yaml"
    second.write_text("restarts: 4\n")
    parser = job_parser(RobustConfig, "lit-sr robust", "test")
    cfg, _ = parse_job(parser, ["--config", str(first), "--config", str(second), "--out", "b"])
    assert (cfg.restarts, cfg.out, cfg.data) == (4, "b", "d")
    assert job_parser_module.dotted_message('Parser key "data":\n  Problem with given class_path \'x\':\n'
                                            "    Option 'max_sid' is not accepted") == "data.init_args.max_sid: unknown key"
