"""Decoded images in one memory-mapped uint8 file: one copy per node, whatever the workers and ranks.

The old ``cache_images`` kept a float32 dict in every loader worker: DIV2K's 800 pairs are ~28 GB
per worker that way. :class:`SharedImageStore` decodes each image once, in the process that sets
the data up (before loader workers fork), into a flat uint8 file; every process -- loader workers,
DDP ranks on the same node, later runs -- maps that file read-only, so the pages live once in the
OS page cache and are shared (a worker's *proportional* set size for the mapping is its share, not
the whole file). A sample is a view into the mapping: the crop is cut from uint8 pixels and only
the crop is converted to float.

Building is atomic (a temporary file renamed into place, the index written last) and serialised
by a lock file, so ranks that start together build it once and map the same file. The file name
is a fingerprint of the inputs (paths, sizes, modification times, scale), so a changed data set
gets a new file and an unchanged one is reused by the next run.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_sr.io import atomic_write

STORE_FORMAT = 1


class StoreEntryError(ValueError):
    """The item could not be stored when the store was built (the message names the file)."""


def default_cache_dir() -> Path:
    """``$LIT_SR_CACHE_DIR``, else ``<system temp dir>/lit_sr_cache`` (node-local on clusters)."""
    import tempfile

    return Path(os.environ.get("LIT_SR_CACHE_DIR") or Path(tempfile.gettempdir()) / "lit_sr_cache")


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class SharedImageStore:
    """Items of uint8 ``(3, H, W)`` images stored in one memory-mapped file.

    Build or reuse one with :meth:`open_or_build`. The object pickles as its file name and index
    only (cheap to send to ``spawn`` workers); each process maps the file on first use.

    Args:
        data_path: the ``.u8`` file.
        entries: per item, ``{"images": [[offset, height, width], ...]}`` or ``{"error": message}``.
    """

    def __init__(self, data_path: str | os.PathLike, entries: Sequence[dict[str, Any]]):
        self.data_path = Path(data_path)
        self.entries = list(entries)
        self.built = False  # True when this process decoded the images (False: it reused the file)
        self._map: np.ndarray | None = None

    # -- building
    @classmethod
    def open_or_build(
        cls,
        directory: str | os.PathLike,
        fingerprint: str,
        count: int,
        make: Callable[[int], Sequence[torch.Tensor]],
        skip_errors: tuple[type[BaseException], ...] = (),
        progress: bool = True,
        description: str = "cache images",
    ) -> SharedImageStore:
        """The store ``<directory>/<fingerprint>.u8``: opened if it exists, built (once per node) if not.

        Args:
            directory: where store files live (node-local storage or ``/dev/shm``).
            fingerprint: a hash of everything the items depend on (it names the file).
            count: number of items.
            make: ``i -> images`` (uint8, ``(3, H, W)``) of item ``i``.
            skip_errors: exceptions of ``make`` recorded as a bad item (raised as
                :class:`StoreEntryError` on access) instead of stopping the build.
            progress: tqdm bar while building.
            description: the bar's label.
        """
        directory = Path(directory)
        index_path = directory / f"{fingerprint}.json"
        with _locked(directory / f"{fingerprint}.lock"):
            store = cls._open(index_path, count)
            if store is None:
                store = cls._build(directory / f"{fingerprint}.u8", index_path, count, make, skip_errors, progress,
                                   description)
        return store

    @classmethod
    def _open(cls, index_path: Path, count: int) -> SharedImageStore | None:
        if not index_path.is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError:
            return None  # a torn index cannot happen with atomic writes; treat it as absent
        data_path = index_path.with_suffix(".u8")
        if (index.get("format") != STORE_FORMAT or len(index.get("entries", [])) != count
                or not data_path.is_file() or data_path.stat().st_size != index.get("nbytes")):
            return None
        return cls(data_path, index["entries"])

    @classmethod
    def _build(cls, data_path: Path, index_path: Path, count: int, make, skip_errors, progress: bool,
               description: str) -> SharedImageStore:
        from tqdm.auto import tqdm

        entries: list[dict[str, Any]] = []
        offset = 0
        with atomic_write(data_path) as tmp, open(tmp, "wb") as f:
            for i in tqdm(range(count), desc=description, unit="img", disable=not progress):
                try:
                    images = make(i)
                except skip_errors as exc:
                    entries.append({"error": str(exc)})
                    continue
                placed = []
                for img in images:
                    if img.dtype != torch.uint8 or img.dim() != 3:
                        raise TypeError(f"SharedImageStore stores (C, H, W) uint8 images; item {i} gave "
                                        f"{img.dtype} {tuple(img.shape)}")
                    # (H, W, C) order: decoders produce it, so this is usually no copy
                    f.write(img.permute(1, 2, 0).contiguous().numpy().tobytes())
                    placed.append([offset, int(img.shape[1]), int(img.shape[2]), int(img.shape[0])])
                    offset += img.numel()
                entries.append({"images": placed})
            f.flush()
        with atomic_write(index_path, suffix=".tmp") as tmp:
            tmp.write_text(json.dumps({"format": STORE_FORMAT, "nbytes": offset, "entries": entries}))
        store = cls(data_path, entries)
        store.built = True
        return store

    # -- reading
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        """Size of the pixel file in bytes (what the node holds once, however many processes read it)."""
        return self.data_path.stat().st_size

    def _mapping(self) -> np.ndarray:
        if self._map is None:
            # copy-on-write: pages come from (and are shared through) the page cache; nothing writes
            self._map = np.memmap(self.data_path, dtype=np.uint8, mode="c")
        return self._map

    def get(self, i: int) -> tuple[torch.Tensor, ...]:
        """The images of item ``i`` as uint8 ``(3, H, W)`` views into the mapping (no pixels copied)."""
        entry = self.entries[i]
        if "error" in entry:
            raise StoreEntryError(entry["error"])
        mapping = self._mapping()
        out = []
        for offset, h, w, c in entry["images"]:
            arr = mapping[offset : offset + h * w * c].reshape(h, w, c)
            out.append(torch.from_numpy(arr).permute(2, 0, 1))
        return tuple(out)

    def __getstate__(self) -> dict[str, Any]:
        return {"data_path": self.data_path, "entries": self.entries, "built": self.built, "_map": None}
