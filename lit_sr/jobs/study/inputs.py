"""What a run reads, fingerprinted: the contents of its config files and of every file they name.

A study decides whether a finished run is still current from a hash (``lit_sr.jobs.study.runner.run_hash``).
Hashing only the config file *names* and the overrides let an edited base config (``lr 5e-3 ->
5e-1``) or a retrained substitute's ``weights.pth`` reuse stale results. :func:`input_digests`
walks the config files and the overrides a run is given, and every string in them that names an
existing file (weights, checkpoints, nested YAML configs, which are walked too), and returns
``{path: sha256 of the contents}``. Folders (data sets) are not hashed: reading a data set to
decide whether to rerun would cost as much as the run; change a data set and pass ``--force``.
A config file that does not exist is recorded as ``"missing"``; any other string that names no
existing file is taken for a plain value (it is hashed as part of the overrides all the same).

Relative strings are looked up against the working folder (where the run starts, as
jsonargparse does) and against the folder of the config file that holds them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
MISSING = "missing"
_CHUNK = 1 << 20


_memo: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's contents (hex), read in 1 MiB chunks.

    Remembered per (path, size, mtime) within the process: a study asks twice per run (is it
    finished? then, before it starts, what it reads) and a weights file may be large.
    """
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
        _memo[key] = digest.hexdigest()
    return _memo[key]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _named_file(text: str, base: Path | None) -> Path | None:
    """The existing file ``text`` names (against the working folder, then ``base``), if any."""
    if not text or "\n" in text or len(text) > 4096 or "://" in text:
        return None
    candidates = [Path(text).expanduser()]
    if base is not None and not candidates[0].is_absolute():
        candidates.append(base / text)
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate.resolve()
        except OSError:  # a name too long for the file system, a permission: not a file this run reads
            continue
    return None


def _load_config(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None  # not a config we can walk; its bytes are hashed all the same


def input_digests(configs: Iterable[str | os.PathLike], values: Any = None,
                  exclude: Iterable[str | os.PathLike] = ()) -> dict[str, str]:
    """``{resolved path: sha256}`` of every file a run reads through ``configs`` and ``values``.

    Args:
        configs: the config files the run is given (``--config``), in order; a missing one is
            recorded as ``"missing"``.
        values: the overrides (any nest of dicts, lists and strings) given beside them.
        exclude: folders whose files are the run's own outputs (its run folder): never hashed.
    """
    skip = [Path(p).resolve() for p in exclude]
    digests: dict[str, str] = {}
    pending: list[Path] = []
    for config in configs:
        path = Path(config).expanduser()
        if path.is_file():
            pending.append(path.resolve())
        else:
            digests[str(path)] = MISSING
    pending += [f for f in (_named_file(s, None) for s in _strings(values)) if f is not None]
    while pending:
        path = pending.pop(0)
        if str(path) in digests or any(path.is_relative_to(s) for s in skip):
            continue
        digests[str(path)] = file_digest(path)
        if path.suffix.lower() in CONFIG_SUFFIXES:  # a config names more files (nested configs, weights)
            nested = (_named_file(s, path.parent) for s in _strings(_load_config(path)))
            pending += [f for f in nested if f is not None]
    return dict(sorted(digests.items()))


def changed_inputs(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """The paths whose digest differs between two :func:`input_digests` results (added, removed, edited)."""
    return sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
