"""Studies: one YAML file, many ``train.py`` runs, one table.

``lit-sr study --config configs/study/<name>.yaml [--dry-run] [--force] [--only RUN ...]``

A study is a base ``train.py`` config plus a set of runs, each a nested dict of overrides:
explicit ``runs`` (name -> overrides), a ``grid`` (dotted key -> list of values, every
combination a run), or both (every explicit run crossed with every grid point). Each run is a
``python -m lit_sr fit --config <base> --config <run dir>/overrides.yaml`` subprocess (so this
module imports neither ``callbacks`` nor ``datamodules``: the dependency rule holds), with the
TensorBoard logger pointed at ``<output_dir>/<name>/runs/<run>/``, its output in ``train.log``
there. A tqdm bar counts the runs.

**Resumable.** A run is finished when ``study_run.json`` in its folder says ``"status": "ok"``
with the same hash and its ``results_file`` exists; the hash covers the config file names and
contents, the overrides and the contents of every file they name (weights, nested configs;
:mod:`lit_sr.jobs.study.inputs`), so an edited base config or a retrained substitute reruns what read it; a finished run is not rerun
(``--force`` reruns). An unfinished run's folder is cleared before it starts again. A failed run
is recorded and the study goes on with the others; the exit code is 1 when any run failed.

**Table.** Every run's results file (``backdoor_summary.json``, written by
``callbacks.BackdoorSummary``) is read and the configured ``columns`` collected into
``results.csv``, ``results.json`` and ``results.md`` in ``<output_dir>/<name>/``, with PNG plots
beside them. A column is ``{header, path, format}``: ``path`` is a dotted key into the run's own
results file, or, starting with ``@.``, into the run's *row block* (``block``, default
``backdoored``: the backdoored model's figures; a run may take its row from another run's block,
``row: {from_run: A, block: clean}``, as the clean reference of a demo does; a run's own
``config`` replaces ``base_config`` for it; ``in_table: false`` runs it without a row, e.g. the
training of a substitute network the other runs share; ``grid: false`` keeps a run out of the
grid, run once, e.g. a clean reference; ``params: {arm: B, rung: 2}`` labels a run for the plots'
``x`` and ``group``, as a grid key would, when the runs are listed one by one). Formats: ``rate``
(reads ``<path>``, ``<path>_success``, ``<path>_included``: "85.7% (6/7)" or
"n/a (0 included)"), ``pct``, ``db``, ``float``, ``int``, ``text`` and ``paired_delta`` (``path``
holds per-image values; the column is the mean difference from the ``reference`` run's row, with
a paired 95% Student-t interval over the images; with ``baseline: <path>`` the difference is
taken within the row, from the per-image values at that path of the same run, e.g. the
backdoor's *own effect*, ``@.attainment_per_image`` minus ``clean.attainment_per_image``, the
clean model under the same trigger and label (:func:`lit_sr.poison.asr.own_effect`;
``threshold: 0.5`` turns the values into successes first). An optional ``verdict`` rule adds a last
column and states the rule under the Markdown table.

A study may ``extends: <another study file>`` and change only what differs (a quick variant).
A top-level ``anchors`` mapping is ignored: it holds YAML anchors (``&arm``) that runs merge
(``<<: *arm``). Placeholders ``{study_dir}`` and ``{runs_dir}`` in override strings are replaced by the study's
folder and its ``runs`` folder (so a run can name another run's ``weights.pth``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_sr.child_process import run_child
from lit_sr.errors import ConfigError
from lit_sr.io import atomic_write
from lit_sr.jobs.study.inputs import changed_inputs, input_digests
from lit_sr.run_folder import RunFolderLock, RunFolderLockedError

FORMATS = ("rate", "pct", "db", "float", "int", "text", "paired_delta")
STUDY_KEYS = {"name", "output_dir", "base_config", "train_script", "subcommand", "overrides", "runs", "grid",
              "results_file", "block", "reference", "columns", "plots", "verdict", "python", "env", "anchors"}
RUN_KEYS = {"overrides", "config", "results_file", "row", "in_table", "grid", "params"}
NOT_APPLICABLE = "n/a (0 included)"
MISSING = "-"


# --------------------------------------------------------------------------- configuration


@dataclass
class Column:
    header: str
    path: str
    format: str = "float"
    baseline: str | None = None
    threshold: float | None = None


@dataclass
class Run:
    name: str
    overrides: dict[str, Any]
    params: dict[str, Any]
    configs: list[str]
    results_file: str
    from_run: str | None = None
    block: str | None = None
    in_table: bool = True


@dataclass
class Verdict:
    success_columns: list[str]
    min_success: float
    quality_column: str | None
    max_quality_change: float
    false_positive_columns: list[str] = field(default_factory=list)
    max_false_positive: float = 0.2
    positive: str = "implanted"
    negative: str = "not implanted at this scale"
    own_effect_columns: list[str] = field(default_factory=list)
    min_own_effect: float = 0.0

    def rule(self) -> str:
        success = " or ".join(f"`{c}`" for c in self.success_columns)
        text = f"**{self.positive}** when {success} is at least {self.min_success:.0%}"
        if self.false_positive_columns:
            fp = ", ".join(f"`{c}`" for c in self.false_positive_columns)
            text += f" while {fp} (the clean model under the same trigger) stays below {self.max_false_positive:.0%}"
        if self.own_effect_columns:
            own = ", ".join(f"`{c}`" for c in self.own_effect_columns)
            text += f", the 95% interval of {own} lies above {self.min_own_effect:g}"
        if self.quality_column:
            text += f" and `{self.quality_column}` is within ±{self.max_quality_change:g} dB"
        return text + f"; otherwise **{self.negative}**. The reference run gets no verdict."


@dataclass
class Plot:
    name: str
    y: list[str]
    x: str = "run"
    group: str | None = None
    # y header -> the header of a reference level drawn beside each bar (x: run only), e.g. the
    # clean model's figure under the same trigger beside the arm's own
    beside: dict[str, str] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    source: Path
    output_dir: Path
    base_configs: list[str]
    train_script: str | None  # None: ``python -m lit_sr``; a script path (a test's stand-in) replaces it
    subcommand: str
    runs: list[Run]
    columns: list[Column]
    block: str
    reference: str | None
    plots: list[Plot]
    verdict: Verdict | None
    python: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def study_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def runs_dir(self) -> Path:
        return self.study_dir / "runs"


def _fail(source: Path, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def expand_dotted(flat: dict[str, Any], source: Path, key: str) -> dict[str, Any]:
    """``{"data.init_args.eps": 0.1}`` -> ``{"data": {"init_args": {"eps": 0.1}}}`` (nested dicts kept,
    dotted and nested forms merged)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        if not isinstance(dotted, str) or not dotted:
            raise _fail(source, key, f"override keys must be non-empty strings; got {dotted!r}")
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _fail(source, key, f"{dotted!r} sets a key below a value that is not a mapping")
        value = expand_dotted(value, source, f"{key}.{dotted}") if isinstance(value, dict) else value
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = merge(node[leaf], value)
        else:
            node[leaf] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``extra`` wins; lists and scalars are replaced, not merged."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _as_list(value: Any, source: Path, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise _fail(source, key, f"expected a file name or a list of them; got {value!r}")


