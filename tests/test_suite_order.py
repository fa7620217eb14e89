"""tests/conftest.py's LONGEST_FIRST names test files that exist (a renamed file would silently lose its place)."""

from pathlib import Path

from conftest import LONGEST_FIRST


def test_the_longest_files_listed_first_exist():
    here = Path(__file__).parent
    assert [name for name in LONGEST_FIRST if not (here / name).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
