"""Run a function as the ranks of a gloo group in processes forked from the test process.

A fork starts with the test process's imports (torch, torchvision, lightning: about 10 CPU-seconds
a new interpreter pays again), so a 2-rank run costs only its own work. Each rank's traceback comes
back in the failure message; a rank that outlives ``timeout`` is killed, with its peers, so a hang
fails the test instead of stalling the suite. Ports come from the OS (``free_port``) and every file
a rank writes goes where the test says (its ``tmp_path``): safe with two pytest-xdist workers.

:func:`run_forked` forks plain functions; :class:`ForkedDDP` runs a Lightning ``Trainer`` call whose
strategy forks the ranks itself (``strategy="ddp_fork"``), under the same rules.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from pathlib import Path

import pytest
import torch


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(target: Callable, args: tuple, error_file: str) -> None:
    # A forked child must not reuse the parent's OpenMP pool (as DataLoader workers do), and it must
    # not run the parent's exit handlers (pytest's): it leaves by os._exit, 0 or 1.
    torch.set_num_threads(1)
    code = 0
    try:
        target(*args)
    except BaseException:  # noqa: BLE001 - any failure of the rank goes back to the test, traceback and all
        Path(error_file).write_text(traceback.format_exc())
        code = 1
    os._exit(code)


def run_forked(target: Callable, rank_args: Sequence[tuple], log_dir: Path, timeout: float = 300.0,
               may_fail: bool = False) -> list[int]:
    """Run ``target(*rank_args[r])`` in one forked process per rank ``r``; return their exit codes.

    A rank that raises exits with 1 and leaves its traceback in ``log_dir/rank<r>.traceback``. Unless
    ``may_fail``, the first rank that exits with a code other than 0 fails the run at once (its peers,
    which would wait for it at their next collective, are killed) with an AssertionError that shows
    every traceback. Past ``timeout`` seconds the ranks still running are killed and the run fails
    either way.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    errors = [log_dir / f"rank{r}.traceback" for r in range(len(rank_args))]
    procs = [context.Process(target=_rank_main, args=(target, tuple(args), str(error)))
             for args, error in zip(rank_args, errors)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    problem = None
    try:
        while True:
            failed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            running = [r for r, p in enumerate(procs) if p.exitcode is None]
            if failed and not may_fail:
                problem = f"rank {failed[0]} exited with code {procs[failed[0]].exitcode}"
            elif running and time.monotonic() >= deadline:
                problem = f"ranks {running} still running after {timeout:.0f} s (killed)"
            if problem is not None or not running:
                break
            wait([procs[r].sentinel for r in running], timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for p in procs:  # also when the test itself is interrupted: no rank outlives it
            if p.exitcode is None:
                p.kill()
            p.join()
    if problem is not None:
        shown = "\n".join(f"--- rank {r} (exit code {p.exitcode}):\n" + (
            errors[r].read_text() if errors[r].exists() else "no traceback (killed, or left by os._exit)")
            for r, p in enumerate(procs))
        raise AssertionError(f"{problem}\n{shown}")
    return [p.exitcode for p in procs]


class ForkedDDP:
    """Runs Lightning ``Trainer`` calls whose DDP ranks are forked from this process, with a watchdog.

    The strategy must fork (``strategy="ddp_fork"``, Lightning's multiprocessing launcher: the same
    ``DDPStrategy`` as ``"ddp"``, whose subprocess launcher would start a new interpreter per rank).
    ``MASTER_ADDR`` and ``MASTER_PORT`` (:func:`free_port`) are set through ``mp`` so that they are undone
    after the test: the launcher writes ``MASTER_PORT`` into this process's environment, which the next
    test of this xdist worker would otherwise inherit. A rank that raises fails the call with torch's
    ``ProcessRaisedException``, which names the rank and holds its traceback (the other rank is killed);
    a call still running after ``timeout`` seconds has its ranks killed and raises :class:`TimeoutError`.
    What comes back to this process is rank 0's weights, ``trainer.state`` and ``callback_metrics``
    (not e.g. ``global_step`` or the callbacks' state): ranks report the rest from a callback.
    """

    def __init__(self, mp: pytest.MonkeyPatch, timeout: float = 300.0):
        mp.setenv("MASTER_ADDR", "127.0.0.1")
        mp.setenv("MASTER_PORT", str(free_port()))
        self.timeout = timeout

    def __call__(self, trainer, method: str, *args, **kwargs):
        """``getattr(trainer, method)(*args, **kwargs)``: ``fit``, ``validate``, ``test`` or ``predict``."""
        launcher = trainer.strategy.launcher
        if getattr(launcher, "_start_method", None) != "fork":
            raise ValueError(f"the trainer's strategy must fork its ranks (strategy='ddp_fork'), got {trainer.strategy}")
        launcher.procs = []  # the launcher puts this call's ranks here as it starts them
        expired = threading.Event()

        def kill() -> None:  # the launcher's join in this thread then raises
            expired.set()
            for proc in launcher.procs:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        timer = threading.Timer(self.timeout, kill)
        timer.daemon = True
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # inherited by the ranks: a forked child must not reuse an OpenMP pool
        timer.start()
        try:
            return getattr(trainer, method)(*args, **kwargs)
        except Exception as exc:
            if expired.is_set():
                raise TimeoutError(f"trainer.{method}: forked DDP ranks still running after {self.timeout:.0f} s "
                                   "(killed)") from exc
            raise
        finally:
            timer.cancel()
            torch.set_num_threads(threads)
