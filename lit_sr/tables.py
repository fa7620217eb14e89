"""One table module for every job and summary: a column is a header, a key and a format.

Markdown, CSV and aligned plain text, written the same way everywhere::

    columns = [Column("model", "name", "s"), Column("clean PSNR-Y (dB)", "clean_hr_psnr"),
               Column("goal met", lambda r: "yes" if r["goal_met"] else "no", "s")]
    lines = markdown_table(rows, columns)          # header, separator, one line per row
    write_csv(out / "robust.csv", rows, fields)    # atomically; NaN and inf as empty cells

A missing value (``None``, NaN or inf) is written as ``-`` in Markdown and text, as an empty cell in CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_sr.io import atomic_write

MISSING = "-"
Format = str | Callable[[Any], str]


def is_missing(value: Any) -> bool:
    """``None``, NaN or an infinity: what a table shows as ``-``."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value: Any, spec: Format = ".2f", missing: str = MISSING) -> str:
    """``value`` formatted by ``spec`` (a :func:`format` spec such as ``".2f"``, ``".1%"``, ``"s"``, or a
    callable); ``missing`` for a missing value (:func:`is_missing`)."""
    if is_missing(value):
        return missing
    return spec(value) if callable(spec) else format(value, spec)


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Args:
        header: the column's title.
        key: the row's key, or a function of the row.
        format: how a value is written (see :func:`fmt`); ``"s"`` for text.
    """

    header: str
    key: str | Callable[[Mapping[str, Any]], Any]
    format: Format = ".2f"

    def value(self, row: Mapping[str, Any]) -> Any:
        return self.key(row) if callable(self.key) else row.get(self.key)

    def cell(self, row: Mapping[str, Any]) -> str:
        return fmt(self.value(row), self.format)


def markdown_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table of cells that are already text: the header, the separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> list[str]:
    """The Markdown lines of ``rows`` (mappings) under ``columns``."""
    return markdown_lines([c.header for c in columns], ([c.cell(row) for c in columns] for row in rows))


def text_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with aligned columns (for logs and the terminal)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[Any]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def csv_text(rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as CSV text with the columns ``fields`` (other keys ignored); NaN and inf as empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_row(row))
    return buffer.getvalue()


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> Path:
    """Write :func:`csv_text` of ``rows`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(csv_text(rows, fields))
    return path
