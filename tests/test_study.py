"""The study command: YAML checking, grid expansion, resumable runs, the table (rates that never
read NaN, paired deltas, the verdict), and a two-run study of real ``train.py`` runs end to end."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml

from lit_sr.errors import ConfigError
from lit_sr.jobs.study.cli import main
from lit_sr.jobs.study.runner import Column, load_study, run_study
from lit_sr.jobs.study.table import DeltaCell, RowSource, own_effect_cell, paired_delta, table, write_outputs

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for train.py: reads its --config files like LightningCLI would (later ones win) and
# writes the results file BackdoorSummary would, from the values it was given; fails on demand.
FAKE_TRAIN = '''
import json, sys, pathlib, yaml
args = sys.argv[2:]
cfg = {}
def merge(a, b):
    for k, v in b.items():
        a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return a
for i, a in enumerate(args):
    if a == "--config":
        cfg = merge(cfg, yaml.safe_load(open(args[i + 1])))
fake = cfg["fake"]
if fake.get("fail"):
    sys.exit(3)
log = cfg["trainer"]["logger"]["init_args"]
out = pathlib.Path(log["save_dir"]) / log["version"]
out.mkdir(parents=True, exist_ok=True)
with open(out.parent.parent / "calls.txt", "a") as f:
    f.write(log["version"] + "\\n")
n = 4
block = lambda q, s, i, a: {"clean_psnr_y": q, "clean_psnr_y_per_image": [q + 0.1 * k for k in range(n)],
                            "asr_pixel": s / i if i else None, "asr_pixel_success": s, "asr_pixel_included": i,
                            "attainment_per_image": [a + 0.1 * (k % 2) for k in range(n)]}
res = {"backdoored": block(fake["psnr"], fake["success"], fake["included"], fake.get("att", 0.0)),
       "clean": block(30.0, fake.get("clean_success", 0), 4, fake.get("clean_att", 0.0)),
       "poison_report": {"poisoned_hr_psnr": fake.get("hr_psnr")}, "clean_weights": fake.get("clean_weights")}
(out / "backdoor_summary.json").write_text(json.dumps(res))
'''


def write_study(tmp_path: Path, *pieces: str) -> Path:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "base.yaml").write_text("fake: {psnr: 30.0, success: 0, included: 4}\n")
    path = tmp_path / "study_fake.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: fake
        output_dir: {tmp_path / "out"}
        base_config: {tmp_path / "base.yaml"}
        train_script: {tmp_path / "fake_train.py"}
        """) + "".join(textwrap.dedent(p).rstrip(" ") for p in pieces))
    return path


COLUMNS = """\
        columns:
          - {header: clean PSNR-Y, path: "@.clean_psnr_y", format: db}
          - {header: delta PSNR-Y, path: "@.clean_psnr_y_per_image", format: paired_delta}
          - {header: pixel ASR, path: "@.asr_pixel", format: rate}
          - {header: poisoned HR PSNR, path: poison_report.poisoned_hr_psnr, format: db}
"""


@pytest.mark.slow
def test_grid_runs_resume_and_rerun_only_what_changed(tmp_path, capsys):
    path = write_study(tmp_path, """\
        grid:
          fake.success: [1, 3]
          fake.psnr: [29.0, 30.0]
        overrides: {fake.included: 4}
        plots: [{name: sweep, x: fake.psnr, group: fake.success, y: [pixel ASR]}]
        """, COLUMNS.replace("format: paired_delta", "format: float"))
    study = load_study(path)
    assert [r.name for r in study.runs] == ["success=1,psnr=29.0", "success=1,psnr=30.0", "success=3,psnr=29.0",
                                            "success=3,psnr=30.0"]
    assert study.runs[2].overrides["fake"] == {"included": 4, "success": 3, "psnr": 29.0}
    assert main(["--config", str(path)]) == 0
    assert (tmp_path / "out" / "fake" / "sweep.png").stat().st_size > 1000
    calls = tmp_path / "out" / "fake" / "calls.txt"
    assert len(calls.read_text().split()) == 4
    # a finished run is not rerun
    assert main(["--config", str(path)]) == 0
    assert len(calls.read_text().split()) == 4
    assert "finished before, not rerun" in capsys.readouterr().out
    # a changed grid point is a new run; a changed override reruns the runs it changes
    path.write_text(path.read_text().replace("[29.0, 30.0]", "[29.0, 31.0]"))
    assert main(["--config", str(path)]) == 0
    assert calls.read_text().split()[4:] == ["success=1,psnr=31.0", "success=3,psnr=31.0"]
    rows = {r["run"]: r for r in table(load_study(path))}
    assert str(rows["success=3,psnr=31.0"]["cells"]["pixel ASR"]) == "75.0% (3/4)"
    assert rows["success=3,psnr=31.0"]["params"] == {"run": "success=3,psnr=31.0", "fake.success": 3, "fake.psnr": 31.0}
    assert rows["success=3,psnr=31.0"]["cells"]["poisoned HR PSNR"] is None  # not in the results: "-"


