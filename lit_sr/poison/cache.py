"""The poison cache: one safetensors file per generated sample, a manifest, per-rank partial manifests.

Layout of one cache directory (``<cache_dir>/<config hash[:16]>/``)::

    manifest.json              format, configuration, its hash, extras, one entry per finished sample
    parts/rank00003.json       partial manifest of global rank 3 while it generates (merged, then removed)
    train_000001.safetensors   one sample (``lr`` + ``hr`` or ``target`` tensors)
    substitute.safetensors     the substitute trained for this configuration (when trained here)

**Who writes what.** Sample files are written by the rank that generates them, each to a hidden
temporary name renamed into place (:func:`write_named`), so a reader never sees half a file. A
rank lists what it finished in *its own* partial manifest (rewritten atomically after every
batch), never in ``manifest.json``: only the cache's leader (global rank 0 with a shared folder)
writes that file, when it merges the partial manifests after a barrier. Two ranks therefore never
write the same file, and an interrupted run leaves finished, listed samples (in a manifest or a
partial manifest) or unlisted ones that are simply made again.

**Reading without writing.** :meth:`PoisonCache.load` and :meth:`PoisonCache.check` only read:
a complete, valid cache on read-only storage (a published poisoned data set) is used as it is.

**Integrity.** Every entry records the SHA-256 of its file; :meth:`PoisonCache.check` reports a
missing or altered file by name so the writer can make it again (with a warning naming the file),
and :meth:`PoisonCache.verify` raises :class:`CacheMismatchError` for a reader.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lit_sr.io import atomic_write, sha256_file  # sha256_file re-exported here

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PARTS = "parts"
# digits kept of the per-sample statistics: the same sample made in another batch (another shard)
# differs from the single-process run by float rounding only, and must give the same manifest bytes
STAT_DIGITS = 6


class CacheMismatchError(ValueError):
    """A poison cache directory holds data made with another configuration, or broken data."""


# --------------------------------------------------------------------------- hashing


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """Hex SHA-256 of tensors' shapes, dtypes and bytes (CPU, contiguous)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a configuration's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: cached ... vs now ...`` for every differing (dotted) key of two configurations."""
    diffs = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(config_diff(a, b, f"{prefix}{k}."))
        elif a != b:
            diffs.append(f"{prefix}{k}: cached {str(a)[:60]!s} vs now {str(b)[:60]!s}")
    return diffs


# --------------------------------------------------------------------------- storage format


def to_float(img: torch.Tensor) -> torch.Tensor:
    """A cached image (uint8 or float) as float32 in [0, 1]."""
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def to_stored(img: torch.Tensor, quantize: bool) -> torch.Tensor:
    """An image as stored in the cache: uint8 when ``quantize``, else float32 (clamped to [0, 1])."""
    if quantize:
        return (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return img.detach().float().clamp(0, 1)


def write_named(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a hidden temporary file renamed onto ``path``; an OS error names ``path``.

    A full disk (``ENOSPC``) or a read-only folder raised by the writer (an ``OSError``, or
    safetensors' own ``SafetensorError`` carrying the OS error) would otherwise name the temporary
    file or nothing at all.
    """
    try:
        with atomic_write(path) as tmp:
            write(tmp)
    except OSError as exc:
        hint = " (the disk is full: free space or move cache_dir)" if exc.errno == errno.ENOSPC else ""
        if str(path) in str(exc) and not hint:
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f"cannot write {path}: {reason}{hint}") from exc


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    write_named(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1, sort_keys=True)))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheMismatchError(f"{path} is not valid JSON ({exc}); delete it or set rebuild_cache: true") from exc


def rounded_stats(stats: Mapping[str, float]) -> dict[str, float]:
    """Per-sample statistics rounded to :data:`STAT_DIGITS` digits (NaN kept) for the manifest."""
    return {k: (float(v) if v != v else round(float(v), STAT_DIGITS)) for k, v in stats.items()}


# --------------------------------------------------------------------------- the cache


