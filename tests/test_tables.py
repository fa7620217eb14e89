"""lit_sr.tables: the one table writer of every job and summary."""

from __future__ import annotations

import csv
import math

from lit_sr.tables import Column, csv_text, fmt, markdown_lines, markdown_table, text_table, write_csv


def test_fmt_writes_missing_values_as_a_dash_and_formats_the_rest():
    assert [fmt(None), fmt(math.nan), fmt(math.inf)] == ["-", "-", "-"]
    assert fmt(31.4159) == "31.42" and fmt(3, ".1f") == "3.0" and fmt(0.1234, ".1%") == "12.3%"
    assert fmt(None, missing="n/a") == "n/a" and fmt("edsr", "s") == "edsr"
    assert fmt(0.25, lambda v: f"{100 * v:.0f}%") == "25%"


def test_markdown_table_from_columns_of_header_key_and_format():
    rows = [{"name": "edsr", "psnr": 30.123, "rate": 0.5}, {"name": "bicubic", "psnr": None, "rate": 0.25}]
    columns = [Column("model", "name", "s"), Column("PSNR (dB)", "psnr"),
               Column("rate", lambda r: r["rate"] * 2, ".0%")]
    assert markdown_table(rows, columns) == [
        "| model | PSNR (dB) | rate |", "|---|---|---|", "| edsr | 30.12 | 100% |", "| bicubic | - | 50% |"]
    assert markdown_lines(["a"], []) == ["| a |", "|---|"]


def test_csv_leaves_non_finite_values_empty_ignores_extra_keys_and_writes_atomically(tmp_path):
    rows = [{"a": 1.5, "b": math.nan, "extra": 3}, {"a": math.inf, "b": "x"}]
    assert csv_text(rows, ["a", "b"]).splitlines() == ["a,b", "1.5,", ",x"]
    path = write_csv(tmp_path / "sub" / "t.csv", rows, ["a", "b"])
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"a": "1.5", "b": ""}, {"a": "", "b": "x"}]
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]  # no temporary file left


def test_text_table_aligns_columns():
    text = text_table([("psnr_y", "30.00"), ("ssim", "0.9")], ("metric", "model"))
    assert text.splitlines() == ["metric  model", "------  -----", "psnr_y  30.00", "ssim    0.9  "]
