"""The table of a study (:mod:`lit_sr.jobs.study.runner`): cells read from each run's results, a verdict, and
the CSV / JSON / Markdown / PNG files.

Cells keep their raw form until written: a :class:`RateCell` (successes over included; "n/a (0
included)" with nothing included, never NaN), a :class:`DeltaCell` (a paired mean difference
with its 95% Student-t interval over the validation images), a number, a string or ``None``
(printed "-": the figure is not in that run's results).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_sr.extras import require_extra
from lit_sr.io import atomic_write
from lit_sr.jobs.study.runner import MISSING, NOT_APPLICABLE, Column, Plot, Run, Study, read_json
from lit_sr.tables import markdown_lines


@dataclass(frozen=True)
class RateCell:
    success: float
    included: float

    @property
    def value(self) -> float | None:
        return self.success / self.included if self.included else None

    def __str__(self) -> str:
        if not self.included:
            return NOT_APPLICABLE
        return f"{self.value:.1%} ({int(self.success)}/{int(self.included)})"


@dataclass(frozen=True)
class DeltaCell:
    """Mean of paired differences ``row - reference`` with a 95% Student-t interval."""

    mean: float
    low: float | None
    high: float | None
    n: int
    is_reference: bool = False

    @property
    def value(self) -> float:
        return self.mean

    def __str__(self) -> str:
        if self.is_reference:
            return "0 (reference)"
        if self.low is None:
            return f"{self.mean:+.2f} (n={self.n})"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_delta(values: list[float], reference: list[float], confidence: float = 0.95) -> DeltaCell:
    """Mean of ``values[i] - reference[i]`` and its two-sided Student-t interval
    (:func:`lit_sr.poison.asr.paired_difference`; no interval for one image). Non-finite pairs (an
    infinite PSNR) are left out."""
    from lit_sr.poison.asr import paired_difference

    d = paired_difference(values, reference, confidence)
    return DeltaCell(d.mean, d.low, d.high, d.n)


def lookup(tree: Any, path: str) -> Any:
    """``tree["a"]["b"]`` for ``path = "a.b"``; ``None`` when a key is missing."""
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class RowSource:
    """What a run's cells are read from: its own results file (with its ``study_run.json`` under
    ``study``) and its row block (possibly another run's)."""

    own: dict[str, Any]
    block: dict[str, Any]

    def get(self, path: str) -> Any:
        return lookup(self.block, path[2:]) if path.startswith("@.") else lookup(self.own, path)


def _results(study: Study, run: Run) -> dict[str, Any]:
    folder = study.runs_dir / run.name
    own = read_json(folder / run.results_file) if run.results_file.endswith(".json") else None
    return dict(own or {}, study=read_json(folder / "study_run.json") or {})


def row_sources(study: Study) -> dict[str, RowSource]:
    results = {run.name: _results(study, run) for run in study.runs}
    sources = {}
    for run in study.runs:
        block_tree = results[run.from_run or run.name].get(run.block or study.block)
        sources[run.name] = RowSource(results[run.name], block_tree if isinstance(block_tree, dict) else {})
    return sources


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def cell(column: Column, source: RowSource, reference: RowSource | None, is_reference: bool) -> Any:
    """One cell's raw value (see the module docstring)."""
    value = source.get(column.path)
    if column.format == "rate":
        success, included = source.get(column.path + "_success"), source.get(column.path + "_included")
        if _number(included) is not None and _number(success) is not None:
            return RateCell(float(success), float(included))
        return _number(value)
    if column.format == "paired_delta" and column.baseline is not None:
        return own_effect_cell(column, source, is_reference)
    if column.format == "paired_delta":
        if not isinstance(value, list) or reference is None:
            return None
        ref_values = reference.get(column.path)
        if not isinstance(ref_values, list):
            return None
        delta = paired_delta([float(v) for v in value], [float(v) for v in ref_values])
        return DeltaCell(0.0, 0.0, 0.0, delta.n, True) if is_reference else delta
    if column.format == "text":
        return None if value is None else str(value)
    return _number(value)


def own_effect_cell(column: Column, source: RowSource, is_reference: bool) -> DeltaCell | None:
    """A within-row paired difference: the per-image values at ``column.path`` minus those at
    ``column.baseline`` (:func:`lit_sr.poison.asr.own_effect`, e.g. the backdoored model's
    attainment minus the clean model's under the same trigger). The reference row reads
    "0 (reference)"; a row without both lists (or without a defined pair) reads "-"; lists of
    different lengths are an error."""
    from lit_sr.poison.asr import own_effect

    if is_reference:
        return DeltaCell(0.0, 0.0, 0.0, 0, True)
    values, base = source.get(column.path), source.get(column.baseline)
    if not isinstance(values, list) or not isinstance(base, list):
        return None
    if len(values) != len(base):
        raise ValueError(f"column {column.header!r}: {column.path} has {len(values)} images but {column.baseline} "
                         f"has {len(base)}; a paired difference needs the same images")
    if not any(isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b)
               for a, b in zip(values, base)):
        return None  # no image with a defined value in both: nothing to compare
    d = own_effect(values, base, column.threshold)
    return DeltaCell(d.mean, d.low, d.high, d.n)


