"""Studies: one YAML file, many ``train.py`` runs, one table.

``lit-sr study --config configs/study/<name>.yaml [--dry-run] [--force] [--only RUN ...]``

The file's schema is :class:`lit_sr.jobs.study.config.StudyConfig` (``lit-sr study --print_config``
prints it filled in; dotted flags override it, docs/configs.md).

A study is a base ``train.py`` config plus a set of runs, each a nested dict of overrides:
explicit ``runs`` (name -> overrides), a ``grid`` (dotted key -> list of values, every
combination a run), or both (every explicit run crossed with every grid point). Each run is a
``python -m lit_sr fit --config <base> --config <run dir>/overrides.yaml`` subprocess (so this
module imports neither ``callbacks`` nor ``datamodules``: the dependency rule holds), with the
logger pointed at ``<output_dir>/<name>/runs/<run>/`` (the logger the study file sets under
``trainer.logger``, TensorBoard when it sets none: :func:`run_logger`), its output in ``train.log``
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
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_sr.child_process import run_child
from lit_sr.errors import ConfigError
from lit_sr.io import atomic_write
from lit_sr.jobs.study.config import (
    FORMATS,
    Column,
    Plot,
    Run,
    Study,
    Verdict,
    expand_dotted,
    load_study,
    merge,
    read_raw,
)
from lit_sr.jobs.study.inputs import changed_inputs, input_digests
from lit_sr.run_folder import RunFolderLock, RunFolderLockedError

__all__ = ["FORMATS", "MISSING", "NOT_APPLICABLE", "Column", "Plot", "Run", "Study", "Verdict", "execute",
           "expand_dotted", "load_study", "merge", "read_raw", "run_study", "why_rerun"]

NOT_APPLICABLE = "n/a (0 included)"
MISSING = "-"


# --------------------------------------------------------------------------- running


def _substitute(value: Any, study: Study) -> Any:
    if isinstance(value, str):
        return value.replace("{study_dir}", str(study.study_dir)).replace("{runs_dir}", str(study.runs_dir))
    if isinstance(value, dict):
        return {k: _substitute(v, study) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, study) for v in value]
    return value


def _logger_class(spec: Any) -> str | None:
    """The class name (last dotted part) of a ``{class_path, init_args}`` logger entry, else ``None``."""
    if isinstance(spec, dict) and isinstance(spec.get("class_path"), str):
        return spec["class_path"].rsplit(".", 1)[-1]
    return None


def _point_logger(spec: dict[str, Any], study: Study, run: Run) -> dict[str, Any] | None:
    """``spec`` with the init args that put its ``trainer.log_dir`` in ``<runs_dir>/<run>/``, or
    ``None`` for a logger that cannot be pointed there (an unknown class, MLflow on a server)."""
    args = dict(spec.get("init_args") or {})
    folder = str(study.runs_dir / run.name)
    name = _logger_class(spec)
    if name in ("TensorBoardLogger", "CSVLogger"):
        args.update(save_dir=str(study.runs_dir), name="", version=run.name)
    elif name == "WandbLogger":  # trainer.log_dir is the logger's save_dir
        args["save_dir"] = folder
        args.setdefault("name", run.name)
    elif name == "MLFlowLogger":  # trainer.log_dir is the path of a file: tracking URI
        uri = args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if uri and not str(uri).startswith("file:"):
            return None
        args["tracking_uri"] = f"file:{Path(folder).resolve()}"
        args.setdefault("run_name", run.name)
    else:
        return None
    return {**spec, "init_args": args}


def run_logger(study: Study, run: Run, logger: Any = None) -> Any:
    """The ``trainer.logger`` value of a run: the study file's own logger(s) pointed at ``<runs_dir>/<run>/``,
    or TensorBoard there when the study file sets none.

    The run's outputs (``weights.pth``, the results file) go to ``trainer.log_dir``, which Lightning takes
    from the first logger; the study reads them from the run's folder, so the first logger is pointed
    there (TensorBoard and CSV: ``save_dir``/``version``; W&B: ``save_dir``; MLflow: a ``file:`` tracking
    URI in the folder). A first logger that cannot be pointed there (MLflow on a tracking server, a class
    the study does not know) is kept as the study file sets it, behind a ``CSVLogger`` in the run's
    folder that holds the outputs. ``logger: false`` (no logger) keeps no logger; the outputs then go to
    ``trainer.default_root_dir``, which the study sets to the run's folder (see :func:`run_overrides`).
    """
    if logger is False:
        return False
    if logger is None or logger is True:
        return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(study.runs_dir), "name": "", "version": run.name,
                              "default_hp_metric": False}}
    loggers = list(logger) if isinstance(logger, list) else [logger]
    if not loggers:
        return False
    for i, spec in enumerate(loggers):
        if _logger_class(spec) is None:
            raise ConfigError(f"{study.source}: trainer.logger[{i}] of run {run.name!r}: expected "
                                   f"{{class_path, init_args}}; got {spec!r}")
    first = _point_logger(loggers[0], study, run)
    if first is None:
        csv = {"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": str(study.runs_dir), "name": "", "version": run.name}}
        out = [csv, *loggers]
    else:
        out = [first, *loggers[1:]]
    return out if isinstance(logger, list) or len(out) > 1 else out[0]


def run_overrides(study: Study, run: Run) -> dict[str, Any]:
    """The run's overrides with its logger pointed at ``<runs_dir>/<run>/`` (:func:`run_logger`)."""
    overrides = _substitute(run.overrides, study)
    trainer = overrides.get("trainer") if isinstance(overrides.get("trainer"), dict) else {}
    logger = run_logger(study, run, trainer.get("logger"))
    placed: dict[str, Any] = {"logger": logger}
    if logger is False:
        placed["default_root_dir"] = str(study.runs_dir / run.name)
    return {**overrides, "trainer": {**trainer, **placed}}


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


def write_overrides(study: Study, run: Run) -> Path:
    """Write ``<runs_dir>/<run>/overrides.yaml``, the last ``--config`` of the run's command."""
    import yaml

    path = study.runs_dir / run.name / "overrides.yaml"
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(run_overrides(study, run), sort_keys=False))
    return path


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

    if folder.exists():  # an unfinished or outdated run: start clean (TensorBoard would append)
        shutil.rmtree(folder)
    write_overrides(study, run)
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
        if dry_run:  # the override file the command names is written, so the command can be run by hand
            write_overrides(study, run)
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