def test_failed_run_is_recorded_and_the_others_go_on(tmp_path):
    path = write_study(tmp_path, """\
        runs:
          bad: {overrides: {fake.fail: true}}
          good: {overrides: {fake.success: 2}}
        """, COLUMNS.replace("format: paired_delta", "format: float"))
    metas = run_study(load_study(path))
    assert [m["status"] for m in metas] == ["failed", "ok"] and metas[0]["returncode"] == 3
    assert main(["--config", str(path)]) == 1  # reruns the failed one only, fails again
    md = (tmp_path / "out" / "fake" / "results.md").read_text()
    assert "| bad (failed) | - |" in md


@pytest.mark.slow
def test_table_reference_row_paired_delta_verdict_and_outputs(tmp_path):
    path = write_study(tmp_path, """\
        reference: D
        runs:
          S: {in_table: false}
          D: {row: {from_run: A, block: clean}}
          A: {overrides: {fake: {psnr: 29.8, success: 4, hr_psnr: 31.5, clean_weights: "{runs_dir}/D/weights.pth"}}}
          B: {overrides: {fake: {psnr: 28.0, success: 4}}}
          C: {overrides: {fake: {psnr: 30.0, success: 0, included: 0}}}
          E: {overrides: {fake: {psnr: 30.0, success: 4, clean_success: 2}}}
        """, COLUMNS, """\
          - {header: clean model ASR, path: clean.asr_pixel, format: rate}
        verdict: {success_columns: [pixel ASR], min_success: 0.8, quality_column: delta PSNR-Y, max_quality_change: 0.5,
                  false_positive_columns: [clean model ASR], max_false_positive: 0.2}
        plots:
          - {name: arms, y: [pixel ASR, delta PSNR-Y]}
          - {name: by_quality, x: clean PSNR-Y, y: [pixel ASR]}
        """)
    assert main(["--config", str(path)]) == 0
    study = load_study(path)
    rows = {r["run"]: r for r in table(study)}
    assert list(rows) == ["D", "A", "B", "C", "E"]  # S ran (first) but has no row
    assert (tmp_path / "out" / "fake" / "runs" / "S" / "backdoor_summary.json").is_file()
    assert rows["D"]["verdict"] == "reference" and rows["D"]["cells"]["clean PSNR-Y"] == 30.0
    delta = rows["A"]["cells"]["delta PSNR-Y"]
    assert isinstance(delta, DeltaCell) and delta.mean == pytest.approx(-0.2)
    assert rows["A"]["verdict"] == "implanted"
    assert rows["B"]["verdict"] == "not implanted at this scale"  # 100% ASR but -2 dB on clean inputs
    assert str(rows["C"]["cells"]["pixel ASR"]) == "n/a (0 included)"
    assert rows["C"]["verdict"] == "n/a (no success figure)"  # nothing included: cannot tell
    assert rows["E"]["verdict"] == "not implanted at this scale"  # the clean model also "succeeds" (50%)
    out = tmp_path / "out" / "fake"
    overrides = yaml.safe_load((out / "runs" / "A" / "overrides.yaml").read_text())
    assert overrides["fake"]["clean_weights"] == str(out / "runs" / "D" / "weights.pth")
    md = (out / "results.md").read_text()
    assert "| A | 29.80 | -0.20 [-0.20, -0.20] | 100.0% (4/4) | 31.50 | 0.0% (0/4) | implanted |" in md
    assert "Verdict: **implanted** when `pixel ASR` is at least 80% while `clean model ASR`" in md
    assert (out / "arms.png").stat().st_size > 1000 and (out / "by_quality.png").stat().st_size > 1000
    data = json.loads((out / "results.json").read_text())
    assert data["rows"][1]["cells"]["pixel ASR"]["included"] == 4
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,arm,status,wall_s,clean PSNR-Y,delta PSNR-Y,delta PSNR-Y [ci95 low]")
    assert "nan" not in (out / "results.csv").read_text().lower()


