"""Optional dependencies: a missing one is named with the pip extra that installs it, and the extras
declared in pyproject.toml are the ones the code asks for."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib

from lit_sr.extras import DISTRIBUTION, EXTRAS, MissingExtraError, require_extra

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("module, extra", [("matplotlib.figure", "plots"), ("lpips", "lpips"),
                                           ("pycocotools", "detection")])
def test_a_missing_optional_package_names_its_extra(monkeypatch, module, extra):
    for name in [m for m in sys.modules if m.startswith(module.split(".")[0] + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module.split(".")[0], None)  # `import x` now raises ImportError
    with pytest.raises(MissingExtraError, match=re.escape(f"pip install '{DISTRIBUTION}[{extra}]'")):
        require_extra(module)


def test_the_plots_surface_the_missing_extra(monkeypatch):
    from lit_sr.plots import psnr_vs_eps_figure

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"\[plots\]"):
        psnr_vs_eps_figure({"a": {"s": [(1.0, 30.0)]}}, "t")


def test_an_installed_extra_is_imported():
    assert require_extra("matplotlib.figure").Figure.__name__ == "Figure"


def test_pyproject_declares_each_extra_and_keeps_it_out_of_the_core():
    project = _pyproject()["project"]
    assert project["name"] == DISTRIBUTION
    core = " ".join(project["dependencies"])
    optional = project["optional-dependencies"]
    for module, (extra, _) in EXTRAS.items():
        assert any(req.startswith(module) for req in optional[extra]), (module, extra)
        assert module not in core, f"{module} is an extra ({extra}) but also a core dependency"
    assert set(EXTRAS[m][0] for m in EXTRAS) <= set(re.findall(r"\w+", optional["all"][0].split("[", 1)[1]))


def test_the_distribution_name_is_not_one_pypi_would_refuse():
    """PyPI refuses a name equal to an existing one once ``-``, ``_``, ``.`` are removed and confusable letters
    folded; ``lit-sr`` is ``litsr``, an existing project (checked against the PyPI name list on 2026-12-07,
    where ``lit-sr-security`` folds to no existing name)."""

    def fold(name: str) -> str:
        return re.sub(r"[-_.]+", "", name.lower()).translate(str.maketrans("lio", "110"))

    assert fold(DISTRIBUTION) != fold("litsr")
    assert fold(DISTRIBUTION) == fold("lit_sr.security")  # the folding itself, on a known pair


def test_lightning_has_an_upper_bound():
    """lit_sr.jobs.train.cli overrides private LightningCLI methods (tests/test_lightning_private.py pins them)."""
    (req,) = [r for r in _pyproject()["project"]["dependencies"] if r.startswith("lightning")]
    assert re.search(r"<\s*\d+\.\d+", req), req