def _grid_points(grid: Any, source: Path) -> list[dict[str, Any]]:
    if grid is None:
        return [{}]
    if not isinstance(grid, dict) or not grid:
        raise _fail(source, "grid", f"expected a mapping of dotted keys to lists of values; got {grid!r}")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(source, f"grid.{k}", f"expected a non-empty list of values; got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _point_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def _columns(raw: Any, source: Path) -> list[Column]:
    if not isinstance(raw, list) or not raw:
        raise _fail(source, "columns", "expected a non-empty list of {header, path, format}")
    cols = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or set(c) - {"header", "path", "format", "baseline", "threshold"} or "path" not in c:
            raise _fail(source, f"columns[{i}]", f"expected {{header, path, format[, baseline, threshold]}}; got {c!r}")
        fmt = c.get("format", "float")
        if fmt not in FORMATS:
            raise _fail(source, f"columns[{i}].format", f"must be one of {list(FORMATS)}; got {fmt!r}")
        baseline, threshold = c.get("baseline"), c.get("threshold")
        if (baseline is not None or threshold is not None) and fmt != "paired_delta":
            raise _fail(source, f"columns[{i}]", "baseline and threshold belong to a paired_delta column")
        if baseline is not None and (not isinstance(baseline, str) or not baseline):
            raise _fail(source, f"columns[{i}].baseline", f"expected a dotted path; got {baseline!r}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise _fail(source, f"columns[{i}].threshold", f"expected a number; got {threshold!r}")
        cols.append(Column(str(c.get("header", c["path"])), str(c["path"]), fmt, baseline,
                           None if threshold is None else float(threshold)))
    headers = [c.header for c in cols]
    if len(set(headers)) != len(headers):
        raise _fail(source, "columns", f"headers must be distinct; got {headers}")
    return cols


def _verdict(raw: Any, source: Path, headers: list[str]) -> Verdict | None:
    if raw is None:
        return None
    allowed = {"success_columns", "min_success", "quality_column", "max_quality_change", "false_positive_columns",
               "max_false_positive", "positive", "negative", "own_effect_columns", "min_own_effect"}
    if not isinstance(raw, dict) or set(raw) - allowed or "success_columns" not in raw:
        raise _fail(source, "verdict", f"expected a mapping with keys {sorted(allowed)} (success_columns required)")
    v = Verdict(list(raw["success_columns"]), float(raw.get("min_success", 0.8)), raw.get("quality_column"),
                float(raw.get("max_quality_change", 0.5)), list(raw.get("false_positive_columns") or []),
                float(raw.get("max_false_positive", 0.2)), raw.get("positive", "implanted"),
                raw.get("negative", "not implanted at this scale"), list(raw.get("own_effect_columns") or []),
                float(raw.get("min_own_effect", 0.0)))
    for name in (v.success_columns + v.false_positive_columns + v.own_effect_columns
                 + ([v.quality_column] if v.quality_column else [])):
        if name not in headers:
            raise _fail(source, "verdict", f"column {name!r} is not one of the table's headers {headers}")
    return v


def _plots(raw: Any, source: Path, headers: list[str]) -> list[Plot]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _fail(source, "plots", "expected a list of {name, y, x, group}")
    plots = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or set(p) - {"name", "x", "y", "group", "beside"} or "y" not in p or "name" not in p:
            raise _fail(source, f"plots[{i}]", f"expected {{name, y, x, group, beside}}; got {p!r}")
        ys = [p["y"]] if isinstance(p["y"], str) else list(p["y"])
        for y in ys:
            if y not in headers:
                raise _fail(source, f"plots[{i}].y", f"{y!r} is not one of the table's headers {headers}")
        beside = p.get("beside") or {}
        if not isinstance(beside, dict):
            raise _fail(source, f"plots[{i}].beside", f"expected a mapping of y headers to headers; got {beside!r}")
        for y, ref in beside.items():
            if y not in ys or ref not in headers:
                raise _fail(source, f"plots[{i}].beside", f"{y!r}: {ref!r} must map one of the plot's y {ys} to one "
                                                          f"of the table's headers {headers}")
        if beside and p.get("x", "run") != "run":
            raise _fail(source, f"plots[{i}].beside", "beside bars need x: run")
        plots.append(Plot(str(p["name"]), ys, str(p.get("x", "run")), p.get("group"), dict(beside)))
        # x and group: "run", a run parameter (a grid key) or a column header (checked when plotting)
    return plots


def read_raw(source: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a study file, with the study it ``extends`` merged under it (the child's
    keys win; ``runs`` merge by name, overrides key by key; the path is read from the current folder,
    else beside the file)."""
    import yaml

    if not source.is_file():
        raise FileNotFoundError(f"study config not found: {source}")
    raw = yaml.safe_load(source.read_text())
    if not isinstance(raw, dict):
        raise _fail(source, "<top level>", "expected a mapping")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise _fail(source, "extends", f"expected a study file name; got {parent!r}")
    parent_path = Path(parent) if Path(parent).is_file() else source.parent / parent
    if parent_path.resolve() in seen:
        raise _fail(source, "extends", f"{parent} extends itself (through {[str(p) for p in seen]})")
    base = read_raw(parent_path, (*seen, source.resolve()))
    return merge(base, raw)


def load_study(path: str | os.PathLike) -> Study:
    """Read and check a study YAML file (errors name the file and the key)."""
    source = Path(path)
    raw = read_raw(source)
    unknown = set(raw) - STUDY_KEYS
    if unknown:
        raise _fail(source, ", ".join(sorted(unknown)), f"unknown key(s); allowed: {sorted(STUDY_KEYS)}")
    for key in ("name", "base_config", "columns"):
        if key not in raw:
            raise _fail(source, key, "missing (required)")
    name = raw["name"]
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail(source, "name", f"expected a folder name; got {name!r}")
    base_configs = _as_list(raw["base_config"], source, "base_config")
    common = expand_dotted(raw.get("overrides") or {}, source, "overrides")
    results_file = raw.get("results_file", "backdoor_summary.json")
    explicit = raw.get("runs") or {None: {}}
    if not isinstance(explicit, dict):
        raise _fail(source, "runs", "expected a mapping of run names to {overrides, config, results_file, row}")
    runs = []
    for run_name, spec in explicit.items():
        spec = spec or {}
        key = f"runs.{run_name}"
        if not isinstance(spec, dict) or set(spec) - RUN_KEYS:
            raise _fail(source, key, f"expected a mapping with keys among {sorted(RUN_KEYS)}; got {spec!r}")
        row = spec.get("row") or {}
        if not isinstance(row, dict) or set(row) - {"from_run", "block"}:
            raise _fail(source, f"{key}.row", f"expected {{from_run, block}}; got {row!r}")
        labels = spec.get("params") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and k not in ("run",) for k in labels):
            raise _fail(source, f"{key}.params", f"expected a mapping of parameter names (not 'run') to values, "
                                                 f"e.g. {{arm: B, rung: 2}}; got {labels!r}")
        crossed = spec.get("grid", True)
        if not isinstance(crossed, bool):
            raise _fail(source, f"{key}.grid", f"expected true or false; got {crossed!r}")
        for point in _grid_points(raw.get("grid") if crossed else None, source):
            parts = [p for p in (run_name, _point_name(point)) if p]
            overrides = merge(merge(common, expand_dotted(spec.get("overrides") or {}, source, key)),
                              expand_dotted(point, source, "grid"))
            params = {"run": "__".join(parts) or "run", **({"arm": run_name} if run_name else {}), **labels, **point}
            configs = _as_list(spec["config"], source, f"{key}.config") if "config" in spec else base_configs
            in_table = spec.get("in_table", True)
            if not isinstance(in_table, bool):
                raise _fail(source, f"{key}.in_table", f"expected true or false; got {in_table!r}")
            runs.append(Run("__".join(parts) or "run", overrides, params, configs,
                            spec.get("results_file", results_file), row.get("from_run"), row.get("block"), in_table))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise _fail(source, "runs/grid", f"run names must be distinct; got {names}")
    for r in runs:
        if r.from_run is not None and r.from_run not in names:
            raise _fail(source, f"runs.{r.name}.row.from_run", f"{r.from_run!r} is not a run of this study {names}")
    reference = raw.get("reference")
    if reference is not None and reference not in names:
        raise _fail(source, "reference", f"{reference!r} is not a run of this study {names}")
    columns = _columns(raw["columns"], source)
    headers = [c.header for c in columns]
    if any(c.format == "paired_delta" and c.baseline is None for c in columns) and reference is None:
        raise _fail(source, "reference", "a paired_delta column without a baseline needs a reference run")
    return Study(name, source, Path(raw.get("output_dir", "runs/study")), base_configs,
                 raw.get("train_script"), raw.get("subcommand", "fit"), runs, columns,
                 raw.get("block", "backdoored"), reference, _plots(raw.get("plots"), source, headers),
                 _verdict(raw.get("verdict"), source, headers), raw.get("python") or sys.executable,
                 {str(k): str(v) for k, v in (raw.get("env") or {}).items()})


# --------------------------------------------------------------------------- running


def _substitute(value: Any, study: Study) -> Any:
    if isinstance(value, str):
        return value.replace("{study_dir}", str(study.study_dir)).replace("{runs_dir}", str(study.runs_dir))
    if isinstance(value, dict):
        return {k: _substitute(v, study) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, study) for v in value]
    return value


def run_overrides(study: Study, run: Run) -> dict[str, Any]:
    """The run's overrides with its TensorBoard logger pointed at ``<runs_dir>/<run>/``."""
    logger = {"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                     "init_args": {"save_dir": str(study.runs_dir), "name": "",
                                                   "version": run.name, "default_hp_metric": False}}}}
    return merge(_substitute(run.overrides, study), logger)