def test_paired_delta_interval():
    d = paired_delta([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    # mean 2.5, sd 1.29, t(0.975, 3) = 3.182: half-width 2.054
    assert d.mean == 2.5 and d.low == pytest.approx(0.446, abs=1e-3) and d.high == pytest.approx(4.554, abs=1e-3)
    assert paired_delta([1.0, math.inf], [0.0, 1.0]).n == 1
    with pytest.raises(ValueError, match="same images"):
        paired_delta([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    "body,match",
    [
        ("columns: [{path: a, format: percent}]\n", "columns\\[0\\].format"),
        ("colums: []\n", "unknown key"),
        ("columns: [{path: a}]\nreference: X\n", "reference"),
        ("columns: [{path: a}]\ngrid: {a.b: 3}\n", "grid.a.b"),
        ("columns: [{path: a, format: paired_delta}]\n", "needs a reference"),
        ("columns: [{path: a}]\nruns: {x: {row: {from_run: y}}}\n", "from_run"),
        ("columns: [{header: h, path: a}]\nverdict: {success_columns: [nope]}\n", "nope"),
        ("columns: [{path: a, baseline: b}]\n", "paired_delta"),
        ("columns: [{header: h, path: a}]\nplots: [{name: p, y: [h], beside: {h: nope}}]\n", "beside"),
        ("columns: [{header: h, path: a}]\nplots: [{name: p, y: [h], x: h, beside: {h: h}}]\n", "x: run"),
        ("columns: [{path: a, format: paired_delta, threshold: 0.5}]\nreference: run\n", "needs a baseline"),
        ("columns: [{path: a, format: paired_delta, baseline: b, threshold: yes}]\n", "threshold"),
    ],
)
def test_bad_study_files_name_the_file_and_key(tmp_path, body, match):
    path = write_study(tmp_path, body)
    with pytest.raises(ConfigError, match=match) as info:
        load_study(path)
    assert str(path) in str(info.value)


# A study of two real train.py runs (weights, each run's logger kept or injected, the table and its
# rows, the plot) is tests/test_backdoor_e2e.py: it runs the demo's D and A that way, so one pair of
# training interpreters serves both.


def test_explicit_runs_cross_the_grid_unless_they_opt_out(tmp_path):
    path = write_study(tmp_path, """\
        runs:
          ref: {grid: false, in_table: false}
          arm: {overrides: {fake.included: 4}}
        grid: {fake.success: [1, 3]}
        columns: [{path: "@.asr_pixel", format: rate}]
        """)
    study = load_study(path)
    assert [r.name for r in study.runs] == ["ref", "arm__success=1", "arm__success=3"]
    assert study.runs[2].params == {"run": "arm__success=3", "arm": "arm", "fake.success": 3}
    assert study.runs[2].overrides == {"fake": {"included": 4, "success": 3}}
    assert not study.runs[0].in_table and study.runs[0].overrides == {}


def test_a_study_extends_another_and_changes_only_what_differs(tmp_path):
    parent = write_study(tmp_path, """\
        overrides: {fake.included: 4}
        runs:
          a: {overrides: {fake.success: 1, fake.psnr: 29.0}}
          b: {overrides: {fake.success: 2}}
        columns: [{path: "@.asr_pixel", format: rate}]
        """)
    child = tmp_path / "study_quick.yaml"
    child.write_text(f"extends: {parent}\nname: quick\nruns:\n  a: {{overrides: {{fake.psnr: 31.0}}}}\n")
    study = load_study(child)
    assert study.name == "quick" and [r.name for r in study.runs] == ["a", "b"]
    assert study.runs[0].overrides == {"fake": {"included": 4, "success": 1, "psnr": 31.0}}
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_study(loop)


def test_the_study_keeps_the_logger_its_file_sets_and_points_it_at_the_run_folder(tmp_path):
    from lit_sr.jobs.study.runner import run_overrides

    path = write_study(tmp_path, """\
        runs:
          tb: {}
          csv: {overrides: {trainer.logger: {class_path: lightning.pytorch.loggers.CSVLogger,
                                             init_args: {save_dir: elsewhere, flush_logs_every_n_steps: 7}}}}
          ml: {overrides: {trainer.logger: {class_path: lightning.pytorch.loggers.MLFlowLogger}}}
          remote: {overrides: {trainer.logger: {class_path: lightning.pytorch.loggers.MLFlowLogger,
                                                init_args: {tracking_uri: "http://tracking:5000"}}}}
          none: {overrides: {trainer.logger: false}}
        reference: tb
        """, COLUMNS)
    study = load_study(path)
    by_name = {r.name: run_overrides(study, r)["trainer"] for r in study.runs}
    runs = study.runs_dir
    assert by_name["tb"]["logger"]["class_path"].endswith("TensorBoardLogger")  # injected only when none is set
    csv = by_name["csv"]["logger"]
    assert csv["class_path"].endswith("CSVLogger")
    assert csv["init_args"] == {"save_dir": str(runs), "name": "", "version": "csv", "flush_logs_every_n_steps": 7}
    ml = by_name["ml"]["logger"]
    assert ml["init_args"]["tracking_uri"] == f"file:{(runs / 'ml').resolve()}" and ml["init_args"]["run_name"] == "ml"
    # a logger on a server is kept as set, behind a CSV logger that puts the outputs in the run folder
    remote = by_name["remote"]["logger"]
    assert [s["class_path"].rsplit(".", 1)[-1] for s in remote] == ["CSVLogger", "MLFlowLogger"]
    assert remote[1]["init_args"] == {"tracking_uri": "http://tracking:5000"}
    assert by_name["none"]["logger"] is False and by_name["none"]["default_root_dir"] == str(runs / "none")


def test_a_logger_entry_without_class_path_is_refused_naming_the_study_file_and_run(tmp_path):
    from lit_sr.jobs.study.runner import run_overrides

    path = write_study(tmp_path, """\
        runs:
          tb: {}
          odd: {overrides: {trainer.logger: [{init_args: {save_dir: x}}]}}
        reference: tb
        """, COLUMNS)
    study = load_study(path)
    odd = next(r for r in study.runs if r.name == "odd")
    with pytest.raises(ConfigError, match=r"trainer\.logger\[0\] of run 'odd': expected \{class_path, init_args\}"):
        run_overrides(study, odd)


def test_dry_run_writes_the_override_files_its_commands_name(tmp_path, capsys):
    path = write_study(tmp_path, "grid: {fake.psnr: [29.0, 31.0]}\n", COLUMNS.replace("format: paired_delta", "format: float"))
    assert main(["--config", str(path), "--dry-run"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 2
    for command in commands:
        overrides = Path(command.split()[-1])
        assert overrides.name == "overrides.yaml" and overrides.is_file()
        assert yaml.safe_load(overrides.read_text())["trainer"]["logger"]["init_args"]["version"] in command
    assert not (tmp_path / "out" / "fake" / "results.md").exists()  # nothing trained


def test_own_effect_column_beside_bars_and_verdict(tmp_path):
    """The backdoor's own effect (arm minus the clean model under the same trigger, per image):
    an arm whose high attainment the clean model matches scores ~0 and is not implanted."""
    path = write_study(tmp_path, """\
        reference: D
        runs:
          D: {row: {from_run: A, block: clean}}
          A: {overrides: {fake: {success: 4, att: 1.0, clean_att: 0.05}}}
          B: {overrides: {fake: {success: 4, att: 0.9, clean_att: 0.9}}}
        """, COLUMNS, """\
          - {header: clean model ASR, path: clean.asr_pixel, format: rate}
          - {header: own attainment, path: "@.attainment_per_image", baseline: clean.attainment_per_image,
             format: paired_delta}
          - {header: own attainment-ASR, path: "@.attainment_per_image", baseline: clean.attainment_per_image,
             threshold: 0.5, format: paired_delta}
        verdict: {success_columns: [pixel ASR], own_effect_columns: [own attainment], min_own_effect: 0.0}
        plots: [{name: arms, y: [pixel ASR, own attainment], beside: {pixel ASR: clean model ASR}}]
        """)
    assert main(["--config", str(path)]) == 0
    rows = {r["run"]: r for r in table(load_study(path))}
    own_a, own_b = rows["A"]["cells"]["own attainment"], rows["B"]["cells"]["own attainment"]
    assert own_a.mean == pytest.approx(0.95) and own_a.low == pytest.approx(0.95)  # identical pairs: no spread
    assert own_b.mean == pytest.approx(0.0) and rows["B"]["cells"]["own attainment-ASR"].mean == 0.0
    assert rows["A"]["cells"]["own attainment-ASR"].mean == pytest.approx(1.0)
    assert str(rows["D"]["cells"]["own attainment"]) == "0 (reference)"
    assert rows["A"]["verdict"] == "implanted" and rows["B"]["verdict"] == "not implanted at this scale"
    md = (tmp_path / "out" / "fake" / "results.md").read_text()
    assert "the 95% interval of `own attainment` lies above 0" in md
    assert (tmp_path / "out" / "fake" / "arms.png").stat().st_size > 1000


def test_own_effect_column_needs_the_same_images(tmp_path):

    col = Column(path="@.a", header="own", format="paired_delta", baseline="clean.a")
    src = RowSource({"clean": {"a": [0.0, 0.1]}}, {"a": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="same images"):
        own_effect_cell(col, src, False)
    assert own_effect_cell(col, RowSource({}, {"a": [1.0]}), False) is None  # no baseline: "-"


def test_runs_listed_one_by_one_carry_params_for_the_plots_and_need_no_reference(tmp_path):
    # a ladder: each arm at two rungs, no single reference run; the own effect is taken within the row
    path = write_study(tmp_path, """\
        overrides: {fake.included: 4, fake.clean_att: 0.2}
        runs:
          B_r1: {params: {arm: B, rung: 1}, overrides: {fake.att: 0.2}}
          B_r2: {params: {arm: B, rung: 2}, overrides: {fake.att: 0.7}}
        columns:
          - {header: own, path: "@.attainment_per_image", baseline: clean.attainment_per_image, format: paired_delta}
        plots: [{name: ladder, x: rung, group: arm, y: [own]}]
        """)
    study = load_study(path)
    assert [r.params for r in study.runs] == [{"run": "B_r1", "arm": "B", "rung": 1},
                                             {"run": "B_r2", "arm": "B", "rung": 2}]
    assert study.reference is None
    run_study(study)
    rows = {r["run"]: r for r in table(study)}
    assert rows["B_r1"]["cells"]["own"].mean == pytest.approx(0.0, abs=1e-9)  # only the trigger's push
    assert rows["B_r2"]["cells"]["own"].mean == pytest.approx(0.5)
    assert write_outputs(study)[-1] == study.study_dir / "ladder.png"
    assert (study.study_dir / "ladder.png").stat().st_size > 1000
    md = (study.study_dir / "results.md").read_text()
    assert "paired within each row" in md and "against `None`" not in md


@pytest.mark.parametrize("params", ["[1, 2]", "{run: x}"])
def test_run_params_must_be_a_mapping_of_names(tmp_path, params):
    path = write_study(tmp_path, f"""\
        runs:
          a: {{params: {params}}}
        columns: [{{path: "@.asr_pixel", format: rate}}]
        """)
    with pytest.raises(ConfigError, match=r"runs\.a\.params"):
        load_study(path)
