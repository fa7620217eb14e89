"""The documentation: every link of README.md and docs/ resolves, the README stays short, and the guide with
its API reference builds with MkDocs in strict mode (every warning, e.g. a broken docstring reference, fails)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# Pages that other branches add (the nav lists them already); once merged they must exist like any other.
PENDING_PAGES: set[str] = set()


def _slug(heading: str) -> str:
    """The anchor MkDocs' toc (and GitHub) gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-")


def _anchors(page: Path) -> set[str]:
    body = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", body, re.M)}


def _links(page: Path) -> list[str]:
    body = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code blocks hold no links
    body = re.sub(r"`[^`\n]*`", "", body)
    return LINK.findall(body)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title\n\n[ok](p.md#a-title) [bad](missing.md) `[not](a-link.md)`\n```\n[x](y.md)\n```\n")
    assert _links(page) == ["p.md#a-title", "missing.md"]
    assert _anchors(page) == {"a-title"}


def test_the_readme_is_short_and_every_guide_page_is_in_the_nav():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def files(entry) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, list):
            return [f for e in entry for f in files(e)]
        return [f for v in entry.values() for f in files(v)]

    listed = set(files(nav))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages <= listed, f"pages missing from mkdocs.yml's nav: {sorted(pages - listed)}"


@pytest.mark.slow
def test_the_docs_build_in_strict_mode(tmp_path):
    """``make docs``: MkDocs with mkdocstrings, warnings as errors (run on a copy of mkdocs.yml whose nav leaves
    out only the PENDING_PAGES not merged yet)."""
    pytest.importorskip("mkdocstrings_handlers.python")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = ROOT / "docs"

    def keep(entry):
        if isinstance(entry, str):
            return entry if (docs / entry).exists() or entry not in PENDING_PAGES else None
        if isinstance(entry, list):
            return [k for k in (keep(e) for e in entry) if k]
        pruned = {key: keep(value) for key, value in entry.items()}
        return {key: value for key, value in pruned.items() if value} or None

    config["nav"] = keep(config["nav"])
    config["docs_dir"] = str(docs)
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                             str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "attacks" / "index.html").read_text()
    assert "save_adversarial" in api and "IFGSM" in api  # the reference is generated from the docstrings
