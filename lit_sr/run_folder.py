"""A run owns its folder: it writes nothing over a file it did not create, and one run at a time.

Two guards, used by the command line and the study runner (docs/trust.md):

* :func:`first_clash` names the first file a run would write over in a folder that is not its own
  fresh one (``--trainer.logger false`` makes the run folder ``--trainer.default_root_dir``, the
  working folder by default, where the user's own ``config.yaml`` or ``weights.pth`` may live). The
  command line checks it before it writes anything, ``config.yaml`` included.
* :class:`RunFolderLock` holds an exclusive ``fcntl.flock`` on ``<folder>.lock`` beside the folder
  while a run owns it: a second runner on the same folder is refused with a message naming the
  holder, instead of deleting and rewriting the folder under a run that is still writing. The lock
  file lives beside the folder (not in it) so that clearing the folder keeps the lock; the kernel
  drops it when the holder exits, ``kill -9`` included, so a stale lock never needs cleaning.
"""

from __future__ import annotations

import os
from pathlib import Path

# What a lit-sr fit writes into its run folder (Lightning's checkpoints, the modules' exports, the
# summary callbacks); validate/test/predict write only the config.
FIT_ARTEFACTS = ("config.yaml", "weights.pth", "weights_best.pth", "weights_d.pth", "summary.json",
                 "backdoor_summary.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt")


class RunFolderClashError(FileExistsError):
    """A run would write over a file in its folder that it did not create."""


class RunFolderLockedError(RuntimeError):
    """Another process owns the run folder."""


def first_clash(folder: str | os.PathLike, stage: str | None, config_name: str = "config.yaml") -> Path | None:
    """The first file of :data:`FIT_ARTEFACTS` (for ``fit``; only ``config_name`` otherwise) already in ``folder``."""
    folder = Path(folder)
    names = [config_name, *FIT_ARTEFACTS[1:]] if stage == "fit" else [config_name]
    for name in names:
        if (folder / name).exists():
            return folder / name
    return None


def clash_message(path: Path, folder: str | os.PathLike) -> str:
    return (f"refused: this run would overwrite {path}, a file it did not create (its run folder {folder} is "
            "not a fresh one; with --trainer.logger false the run folder is --trainer.default_root_dir, the "
            "working folder by default). Nothing was written. Keep a logger (each run gets a fresh version_N "
            "folder), pass --trainer.default_root_dir <an empty folder>, or move the file away.")


class RunFolderLock:
    """Exclusive ownership of a run folder, as a context manager (``fcntl.flock`` on ``<folder>.lock``).

    Args:
        folder: the run folder (it need not exist yet; its parent is created).

    Entering raises :class:`RunFolderLockedError` naming the folder and the holder's pid when
    another process holds it; it never waits. The lock is released on exit and by the kernel when
    the holding process dies.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderLockedError(
                f"refused: run folder {self.folder} is in use by another run (process {holder}, lock {self.path}); "
                "wait for it to finish or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    @property
    def fds(self) -> tuple[int, ...]:
        """The lock's descriptor, for a child that must hold the lock too (``pass_fds``)."""
        return () if self._fd is None else (self._fd,)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking it would race a waiter)
            self._fd = None