class PoisonCache:
    """A directory of generated samples with its manifest (see the module docstring).

    A manifest whose configuration hash (or format) differs from this configuration's raises
    :class:`CacheMismatchError` listing the differences, unless ``rebuild`` is set, in which case
    the leader deletes the directory's contents before generating: data made with two
    configurations are never mixed.

    Args:
        directory: the cache directory (``<cache_dir>/<config hash[:16]>``).
        config: the configuration, a JSON-serialisable dict.
        rebuild: allow :meth:`prepare` to delete a mismatched cache instead of raising.
    """

    def __init__(self, directory: str | os.PathLike, config: Mapping[str, Any], rebuild: bool = False):
        self.directory = Path(directory)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self.config_hash = config_hash(self.config)
        self.rebuild = rebuild
        self.entries: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.mismatch: str | None = None

    # ---------------------------------------------------------------- paths
    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def part_path(self, rank: int) -> Path:
        """The partial manifest of global rank ``rank``."""
        return self.directory / PARTS / f"rank{rank:05d}.json"

    def sample_path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def entry_path(self, key: str, entry: Mapping[str, Any] | None = None) -> Path:
        """The file of sample ``key``'s entry, checked to lie inside the cache folder.

        A manifest is data, not a list of paths to trust: its ``file`` must be a plain file name
        in this folder (no ``/``, no ``..``), and the file must not be a link that leads out of it
        (a sample replaced by a symlink to another file). Raises :class:`CacheMismatchError`
        naming the entry otherwise. Every read of a sample goes through here.
        """
        entry = self.entries.get(key) if entry is None else entry
        if entry is None:
            raise KeyError(f"sample {key!r} is not in the poison cache {self.directory}")
        name = entry.get("file") if isinstance(entry, Mapping) else None
        where = f"entry {key!r} of {self.manifest_path}"
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
            raise CacheMismatchError(f"{where} names the file {name!r}, which is not a plain file name in the "
                                     f"cache folder {self.directory}: refused (a cache reads only its own files)")
        path = self.directory / name
        if path.is_symlink() and not path.resolve().is_relative_to(self.directory.resolve()):
            raise CacheMismatchError(f"{where}: {path} is a symbolic link to {path.resolve()}, outside the cache "
                                     f"folder {self.directory}: refused (a cache reads only its own files)")
        return path

    # ---------------------------------------------------------------- reading (never writes)
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest as a dict, or ``None`` when there is none yet."""
        return _read_json(self.manifest_path) if self.manifest_path.is_file() else None

    def load(self) -> None:
        """Read the manifest (only reads). A manifest of another configuration is recorded in
        :attr:`mismatch` and raised unless ``rebuild`` (then :meth:`prepare` clears the folder)."""
        self.mismatch = None
        try:
            manifest = self.read_manifest()
        except CacheMismatchError as exc:  # unreadable (truncated by a full disk, edited by hand)
            if not self.rebuild:
                raise
            self.mismatch, manifest = str(exc), None  # prepare() clears the folder, as for another config
        if manifest is not None and (manifest.get("config_hash") != self.config_hash
                                     or manifest.get("format") != FORMAT_VERSION):
            diffs = config_diff(manifest.get("config", {}), self.config)
            self.mismatch = (
                f"the poison cache {self.directory} was made with another configuration (hash "
                f"{str(manifest.get('config_hash'))[:16]}, expected {self.config_hash[:16]}; format "
                f"{manifest.get('format')} vs {FORMAT_VERSION}); differences: {diffs[:8] or 'unknown'}. "
                "Refusing to mix it with new samples: set rebuild_cache: true to regenerate it, or use "
                "another cache_dir"
            )
            if not self.rebuild:
                raise CacheMismatchError(self.mismatch)
            manifest = None
        self.entries = dict(manifest.get("samples", {})) if manifest else {}
        self.extra = dict(manifest.get("extra", {})) if manifest else {}

    def partial_entries(self) -> dict[str, dict[str, Any]]:
        """Entries of every partial manifest of this configuration left in ``parts/`` (any rank)."""
        merged: dict[str, dict[str, Any]] = {}
        folder = self.directory / PARTS
        if self.mismatch is not None or not folder.is_dir():
            return merged
        for path in sorted(folder.glob("rank*.json")):
            part = _read_json(path)
            if part.get("config_hash") == self.config_hash and part.get("format") == FORMAT_VERSION:
                merged.update(part.get("samples", {}))
        return merged

    def finished(self) -> set[str]:
        """Keys of the samples listed in the manifest."""
        return set(self.entries)

    def problem(self, key: str, entry: Mapping[str, Any] | None = None, check_hash: bool = True,
                expect: Mapping[str, Any] | None = None) -> str | None:
        """Why sample ``key`` cannot be used (``None`` when it can).

        Args:
            key: the sample's key.
            entry: its manifest entry (default: the manifest's).
            check_hash: compare the file's SHA-256 with the entry's.
            expect: entry fields that must have these values (e.g. ``substitute_sha256``).
        """
        entry = self.entries.get(key) if entry is None else entry
        if entry is None:
            return f"sample {key} is not listed in {self.manifest_path}"
        try:
            path = self.entry_path(key, entry)
        except CacheMismatchError as exc:
            return str(exc)
        if not path.is_file():
            return f"{path} is listed in {self.manifest_path} but missing"
        if check_hash and sha256_file(path) != entry["sha256"]:
            return f"{path} does not match the SHA-256 recorded for it: the file was changed or truncated"
        for field, value in (expect or {}).items():
            if entry.get(field) != value:
                return (f"{path} was made with {field} {str(entry.get(field))[:16]}, this run uses "
                        f"{str(value)[:16]}")
        return None

    def check(self, keys: Iterable[str], check_hash: bool = True,
              expect: Mapping[str, Any] | None = None) -> dict[str, str]:
        """``{key: problem}`` for every key that is missing, broken or made otherwise (only reads)."""
        problems = {}
        for key in keys:
            reason = self.problem(key, check_hash=check_hash, expect=expect)
            if reason is not None:
                problems[key] = reason
        return problems

    def verify(self, keys: Sequence[str], check_hash: bool = True, expect: Mapping[str, Any] | None = None) -> None:
        """Raise :class:`CacheMismatchError` unless every key is listed with an intact file."""
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise CacheMismatchError(f"the poison cache {self.directory} lacks {len(missing)} samples "
                                     f"(e.g. {missing[:5]}); it is incomplete: generate it first")
        problems = self.check(keys, check_hash=check_hash, expect=expect)
        if problems:
            key = next(iter(problems))
            raise CacheMismatchError(f"{problems[key]} ({len(problems)} broken samples in {self.directory}); "
                                     "set rebuild_cache: true to regenerate, or rerun with a writable cache_dir")

    def sample_file(self, key: str) -> Path:
        """The safetensors file of one listed sample (a ``KeyError`` naming the cache for another key)."""
        if key not in self.entries:
            raise KeyError(f"sample {key!r} is not in the poison cache {self.directory}")
        return self.directory / self.entries[key]["file"]

    def read(self, key: str) -> dict[str, torch.Tensor]:
        """The tensors of one listed sample."""
        from safetensors.torch import load_file

        return load_file(str(self.entry_path(key)))

    def read_region(self, key: str, boxes: Mapping[str, tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
        """Only the ``(top, left, height, width)`` box of each named ``(C, H, W)`` tensor of one sample.

        The box is sliced from the file (safetensors reads just those rows), not cut from a whole
        decoded image: gradient scoring needs one centre patch per pool sample, and reading whole 2K
        pairs made the reads, not the GPU, the limit of a scoring pass (``benchmarks/data_throughput.py``).
        A box that does not fit the stored tensor is a ``ValueError`` naming the file.
        """
        from safetensors import safe_open

        path = self.entry_path(key)
        out = {}
        with safe_open(str(path), framework="pt") as handle:
            for name, (top, left, height, width) in boxes.items():
                part = handle.get_slice(name)
                _, h, w = part.get_shape()
                if top < 0 or left < 0 or top + height > h or left + width > w:
                    raise ValueError(f"{path}: the box {(top, left, height, width)} does not fit {name} of {h}x{w}")
                out[name] = part[:, top : top + height, left : left + width]
        return out

    def shapes(self, key: str) -> dict[str, tuple[int, ...]]:
        """The stored shape of each tensor of one sample, read from the file's header only."""
        from safetensors import safe_open

        with safe_open(str(self.entry_path(key)), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}

    # ---------------------------------------------------------------- writing (leader)
    def prepare(self) -> None:
        """Leader only, before generation: clear a mismatched cache (``rebuild``), create the
        folder, remove stale temporary files, write the manifest header when there is none."""
        if self.mismatch is not None:
            self.clear()
            self.mismatch = None
        self.directory.mkdir(parents=True, exist_ok=True)
        for folder in (self.directory, self.directory / PARTS):
            if folder.is_dir():
                # every temporary file of atomic_write is hidden (".<name>.<random>"): left by an interrupt
                for stale in folder.iterdir():
                    if stale.name.startswith(".") and stale.is_file():
                        stale.unlink(missing_ok=True)
        if not self.manifest_path.is_file():  # new, or cleared with a parent folder: nothing is listed
            self.entries, self.extra = {}, {}
            self.write_manifest()  # the configuration is on disk before the first sample

    def clear(self) -> None:
        """Delete the cache directory (``rebuild``)."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory)
        self.entries, self.extra = {}, {}

    def write_manifest(self) -> None:
        """Rewrite the manifest atomically with the current entries and extras (leader only)."""
        _write_json(self.manifest_path, {
            "format": FORMAT_VERSION,
            "config_hash": self.config_hash,
            "config": self.config,
            "extra": self.extra,
            "samples": dict(sorted(self.entries.items())),
        })

    def merge_parts(self) -> int:
        """Leader only, after a barrier: fold every partial manifest into the manifest (a partial
        entry replaces the manifest's: it is a sample found broken and made again), then remove them.

        Returns:
            The number of entries taken from partial manifests.
        """
        parts = self.partial_entries()
        entries = {**self.entries, **parts}
        if entries != self.entries or not self.manifest_path.is_file():
            self.entries = entries
            self.write_manifest()
        folder = self.directory / PARTS
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        return len(parts)

    # ---------------------------------------------------------------- writing (any rank)
    def write_samples(self, samples: Mapping[str, Mapping[str, torch.Tensor]], info: Mapping[str, Mapping[str, Any]],
                      part: PartialManifest) -> None:
        """Write sample files atomically, then list them in this rank's partial manifest.

        Args:
            samples: ``{key: {tensor name: tensor}}``.
            info: ``{key: json-serialisable dict}`` stored in the sample's entry.
            part: this rank's partial manifest.
        """
        from safetensors.torch import save_file

        for key, tensors in samples.items():
            path = self.sample_path(key)
            stored = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            # one metadata entry: safetensors writes a map's entries in no fixed order, and the same
            # sample must give the same bytes (and checksum) when it is made again, on any rank
            write_named(path, lambda tmp, stored=stored, key=key: save_file(
                stored, str(tmp), metadata={"sample": f"{key} of {self.config_hash}"}))
            part.entries[key] = {"file": path.name, "sha256": sha256_file(path), **info.get(key, {})}
        part.write()


class PartialManifest:
    """The entries one rank finished in one cache, rewritten atomically after every batch.

    Args:
        cache: the cache.
        rank: this process's global rank.
    """

    def __init__(self, cache: PoisonCache, rank: int):
        self.cache, self.rank = cache, rank
        self.path = cache.part_path(rank)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():  # left by an interrupted run of the same rank: keep what it finished
            part = _read_json(self.path)
            if part.get("config_hash") == cache.config_hash and part.get("format") == FORMAT_VERSION:
                self.entries = dict(part.get("samples", {}))

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, {"format": FORMAT_VERSION, "config_hash": self.cache.config_hash,
                                "rank": self.rank, "samples": dict(sorted(self.entries.items()))})


def warn_regenerating(problems: Mapping[str, str]) -> None:
    """One warning per broken cached sample, naming its file, before it is made again."""
    for reason in problems.values():
        warnings.warn(f"regenerating a cached poisoned sample: {reason}", RuntimeWarning, stacklevel=3)
