"""Dependencies point one way (docs/design.md, the one-way rule) and go round in no circle.

- ``lit_sr`` (its jobs included) never imports ``callbacks`` or ``datamodules``; the library (``lit_sr``
  minus the application layer ``lit_sr.jobs`` and ``lit_sr/__main__.py``) never imports a job either.
- Nothing outside ``lit_sr/jobs``, ``lit_sr/__main__.py`` and ``train.py`` imports ``lit_sr.jobs``.
- No import cycle among the modules of ``lit_sr``, ``callbacks`` and ``datamodules``.

Checked statically on every ``import`` statement of the source (module level and inside functions),
and the direction once more at run time in one fresh interpreter (PROBE below), where importing every
library module must not load the forbidden packages (nor matplotlib, which the plots import only when
they draw), and each lit_sr.poison module must import first without a cycle and without lightning.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lit_sr", "callbacks", "datamodules")
JOBS = "lit_sr.jobs"


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, module level and inside functions, except under ``if TYPE_CHECKING:``
    (never executed, so it cannot close a cycle at run time; annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if _is_type_checking(node):
            children = node.orelse
        stack.extend(children)


def _imports(path: Path, known: set[str] | None = None) -> set[str]:
    """The modules ``path`` imports. ``from x import y`` counts as ``x.y`` where ``x.y`` is a module of
    ``known``, else as ``x``; relative imports are resolved against the module's package."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parent = ".".join(parts[: len(parts) - node.level + 1])
            base = f"{parent}.{base}" if base else parent
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if known is not None and sub in known else base)
            if known is None:
                found.add(sub)
    return found


def _hits(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def _is_application(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return rel.parts[:2] == ("lit_sr", "jobs") or rel == Path("lit_sr/__main__.py")


def _library() -> list[Path]:
    return [p for p in _sources("lit_sr") if not _is_application(p)]


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (edges to modules outside the three packages dropped)."""
    paths = {_module_name(p): p for p in _sources(*PACKAGES)}
    known = set(paths)
    return {name: {m for m in _imports(path, known) if m in known and m != name} for name, path in paths.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component of more than one module (Tarjan)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        # breadth-first from start back to start inside the component: a shortest cycle through it
        parents, frontier = {start: None}, [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        path = [v]
                        while parents[path[-1]] is not None:
                            path.append(parents[path[-1]])
                        cycles.append([*reversed(path), start])
                        nxt = []
                        break
                    if w not in parents:
                        parents[w] = v
                        nxt.append(w)
                else:
                    continue
                break
            frontier = nxt
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_resolves_submodules_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "lit_sr" / "x"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from lit_sr.x import b\n    from . import c\n")
    (pkg / "b.py").write_text("from ..x.a import f\nif TYPE_CHECKING:\n    from lit_sr.x import c\n")
    (pkg / "c.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    known = {"lit_sr.x", "lit_sr.x.a", "lit_sr.x.b", "lit_sr.x.c"}
    assert _imports(pkg / "__init__.py", known) == {"lit_sr.x.a"}
    assert _imports(pkg / "a.py", known) == {"lit_sr.x.b", "lit_sr.x.c"}
    assert _imports(pkg / "b.py", known) == {"lit_sr.x.a"}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 60 and "lit_sr.jobs.evaluate.runner" in graph  # the walk found the packages
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_static_imports_point_one_way():
    library = _library()
    assert len(library) > 20  # the walk found the package
    wrong = {}
    for path in _sources("lit_sr"):  # the jobs too: what they install in a Trainer lives in lit_sr.training
        names = _imports(path)
        bad = _hits(names, "callbacks") | _hits(names, "datamodules") | (_hits(names, JOBS) if path in library else set())
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    outside = _sources("callbacks", "datamodules", "benchmarks") + [ROOT / "lit_sr" / "__init__.py"]
    for path in outside:
        bad = _hits(_imports(path), JOBS)
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}


# One fresh interpreter runs every run-time import check and reports on each. Before each step every
# project module (lit_sr, callbacks, datamodules) is dropped from sys.modules, so the step imports
# them afresh: what a project module imports shows up again, whatever an earlier step loaded. Third-party
# modules stay loaded, so a step that checks one (lightning, matplotlib) comes before any step that
# loads it; were one loaded earlier anyway, the check would fail, not pass.
# 1. each poison module imported first (lit_sr dropped before each import: a cycle shows as an
#    ImportError on a partly initialised module) loads nothing heavy: no lightning, lpips, callbacks;
# 2. the plots, the report and the attacks load no matplotlib (they import it only when they draw);
# 3. all the library modules, one after the other, load no callback, data module or job. Sound for each
#    module at once: sys.modules only grows, so if none is loaded at the end, no single import loaded one;
# 4. callbacks and datamodules load no job.
POISON_MODULES = ["lit_sr.poison.adversarial_trigger", "lit_sr.poison.triggers", "lit_sr.poison.trigger_base",
                  "lit_sr.poison", "lit_sr.poison.poisoned_hr", "lit_sr.poison.gradients"]
HEAVY = ["lightning", "callbacks", "datamodules", "lpips", "lit_sr.jobs.evaluate.cli"]
PROBE = """
import importlib, json, sys, traceback

def loaded(*prefixes):
    return sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in prefixes))

