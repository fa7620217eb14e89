"""The issue-23 BadSR studies (configs/study/badsr_{scale,substitute,target}.yaml) are well formed:
each poisoned run is compared with the clean model of its own rung / victim (the own effect would
otherwise subtract another network's attainment), within a rung every arm trains the same network
for the same steps, and the rungs grow in parameters and steps. Running them takes an hour on a CPU
(docs/badsr.md); here they are only loaded and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_sr.archs import build_arch, count_parameters
from lit_sr.jobs.study.runner import load_study, run_overrides

ROOT = Path(__file__).resolve().parents[1]


def _clean_weights(study, run) -> str | None:
    for cb in run_overrides(study, run).get("trainer", {}).get("callbacks", []):
        if cb["class_path"].endswith("BackdoorSummary"):
            return cb["init_args"]["clean_weights"]
    return None


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the studies name their configs relative to the repository


def test_scale_ladder_pairs_each_arm_with_its_rungs_clean_model_and_grows():
    study = load_study("configs/study/badsr_scale.yaml")
    runs = {r.name: r for r in study.runs}
    sizes = {}
    for rung in (1, 2, 3):
        d = run_overrides(study, runs[f"D_r{rung}"])
        for arm in ("B", "C"):
            o = run_overrides(study, runs[f"{arm}_r{rung}"])
            assert o["model"]["init_args"]["arch_kwargs"] == d["model"]["init_args"]["arch_kwargs"]
            assert o["trainer"]["max_epochs"] == d["trainer"]["max_epochs"]  # equal compute within the rung
            assert _clean_weights(study, runs[f"{arm}_r{rung}"]).endswith(f"D_r{rung}/weights.pth")
            assert runs[f"{arm}_r{rung}"].params == {"run": f"{arm}_r{rung}", "arm": arm, "rung": rung}
        kw = d["model"]["init_args"]["arch_kwargs"]
        sizes[rung] = (count_parameters(build_arch("edsr", upscale=2, **kw)), d["trainer"]["max_epochs"])
    assert sizes[1][0] < sizes[2][0] < sizes[3][0] and sizes[1][1] < sizes[2][1] < sizes[3][1]
    assert runs["C_r1"].overrides["data"]["init_args"]["threat_model"] == "victim_access"


def test_substitute_study_crosses_three_substitutes_with_two_victims():
    study = load_study("configs/study/badsr_substitute.yaml")
    cells = [r for r in study.runs if "_to_" in r.name]
    assert {(r.params["substitute"], r.params["victim"]) for r in cells} == \
        {(s, v) for s in ("edsr", "rrdb", "swinir") for v in ("edsr", "swinir")}
    for r in cells:
        o = run_overrides(study, r)
        sub = o["data"]["init_args"]["substitute"]["init_args"]
        assert sub["weights"].endswith(f"S_{r.params['substitute']}/weights.pth")
        assert _clean_weights(study, r).endswith(f"D_{r.params['victim']}/weights.pth")
        victim = run_overrides(study, next(x for x in study.runs if x.name == f"D_{r.params['victim']}"))
        assert o["model"]["init_args"]["arch"] == victim["model"]["init_args"]["arch"]


def test_target_study_varies_only_the_target():
    study = load_study("configs/study/badsr_target.yaml")
    arms = [r for r in study.runs if r.name.startswith("B_")]
    assert [r.params["target"] for r in arms] == ["grey", "gradient", "photo", "texture"]
    overrides = [run_overrides(study, r) for r in arms]
    targets = {o["data"]["init_args"].pop("target") for o in overrides}
    assert len(targets) == 4
    for o in overrides:
        o["trainer"].pop("logger")
    assert all(o == overrides[0] for o in overrides)  # everything but the target (and the log folder) equal
    for t in targets:
        assert t == "coffee" or (ROOT / t).is_file()
