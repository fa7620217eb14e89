"""Lightning's default profiler, which records nothing, without a generator per hook call.

Lightning 2.6 wraps every hook it dispatches in ``with trainer.profiler.profile(name):``. Its
default :class:`~lightning.pytorch.profilers.PassThroughProfiler` records nothing, yet its
``profile`` is a ``contextlib.contextmanager`` generator: each hook call builds a context
manager, starts and resumes a generator and calls the empty ``start`` and ``stop``, about ten
Python calls, some forty times a training step. :class:`NoProfiler` returns one shared
``contextlib.nullcontext`` instead (three calls). ``lit-sr fit`` puts it in place of Lightning's
default; a profiler the user asked for (``--trainer.profiler simple``, ``advanced``, ``pytorch``)
is kept, so profiling a run works as before. ``benchmarks/step_overhead.py --count-calls``
measures the difference (``docs/performance.md``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import lightning as L
from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = nullcontext()  # stateless, so one instance serves every (nested) hook call


class NoProfiler(PassThroughProfiler):
    """A :class:`~lightning.pytorch.profilers.PassThroughProfiler` whose ``profile`` builds nothing per call."""

    def profile(self, action_name: str) -> AbstractContextManager[None]:
        """A context that does nothing, the same object for every ``action_name``."""
        return _NOTHING


def use_no_profiler(trainer: L.Trainer) -> bool:
    """Put :class:`NoProfiler` in place of Lightning's default profiler; returns whether it did.

    Only Lightning's own default (exactly a ``PassThroughProfiler``) is replaced: a profiler the
    run was configured with stays.
    """
    if type(trainer.profiler) is not PassThroughProfiler:
        return False
    trainer.profiler = NoProfiler()
    return True