def run_inputs(study: Study, run: Run) -> dict[str, str]:
    """sha256 of every file the run reads: its config files and the files they and its overrides name.

    See :mod:`lit_sr.jobs.study.inputs`; the run's own folder (its outputs) is left out.
    """
    return input_digests(run.configs, run_overrides(study, run), exclude=[study.runs_dir / run.name])


def run_hash(study: Study, run: Run, inputs: dict[str, str] | None = None) -> str:
    """What decides a run's result: its configs (names and contents), overrides, the files they
    name (contents) and the command (12 hex digits)."""
    inputs = run_inputs(study, run) if inputs is None else inputs
    blob = json.dumps({"configs": run.configs, "overrides": run_overrides(study, run), "script": study.train_script or "-m lit_sr",
                       "subcommand": study.subcommand, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_command(study: Study, run: Run) -> list[str]:
    configs = [a for c in run.configs for a in ("--config", c)]
    entry = [study.train_script] if study.train_script else ["-m", "lit_sr"]
    return [study.python, *entry, study.subcommand, *configs,
            "--config", str(study.runs_dir / run.name / "overrides.yaml")]


def why_rerun(study: Study, run: Run) -> str:
    """Why ``run`` is not finished ("" when it is): never run, failed, or which of its inputs changed.

    A run is finished when ``study_run.json`` says ok for the same hash (configs, overrides,
    inputs) and its results file exists.
    """
    folder = study.runs_dir / run.name
    meta = read_json(folder / "study_run.json")
    if not meta:
        return "not run before"
    if meta.get("status") != "ok":
        return f"its last try {meta.get('status')}"
    if not (folder / run.results_file).is_file():
        return f"its {run.results_file} is gone"
    inputs = run_inputs(study, run)
    if meta.get("hash") == run_hash(study, run, inputs):
        return ""
    changed = changed_inputs(meta.get("inputs", {}), inputs) if "inputs" in meta else []
    return ("changed since its last run: " + ", ".join(changed)) if changed else "its configs or overrides changed"


def read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rerun that run") from e


def execute(study: Study, run: Run) -> dict[str, Any]:
    """Run one ``train.py`` subprocess; returns (and writes) its ``study_run.json``.

    The run folder is locked first (:class:`lit_sr.run_folder.RunFolderLock`, held by the child
    too): a second runner on it raises :class:`lit_sr.run_folder.RunFolderLockedError` before
    anything is deleted. The child dies with this process (:func:`lit_sr.child_process.run_child`).
    """
    folder = study.runs_dir / run.name
    with RunFolderLock(folder) as lock:
        return _execute_locked(study, run, folder, lock)


def _execute_locked(study: Study, run: Run, folder: Path, lock: RunFolderLock) -> dict[str, Any]:
    import yaml

    if folder.exists():  # an unfinished or outdated run: start clean (TensorBoard would append)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with atomic_write(folder / "overrides.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(run_overrides(study, run), sort_keys=False))
    command = run_command(study, run)
    env = dict(os.environ, **study.env)
    inputs = run_inputs(study, run)  # before the run: what it read, not what it may have rewritten
    digest = run_hash(study, run, inputs)
    start = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        rc = run_child(command, stdout=log, env=env, pass_fds=lock.fds)
    wall = time.perf_counter() - start
    ok = rc == 0 and (folder / run.results_file).is_file()
    meta = {"run": run.name, "status": "ok" if ok else "failed", "returncode": rc, "wall_s": round(wall, 1),
            "hash": digest, "inputs": inputs, "command": command, "params": run.params,
            "results_file": run.results_file}
    if rc == 0 and not ok:
        meta["error"] = f"train.py exited 0 but wrote no {run.results_file}"
    with atomic_write(folder / "study_run.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    return meta


def log_tail(study: Study, run: Run, lines: int = 25) -> str:
    path = study.runs_dir / run.name / "train.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def run_study(study: Study, force: bool = False, only: Sequence[str] = (), dry_run: bool = False) -> list[dict]:
    """Run every unfinished run in order (tqdm bar); returns each run's ``study_run.json`` content."""
    from tqdm import tqdm

    selected = [r for r in study.runs if not only or r.name in only]
    unknown = set(only) - {r.name for r in study.runs}
    if unknown:
        raise ValueError(f"--only names unknown runs {sorted(unknown)}; the study has {[r.name for r in study.runs]}")
    metas = []
    bar = tqdm(selected, desc=f"study {study.name}", unit="run", disable=dry_run)
    for run in bar:
        if dry_run:
            print(" ".join(run_command(study, run)))
            continue
        reason = "--force" if force else why_rerun(study, run)
        if not reason:
            bar.write(f"{run.name}: finished before, not rerun")
            metas.append(read_json(study.runs_dir / run.name / "study_run.json"))
            continue
        if reason.startswith("changed"):
            bar.write(f"{run.name}: rerun, {reason}")
        bar.set_postfix_str(run.name)
        try:
            meta = execute(study, run)
        except RunFolderLockedError as error:  # another runner owns it: touch nothing, say so
            bar.write(f"{run.name}: {error}")
            metas.append({"run": run.name, "status": "locked", "error": str(error)})
            continue
        bar.write(f"{run.name}: {meta['status']} in {meta['wall_s']:.0f} s "
                  f"(log: {study.runs_dir / run.name / 'train.log'})")
        if meta["status"] != "ok":
            bar.write(log_tail(study, run))
        metas.append(meta)
    return metas
