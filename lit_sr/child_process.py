"""Child processes that die with their parent: a study's training runs are never orphaned.

:func:`run_child` starts a command in its own process group with, on Linux, the parent-death
signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)`` through ctypes): when the parent dies for any reason,
``kill -9`` included, the kernel sends SIGTERM to the child (Lightning then stops its run and the
DDP ranks it launched). When the parent leaves :func:`run_child` by an exception (Ctrl-C, an error)
the whole group is terminated, then killed after ``grace`` seconds. File descriptors given in
``pass_fds`` (a :class:`lit_sr.run_folder.RunFolderLock`'s) are held by the child too, so a run
folder stays locked for as long as anything still writes into it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """``preexec_fn`` of the child (between fork and exec): ask for SIGTERM when the parent dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        os._exit(127)  # cannot promise to die with the parent: do not run at all
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(127)


def _terminate_group(process: subprocess.Popen, grace: float) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_child(command: Sequence[str], stdout: IO | None = None, env: Mapping[str, str] | None = None,
              pass_fds: Sequence[int] = (), grace: float = 30.0) -> int:
    """Run ``command`` to completion as a guarded child (see the module docstring); returns its exit code.

    Args:
        command: the argv.
        stdout: where its stdout and stderr go (``None``: this process's).
        env: its environment (``None``: this process's).
        pass_fds: descriptors the child keeps open (and so holds any lock on them).
        grace: seconds between SIGTERM and SIGKILL when this call is interrupted.
    """
    linux = sys.platform.startswith("linux")
    parent = os.getpid()
    process = subprocess.Popen(
        list(command), stdout=stdout, stderr=subprocess.STDOUT if stdout is not None else None,
        env=None if env is None else dict(env), pass_fds=tuple(pass_fds), start_new_session=True,
        preexec_fn=(lambda: _die_with_parent(parent)) if linux else None)
    try:
        return process.wait()
    except BaseException:
        _terminate_group(process, grace)
        raise