def drop_project():
    for name in loaded('lit_sr', 'callbacks', 'datamodules'):
        del sys.modules[name]

def poison_first():
    for first in POISON_MODULES:
        drop_project()
        importlib.import_module(first)
        from lit_sr.poison import AdversarialTrigger
        from lit_sr.poison.triggers import AdversarialTrigger as T
        assert T is AdversarialTrigger, first
    return [m for m in HEAVY if m in sys.modules]

def drawing():
    import lit_sr.attacks, lit_sr.plots, lit_sr.jobs.evaluate
    return loaded('matplotlib')

def library():
    for name in LIBRARY:
        importlib.import_module(name)
    return loaded('callbacks', 'datamodules', 'lit_sr.jobs')

def callbacks_and_datamodules():
    import callbacks, datamodules
    return loaded('lit_sr.jobs')

report = {}
for check in (poison_first, drawing, library, callbacks_and_datamodules):
    drop_project()
    try:
        report[check.__name__] = {'loaded': check()}
    except Exception:
        report[check.__name__] = {'error': traceback.format_exc()}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def fresh_imports() -> dict:
    """What each step of PROBE found loaded (or its traceback), from one fresh interpreter."""
    library = sorted(_module_name(p) for p in _library())
    assert {"lit_sr.attacks", "lit_sr.plots", "lit_sr.poison.triggers"} <= set(library)
    script = f"POISON_MODULES = {POISON_MODULES!r}\nHEAVY = {HEAVY!r}\nLIBRARY = {library!r}\n{PROBE}"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def loaded_by(fresh_imports: dict, step: str) -> list[str]:
    """What ``step`` of PROBE found loaded; the step's traceback as the failure if it raised."""
    if "error" in fresh_imports[step]:
        pytest.fail(f"step {step} of the import probe raised:\n{fresh_imports[step]['error']}")
    return fresh_imports[step]["loaded"]


@pytest.mark.slow
def test_poison_modules_import_first_without_a_cycle_and_without_lightning(fresh_imports):
    assert loaded_by(fresh_imports, "poison_first") == []


@pytest.mark.slow
def test_importing_the_library_loads_neither_callbacks_nor_a_job(fresh_imports):
    # the library pulls in no callback, data module or job; the callbacks and data modules load no job
    assert loaded_by(fresh_imports, "library") == []
    assert loaded_by(fresh_imports, "callbacks_and_datamodules") == []


@pytest.mark.slow
def test_the_plots_the_report_and_the_attacks_draw_nothing_at_import_time(fresh_imports):
    assert loaded_by(fresh_imports, "drawing") == []