def fmt(value: Any, format: str) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (RateCell, DeltaCell, str)):
        return str(value)
    return {"pct": "{:.1%}", "db": "{:.2f}", "float": "{:.4g}", "int": "{:.0f}", "rate": "{:.1%}"}.get(
        format, "{}").format(value)


def verdict(study: Study, cells: dict[str, Any], is_reference: bool) -> str:
    """The study's verdict rule (``Verdict.rule``) on one row's cells."""
    v = study.verdict
    if v is None:
        return ""
    if is_reference:
        return "reference"
    rates = [r for r in (_numeric(cells[h]) for h in v.success_columns) if r is not None]
    quality_ok = True
    if v.quality_column:
        q = _numeric(cells[v.quality_column])
        if q is None:
            return f"n/a (no {v.quality_column})"
        quality_ok = abs(q) <= v.max_quality_change
    if not rates:
        return "n/a (no success figure)"
    false_positives = [r for r in (_numeric(cells[h]) for h in v.false_positive_columns) if r is not None]
    fp_ok = all(r < v.max_false_positive for r in false_positives)
    own_ok = True
    for header in v.own_effect_columns:
        own = cells[header]
        if not isinstance(own, DeltaCell):
            return f"n/a (no {header})"
        # the interval's lower bound (the mean where one image gave no interval)
        own_ok &= (own.mean if own.low is None else own.low) > v.min_own_effect
    return v.positive if max(rates) >= v.min_success and quality_ok and fp_ok and own_ok else v.negative


def table(study: Study) -> list[dict[str, Any]]:
    """One dict per run: ``run``, ``params``, ``status``, ``wall_s``, ``cells`` (header -> raw) and
    ``verdict``."""
    sources = row_sources(study)
    reference = sources.get(study.reference) if study.reference else None
    rows = []
    for run in (r for r in study.runs if r.in_table):
        src = sources[run.name]
        is_ref = run.name == study.reference
        cells = {c.header: cell(c, src, reference, is_ref) for c in study.columns}
        meta = src.own.get("study") or {}
        status = meta.get("status", "not run")
        rows.append({"run": run.name, "params": run.params, "status": status, "wall_s": meta.get("wall_s"),
                     "cells": cells, "verdict": verdict(study, cells, is_ref) if status == "ok" else MISSING})
    return rows


def _json_cell(v: Any) -> Any:
    if isinstance(v, RateCell):
        return {"rate": v.value, "success": v.success, "included": v.included, "text": str(v)}
    if isinstance(v, DeltaCell):
        return {"mean": v.mean, "ci95": [v.low, v.high], "n": v.n, "text": str(v)}
    return v


def markdown(study: Study, rows: list[dict[str, Any]]) -> str:
    headers = ["run", *[c.header for c in study.columns], *(["verdict"] if study.verdict else [])]
    table = [[row["run"] + ("" if row["status"] == "ok" else f" ({row['status']})"),
              *[fmt(row["cells"][c.header], c.format) for c in study.columns],
              *([row["verdict"]] if study.verdict else [])] for row in rows]
    lines = [f"## Study `{study.name}` ({study.source})", "", *markdown_lines(headers, table)]
    notes = ["", "Rates read successes/included; \"n/a (0 included)\" when no image was included; "
             "\"-\" when the run's results lack the figure."]
    if any(c.format == "paired_delta" and c.baseline is None for c in study.columns):
        notes.append(f"Differences are paired over the validation images against `{study.reference}`, "
                     "mean [95% Student-t interval].")
    if any(c.format == "paired_delta" and c.baseline is not None for c in study.columns):
        notes.append("Own effects are paired within each row over the validation images (the run's model minus "
                     "the clean model under the same trigger and label), mean [95% Student-t interval].")
    if study.verdict:
        notes.append("Verdict: " + study.verdict.rule())
    timed = [(r["run"], r["wall_s"]) for r in rows if r["wall_s"] is not None]
    if timed:
        each = ", ".join(f"{name} {wall:.0f} s" for name, wall in timed)
        notes.append(f"Wall time of the runs: {sum(w for _, w in timed):.0f} s in all ({each}).")
    return "\n".join(lines + notes) + "\n"


def csv_text(study: Study, rows: list[dict[str, Any]]) -> str:
    param_keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    header = [*param_keys, "status", "wall_s"]
    for c in study.columns:
        header.append(c.header)
        if c.format == "rate":
            header += [f"{c.header} [success]", f"{c.header} [included]"]
        if c.format == "paired_delta":
            header += [f"{c.header} [ci95 low]", f"{c.header} [ci95 high]"]
    if study.verdict:
        header.append("verdict")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in rows:
        line = [r["params"].get(k, "") for k in param_keys] + [r["status"], r["wall_s"]]
        for c in study.columns:
            v = r["cells"][c.header]
            if isinstance(v, RateCell):
                line += [v.value, v.success, v.included]
            elif isinstance(v, DeltaCell):
                line += [v.mean, v.low, v.high]
            else:
                line += [v] + ([None, None] if c.format in ("rate", "paired_delta") else [])
        if study.verdict:
            line.append(r["verdict"])
        writer.writerow(["" if x is None else x for x in line])
    return buf.getvalue()


