"""The robustness report's RefSR mode (lit_sr.jobs.evaluate_refsr.report, lit-sr evaluate-refsr).

A randomly initialised tiny TTSR (``random_init``: the plumbing is tested, not the model) on 48 px
embedded pairs at two similarity levels; the attacks' strength is tested in test_refsr.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from datamodules.refsr import EmbeddedRefPairsDataModule
from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.config import ModelSpec
from lit_sr.jobs.evaluate_refsr.cli import main
from lit_sr.jobs.evaluate_refsr.report import RefSRReportConfig, run_refsr_report

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_feats": 8, "num_res_blocks": [1, 1, 1, 1]}
ATTACKS = {"refsr_adv": {"steps": 1}, "ref_square": {"n_queries": 2}, "lr_pgd": {"attack": "pgd", "steps": 1}}


def _data(**kwargs) -> EmbeddedRefPairsDataModule:
    return EmbeddedRefPairsDataModule(max_side=48, levels=[1, 5], val_photos=("astronaut",), **kwargs)


@pytest.mark.slow
def test_report_writes_the_table_by_level_with_contrasts_and_defense(tmp_path):
    cfg = RefSRReportConfig(model=ModelSpec(arch="ttsr", arch_kwargs=TINY, random_init=True), data=_data(),
                            attacks=ATTACKS, eps=["8/255"], defenses={"purify": {"threshold": None}},
                            defense_steps=1, device="cpu")
    result = run_refsr_report(cfg, tmp_path, progress=False)
    rows = {(r["level"], r["row"]): r for r in result["rows"]}
    names = {"clean", "refsr_adv", "ref_square", "lr_pgd", "ref_noise", "purify"}
    assert set(rows) == {(level, name) for level in (1, 5) for name in names}
    assert all(r["n_images"] == 1 for r in result["rows"])
    assert rows[1, "ref_square"]["queries"] == 3 and rows[1, "refsr_adv"]["queries"] is None
    # each row reports the stealth of what it perturbed
    assert "ref_psnr" in rows[1, "refsr_adv"] and "lr_psnr" not in rows[1, "refsr_adv"]
    assert "lr_psnr" in rows[5, "lr_pgd"] and rows[5, "ref_noise"]["ref_psnr"] > 30
    assert rows[1, "purify"]["adaptive_sr_psnr"] <= rows[1, "purify"]["naive_sr_psnr"] + 0.05
    summary = (tmp_path / "refsr_summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| level | clean PSNR vs HR | refsr_adv (refsr_adv) | ref_square (ref_square, 3 queries)")
    assert [line.split("|")[1].strip() for line in table[1:]] == ["1", "5"]
    assert "purify: naive" in table[0]
    with open(tmp_path / "refsr_results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 12
    assert json.loads((tmp_path / "refsr_results.json").read_text())["meta"]["defense_steps"] == 1
    assert (tmp_path / "plots" / "refsr_by_level.png").stat().st_size > 1000


def test_bad_report_settings_are_named():
    model = ModelSpec(arch="ttsr", arch_kwargs=TINY, random_init=True)
    with pytest.raises(ConfigError, match="attacks.partial"):
        RefSRReportConfig(model=model, data=_data(), attacks={"partial": {"steps": 1}})
    with pytest.raises(ConfigError, match="defenses.refsr_adv"):
        RefSRReportConfig(model=model, data=_data(), defenses={"refsr_adv": {}})
    with pytest.raises(ConfigError, match="data: .* has no setup"):
        RefSRReportConfig(model=model, data=object())


def test_command_line_runs_a_yaml_config_and_names_bad_keys(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "configs" / "evaluate_refsr" / "quick.yaml").read_text())
    assert config["model"]["weights"] == "runs/refsr_quickstart/version_0/weights.pth"  # the quickstart's export
    config.update(model={"arch": "ttsr", "arch_kwargs": TINY, "random_init": True}, attacks={"refsr_adv": {"steps": 1}},
                  defenses=None, out=str(tmp_path / "out"))
    config["data"]["init_args"].update(max_side=48, levels=[3], val_photos=["coffee"])
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path), "--noise", "false", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| 3 |" in out and "ref_noise" not in out
    assert main(["--config", str(path), "--attacks", '{"refsr_adv": {"stepz": 1}}']) == 2
    assert "stepz" in capsys.readouterr().err
