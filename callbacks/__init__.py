"""Lightning callbacks of lit-sr, one job each; every one of them is importable from here."""

from callbacks.adversarial_eval import AdversarialEvalCallback
from callbacks.backdoor_eval import BackdoorEvalCallback, BackdoorSummary
from callbacks.downstream_eval import DownstreamEvalCallback
from callbacks.image_logger import SRImageLogger
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.poison_selection import PoisonSelectionCallback, SelectionResults, SelectionRun
from callbacks.prediction_writer import PredictionWriter
from callbacks.progress_bar import TimedProgressBar
from callbacks.stop_on_nonfinite import NonFiniteLossError, StopOnNonFiniteLoss
from callbacks.stop_on_signal import StopOnSigterm
from callbacks.summary import RunSummary

__all__ = [
    "AdversarialEvalCallback",
    "BackdoorEvalCallback",
    "BackdoorSummary",
    "DownstreamEvalCallback",
    "LastCheckpoint",
    "NonFiniteLossError",
    "PoisonSelectionCallback",
    "PredictionWriter",
    "RunSummary",
    "SRImageLogger",
    "SelectionResults",
    "SelectionRun",
    "StopOnNonFiniteLoss",
    "StopOnSigterm",
    "TimedProgressBar",
]
