"""What ``lit-sr fit|validate|test|predict`` installs in every Trainer it builds: run control, not research.

The progress bar redrawn by the clock, the stop on a non-finite loss, the stop on SIGTERM/SIGINT, the
prediction writer, the hiding of empty per-batch hooks, the profiler that records nothing and the
plain record of the running hook's name (lit-sr's modules inherit it) belong to the training job
itself, so they live in the library (the job imports them; ``lit_sr`` never imports ``callbacks`` or ``datamodules``).
The research callbacks (attack, backdoor and downstream evaluation, poison selection, image logging,
summaries) stay in ``callbacks``, which re-exports these too, so ``class_path: callbacks.TimedProgressBar``
in a config keeps working.
"""

from lit_sr.training.batch_hooks import restore_batch_hooks, skip_noop_batch_hooks
from lit_sr.training.hook_name import PlainHookName
from lit_sr.training.no_profiler import NoProfiler, use_no_profiler
from lit_sr.training.prediction_writer import PredictionWriter
from lit_sr.training.progress_bar import TimedProgressBar
from lit_sr.training.stop_on_nonfinite import NonFiniteLossError, StopOnNonFiniteLoss
from lit_sr.training.stop_on_signal import StopOnSigterm

__all__ = [
    "NoProfiler",
    "NonFiniteLossError",
    "PlainHookName",
    "PredictionWriter",
    "StopOnNonFiniteLoss",
    "StopOnSigterm",
    "TimedProgressBar",
    "restore_batch_hooks",
    "skip_noop_batch_hooks",
    "use_no_profiler",
]
