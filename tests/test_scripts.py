"""Every Python script in scripts/ still imports against the package (a renamed function broke one once:
scripts/false_positive_probe.py imported callbacks.backdoor_eval.evaluate_backdoor after its rename)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_imports_and_has_a_main(path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the module level only: main() runs under __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