def _param(row: dict[str, Any], key: str, plot: Plot) -> Any:
    """A run parameter (a grid key, ``run``, ``arm``) or, failing that, a column's number."""
    if key not in row["params"] and key in row["cells"]:
        return _numeric(row["cells"][key])
    if key not in row["params"]:
        raise ValueError(f"plot {plot.name!r}: {key!r} is not a parameter of run {row['run']!r} "
                         f"(its parameters: {sorted(row['params'])})")
    return row["params"][key]


def _numeric(v: Any) -> float | None:
    return v.value if isinstance(v, (RateCell, DeltaCell)) else (v if isinstance(v, (int, float)) else None)


def plot(study: Study, rows: list[dict[str, Any]], spec: Plot, path: Path) -> Path:
    """One PNG: a subplot per ``y`` column; bars over runs (``x: run``) or lines over a swept
    parameter, one line per ``group`` value; paired deltas with their 95% interval as error bars."""
    Figure = require_extra("matplotlib.figure").Figure

    fig = Figure(figsize=(4.2 * len(spec.y), 3.4), layout="constrained")
    axes = fig.subplots(1, len(spec.y), squeeze=False)[0]
    for ax, header in zip(axes, spec.y):
        if spec.x == "run":
            _bars(ax, rows, header, spec.beside.get(header))
        else:
            groups = dict.fromkeys(_param(r, spec.group, spec) if spec.group else None for r in rows)
            for g in groups:
                pts = sorted(((float(_param(r, spec.x, spec)), r["cells"][header]) for r in rows
                              if (not spec.group or _param(r, spec.group, spec) == g)
                              and _param(r, spec.x, spec) is not None and _numeric(r["cells"][header]) is not None),
                             key=lambda p: p[0])
                if not pts:
                    continue
                xs, cells = [p[0] for p in pts], [p[1] for p in pts]
                ys = [_numeric(c) for c in cells]
                if all(isinstance(c, DeltaCell) and c.low is not None for c in cells):
                    err = [[y - c.low for y, c in zip(ys, cells)], [c.high - y for y, c in zip(ys, cells)]]
                    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=str(g) if spec.group else None)
                else:
                    ax.plot(xs, ys, marker="o", label=str(g) if spec.group else None)
            ax.set_xlabel(spec.x.split(".")[-1])
            if spec.group:
                ax.legend(title=spec.group.split(".")[-1], fontsize=8)
        ax.set_title(header, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"study {study.name}: {spec.name}", fontsize=10)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _bars(ax: Any, rows: list[dict[str, Any]], header: str, beside: str | None) -> None:
    """Bars over the runs (paired deltas with their 95% interval); with ``beside``, a hatched grey
    bar of that column next to each (a reference level, e.g. the clean model under the same trigger)."""
    width = 0.4 if beside else 0.8
    series = [(header, 0.0, "tab:blue", None)]
    if beside:
        series = [(header, -width / 2, "tab:blue", None), (beside, width / 2, "0.7", "//")]
    for column, shift, color, hatch in series:
        cells = [r["cells"][column] for r in rows]
        values = [_numeric(c) for c in cells]
        xs = [i + shift for i in range(len(rows))]
        ax.bar(xs, [0 if v is None else v for v in values], width=width, color=color, hatch=hatch,
               label=column if beside else None)
        err = [(i, c) for i, c in zip(xs, cells) if isinstance(c, DeltaCell) and c.low is not None]
        if err:
            ax.errorbar([i for i, _ in err], [c.mean for _, c in err],
                        yerr=[[c.mean - c.low for _, c in err], [c.high - c.mean for _, c in err]],
                        fmt="none", ecolor="black", capsize=3)
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=30, ha="right", fontsize=8)
    if beside:
        ax.legend(fontsize=7)


def default_plot(study: Study) -> Plot:
    """Without configured plots: bars over the runs of every rate, percentage and delta column."""
    ys = [c.header for c in study.columns if c.format in ("rate", "pct", "paired_delta")] or \
         [c.header for c in study.columns if c.format in ("db", "float")][:3]
    return Plot("summary", ys or [study.columns[0].header])


def write_outputs(study: Study) -> list[Path]:
    """``results.{csv,json,md}`` and the PNG plots in the study folder; returns their paths."""
    rows = table(study)
    out = study.study_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("results.md", markdown(study, rows)), ("results.csv", csv_text(study, rows)),
                       ("results.json", json.dumps({"study": study.name, "config": str(study.source),
                                                    "reference": study.reference,
                                                    "verdict_rule": study.verdict.rule() if study.verdict else None,
                                                    "rows": [dict(r, cells={k: _json_cell(v) for k, v in
                                                                            r["cells"].items()}) for r in rows]},
                                                   indent=2, default=str))):
        with atomic_write(out / name) as tmp:
            tmp.write_text(text)
        written.append(out / name)
    for spec in study.plots or [default_plot(study)]:
        written.append(plot(study, rows, spec, out / f"{spec.name}.png"))
    return written
