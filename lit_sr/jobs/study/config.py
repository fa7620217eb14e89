"""A study file's schema (:class:`StudyConfig`) and what it expands into (:class:`Study`: the runs, the table).

The study file is read like every job's config (:mod:`lit_sr.jobs.parser`): jsonargparse checks
its keys and types against :class:`StudyConfig`, ``lit-sr study --print_config`` prints it, and
dotted flags override it (``--output_dir /tmp/x``, ``--overrides.trainer.max_epochs 2``). One thing
is the study's own: ``extends: <another study file>`` is resolved when the file is read
(:func:`read_raw`: the parent's keys under the child's; ``runs`` merge by name, overrides key by
key), so a quick variant states only what differs. The cross-field checks (a ``reference`` that
is a run, ``from_run``, the columns a verdict or a plot names, distinct run names) are
:class:`StudyConfig`'s ``__post_init__``.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser

from lit_sr.errors import ConfigError
from lit_sr.jobs.parser import job_parser, load_job_config, read_yaml
from lit_sr.recipes import resolve_config
from lit_sr.validation import check_fraction, check_positive

Format = Literal["rate", "pct", "db", "float", "int", "text", "paired_delta"]
FORMATS: tuple[str, ...] = Format.__args__


def _checked(fn, *args):
    try:
        return fn(*args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


@dataclass
class Column:
    """A column of the table: the dotted ``path`` into a run's results file (``@.`` is the run's row block).

    Args:
        path: ``a.b.c`` into the results file, or ``@.c`` into the row block.
        header: the column's header (default: ``path``).
        format: how a cell reads (:mod:`lit_sr.jobs.study.table`).
        baseline: ``paired_delta`` only: the difference is taken within the row, from the per-image
            values at this path of the same run (the backdoor's *own effect*, e.g.
            ``clean.attainment_per_image``: the clean model under the same trigger and label;
            :func:`lit_sr.poison.asr.own_effect`) instead of from the ``reference`` run's row.
        threshold: ``paired_delta`` with a ``baseline`` only: values at or above it count as successes
            before the difference is taken; ``None``: the values as they are.
    """

    path: str
    header: str | None = None
    format: Format = "float"
    baseline: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        self.header = self.path if self.header is None else str(self.header)
        if (self.baseline is not None or self.threshold is not None) and self.format != "paired_delta":
            raise ConfigError(f"columns[{self.header}]: baseline and threshold belong to a paired_delta column; "
                              f"got format {self.format!r}")
        if self.baseline is not None and not str(self.baseline):
            raise ConfigError(f"columns[{self.header}].baseline: expected a dotted path; got {self.baseline!r}")
        if self.threshold is not None and self.baseline is None:
            raise ConfigError(f"columns[{self.header}].threshold: a threshold needs a baseline (an own-effect column)")


@dataclass
class Verdict:
    """A rule that gives every run but the reference a verdict from its cells (the last column).

    Args:
        success_columns: ``rate`` columns; success when any reaches ``min_success``.
        min_success: the success threshold (a fraction).
        quality_column: a dB column that must stay within ``max_quality_change``; ``None``: no such check.
        max_quality_change: the allowed clean-quality change (dB).
        false_positive_columns: ``rate`` columns of the clean model that must stay below ``max_false_positive``.
        max_false_positive: their threshold (a fraction).
        positive: the verdict when the rule holds.
        negative: the verdict when it does not.
        own_effect_columns: own-effect columns (``paired_delta`` with a ``baseline``) whose 95% interval
            (its mean where one image gave no interval) must lie above ``min_own_effect``.
        min_own_effect: their threshold.
    """

    success_columns: list[str]
    min_success: float = 0.8
    quality_column: str | None = None
    max_quality_change: float = 0.5
    false_positive_columns: list[str] = field(default_factory=list)
    max_false_positive: float = 0.2
    positive: str = "implanted"
    negative: str = "not implanted at this scale"
    own_effect_columns: list[str] = field(default_factory=list)
    min_own_effect: float = 0.0

    def __post_init__(self) -> None:
        self.min_success = _checked(check_fraction, self.min_success, "verdict.min_success")
        self.max_false_positive = _checked(check_fraction, self.max_false_positive, "verdict.max_false_positive")
        self.max_quality_change = _checked(check_positive, self.max_quality_change, "verdict.max_quality_change")

    def columns(self) -> list[str]:
        return [*self.success_columns, *self.false_positive_columns, *self.own_effect_columns,
                *([self.quality_column] if self.quality_column else [])]

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
    """A PNG plot of the table: columns ``y`` against ``x``, one line per value of ``group``.

    ``x`` and ``group``: ``run``, a run parameter (a grid key or a run's ``params``) or a column header
    (checked when plotting). ``beside``: y header -> the header of a reference level drawn as a hatched
    bar beside each of its bars (``x: run`` only), e.g. the clean model's figure under the same trigger
    beside the arm's own.
    """

    name: str
    y: str | list[str]
    x: str = "run"
    group: str | None = None
    beside: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.y = [self.y] if isinstance(self.y, str) else list(self.y)
        self.beside = {str(k): str(v) for k, v in (self.beside or {}).items()}
        if self.beside and self.x != "run":
            raise ConfigError(f"plots[{self.name}].beside: beside bars need x: run; got x: {self.x!r}")
        for y in self.beside:
            if y not in self.y:
                raise ConfigError(f"plots[{self.name}].beside: {y!r} is not one of the plot's y {self.y}")


@dataclass
class Row:
    """Where a run's row reads its block: another run's results (``from_run``) and another ``block``."""

    from_run: str | None = None
    block: str | None = None


@dataclass
class RunSpec:
    """One explicit run of a study.

    Args:
        overrides: dotted or nested keys of the training config this run changes.
        config: the training config(s) of this run instead of the study's ``base_config``.
        results_file: the file the table reads (default: the study's).
        row: where its row reads its block.
        in_table: ``false``: run it without a row (e.g. a substitute network the other runs share).
        grid: ``false``: keep it out of the grid (run once, e.g. a clean reference).
        params: labels of the run for the plots' ``x`` and ``group`` (as a grid key would give), e.g.
            ``{arm: B, rung: 2}`` when the runs are listed one by one; ``run`` is reserved.
    """

    overrides: dict = field(default_factory=dict)
    config: str | list[str] | None = None
    results_file: str | None = None
    row: Row = field(default_factory=Row)
    in_table: bool = True
    grid: bool = True
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """An expanded run: its name, nested overrides, parameters (grid point) and configs."""

    name: str
    overrides: dict[str, Any]
    params: dict[str, Any]
    configs: list[str]
    results_file: str
    from_run: str | None = None
    block: str | None = None
    in_table: bool = True


@dataclass
class StudyConfig:
    """A study file (``configs/study/*.yaml``; the module docstring of :mod:`lit_sr.jobs.study.runner`).

    Args:
        name: the study's folder under ``output_dir``.
        base_config: the training config(s) every run starts from.
        columns: the table's columns.
        output_dir: the study goes to ``<output_dir>/<name>/``.
        train_script: a script run instead of ``python -m lit_sr`` (a test's stand-in).
        subcommand: the training command.
        overrides: dotted or nested keys every run changes.
        runs: run name -> :class:`RunSpec` (``null``: the defaults).
        grid: dotted key -> values; every combination is a run (crossed with every explicit run).
        results_file: the file of each run the table reads.
        block: the block of the results file a row reads (``@.`` paths).
        reference: the run the ``paired_delta`` columns compare with; it gets no verdict.
        plots: PNG plots of the table (default: one of its rates and deltas).
        verdict: a rule that adds a verdict column.
        python: the interpreter of the runs (default: this one).
        env: environment variables of the runs.
        anchors: YAML anchors (``&arm``) the runs merge (``<<: *arm``); ignored otherwise.

    The training overrides are plain ``dict``s, not ``dict[str, Any]``: jsonargparse would resolve a
    ``class_path`` in them and fill in every default, which changes the runs and their hashes.
    """

    name: str
    base_config: str | list[str]
    columns: list[Column]
    output_dir: str = "runs/study"
    train_script: str | None = None
    subcommand: Literal["fit", "validate", "test", "predict"] = "fit"
    overrides: dict = field(default_factory=dict)
    runs: dict[str, RunSpec | None] = field(default_factory=dict)
    grid: dict[str, list] | None = None
    results_file: str = "backdoor_summary.json"
    block: str = "backdoored"
    reference: str | None = None
    plots: list[Plot] = field(default_factory=list)
    verdict: Verdict | None = None
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    anchors: dict = field(default_factory=dict)
    source: str = field(default="<dict>", init=False)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: expected a folder name; got {self.name!r}")
        # a built-in recipe name, or a configs/ path read from the installed recipes outside a checkout
        self.base_config = [resolve_config(c, "train") for c in _as_list(self.base_config, "base_config")]
        if not self.columns:
            raise ConfigError("columns: expected a non-empty list of {header, path, format}")
        if self.grid is not None and (not self.grid or not all(self.grid.values())):
            raise ConfigError(f"grid: expected a mapping of dotted keys to non-empty lists of values; got {self.grid!r}")
        self.expanded = expand_runs(self)
        names = [r.name for r in self.expanded]
        if len(set(names)) != len(names):
            raise ConfigError(f"runs/grid: run names must be distinct; got {names}")
        for r in self.expanded:
            if r.from_run is not None and r.from_run not in names:
                raise ConfigError(f"runs.{r.name}.row.from_run: {r.from_run!r} is not a run of this study {names}")
        if self.reference is not None and self.reference not in names:
            raise ConfigError(f"reference: {self.reference!r} is not a run of this study {names}")
        headers = [c.header for c in self.columns]
        if len(set(headers)) != len(headers):
            raise ConfigError(f"columns: headers must be distinct; got {headers}")
        if any(c.format == "paired_delta" and c.baseline is None for c in self.columns) and self.reference is None:
            raise ConfigError("reference: a paired_delta column without a baseline needs a reference run")
        for name in self.verdict.columns() if self.verdict else []:
            if name not in headers:
                raise ConfigError(f"verdict: column {name!r} is not one of the table's headers {headers}")
        for i, plot in enumerate(self.plots):
            for y in plot.y:
                if y not in headers:
                    raise ConfigError(f"plots[{i}].y: {y!r} is not one of the table's headers {headers}")
            for y, ref in plot.beside.items():
                if ref not in headers:
                    raise ConfigError(f"plots[{i}].beside.{y}: {ref!r} is not one of the table's headers {headers}")


@dataclass
class Study:
    """A study ready to run: its expanded runs and its table's settings (built by :func:`load_study`)."""

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


def _as_list(value: str | list[str], key: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise ConfigError(f"{key}: expected a file name or a list of them")
    return values


def expand_dotted(flat: dict[str, Any], key: str) -> dict[str, Any]:
    """``{"data.init_args.eps": 0.1}`` -> ``{"data": {"init_args": {"eps": 0.1}}}`` (nested dicts kept,
    dotted and nested forms merged)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = str(dotted).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {dotted!r} sets a key below a value that is not a mapping")
        value = expand_dotted(value, f"{key}.{dotted}") if isinstance(value, dict) else value
        leaf = parts[-1]
        node[leaf] = merge(node[leaf], value) if isinstance(value, dict) and isinstance(node.get(leaf), dict) else value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``extra`` wins; lists and scalars are replaced, not merged."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _grid_points(grid: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _point_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def expand_runs(cfg: StudyConfig) -> list[Run]:
    """Every run of the study: each explicit run (or one unnamed run) crossed with every grid point."""
    common = expand_dotted(cfg.overrides, "overrides")
    runs = []
    for run_name, spec in (cfg.runs or {None: None}).items():
        spec = spec or RunSpec()
        key = f"runs.{run_name}"
        configs = ([resolve_config(c, "train") for c in _as_list(spec.config, f"{key}.config")]
                   if spec.config is not None else list(cfg.base_config))
        if "run" in spec.params:
            raise ConfigError(f"{key}.params: 'run' is reserved (the run's name); expected labels such as "
                              f"{{arm: B, rung: 2}}; got {spec.params!r}")
        for point in _grid_points(cfg.grid if spec.grid else None):
            name = "__".join(p for p in (run_name, _point_name(point)) if p) or "run"
            overrides = merge(merge(common, expand_dotted(spec.overrides, key)), expand_dotted(point, "grid"))
            params = {"run": name, **({"arm": run_name} if run_name else {}), **spec.params, **point}
            runs.append(Run(name, overrides, params, configs, spec.results_file or cfg.results_file,
                            spec.row.from_run, spec.row.block, spec.in_table))
    return runs


def read_raw(source: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a study file, with the study it ``extends`` merged under it (the child's
    keys win; ``runs`` merge by name, overrides key by key; the path is read from the current folder,
    else beside the file)."""
    if not source.is_file():
        raise FileNotFoundError(f"study config not found: {source}")
    raw = dict(read_yaml(source))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{source}: extends: expected a study file name; got {parent!r}")
    parent_path = Path(parent) if Path(parent).is_file() else source.parent / parent
    if not parent_path.is_file():  # a built-in study (``demo``, ``configs/study/demo.yaml`` outside a checkout)
        parent_path = Path(resolve_config(parent, "study"))
    if parent_path.resolve() in seen:
        raise ConfigError(f"{source}: extends: {parent} extends itself (through {[str(p) for p in seen]})")
    return merge(read_raw(parent_path, (*seen, source.resolve())), raw)


def config_parser(prog: str = "lit-sr study", description: str | None = None) -> ArgumentParser:
    """The parser of :class:`StudyConfig`; ``--config`` resolves ``extends:`` (:func:`read_raw`)."""
    return job_parser(StudyConfig, prog, description or "Many training runs from one study file, one table.",
                      "the study YAML file (configs/study/*.yaml)", read=lambda path: read_raw(Path(path)))


def to_study(cfg: StudyConfig) -> Study:
    """The runnable :class:`Study` of a validated :class:`StudyConfig`."""
    return Study(cfg.name, Path(cfg.source), Path(cfg.output_dir), list(cfg.base_config), cfg.train_script,
                 cfg.subcommand, cfg.expanded, cfg.columns, cfg.block, cfg.reference, cfg.plots, cfg.verdict,
                 cfg.python or sys.executable, {str(k): str(v) for k, v in cfg.env.items()})


def load_study(path: str | Path, overrides: tuple[str, ...] = ()) -> Study:
    """Read and check a study YAML file (errors name the file and the key); ``overrides`` as on the command line."""
    return to_study(load_job_config(config_parser(), path, overrides))
