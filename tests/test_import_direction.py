"""Dependencies point one way (DESIGN.md): ``lit_sr`` never imports ``callbacks`` or ``datamodules``,
and nothing imports the command-line module ``lit_sr.jobs.evaluate.cli``.

Checked twice: statically on every ``import`` statement of the source (also the lazy ones inside
functions), and at run time in a fresh interpreter, where importing every library module must not
load the forbidden packages (nor matplotlib, which the plots import only when they draw).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = "lit_sr.jobs.evaluate.cli"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _hits(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def test_the_static_imports_point_one_way():
    library = _sources("lit_sr")
    assert len(library) > 20  # the walk found the package
    wrong = {}
    for path in library:
        names = _imported_modules(path)
        bad = _hits(names, "callbacks") | _hits(names, "datamodules")
        if path != ROOT / "lit_sr" / "evaluate.py":
            bad |= _hits(names, CLI)
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    for path in _sources("callbacks", "datamodules") + [ROOT / "train.py"]:
        bad = _hits(_imported_modules(path), CLI)
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}


def test_importing_the_library_loads_neither_callbacks_nor_the_cli():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in _sources("lit_sr")
        if p.name != "evaluate.py"
    )
    script = (
        "import importlib, json, sys\n"
        "import lit_sr.attacks, lit_sr.plots, lit_sr.jobs.evaluate\n"
        "seen = {'plots': sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "seen['library'] = sorted(m for m in sys.modules if m.split('.')[0] in ('callbacks', 'datamodules'))\n"
        "import callbacks, datamodules\n"
        "seen['cli'] = sorted(m for m in sys.modules if m == 'lit_sr.jobs.evaluate.cli')\n"
        "print(json.dumps(seen))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # the plots, the report and the attacks draw nothing at import time; the library pulls in no
    # callback or data module; the callbacks and data modules do not load the command line
    assert seen == {"plots": [], "library": [], "cli": []}
