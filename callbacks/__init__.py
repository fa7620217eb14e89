"""Lightning callbacks of lit-sr, one job each; every one of them is importable from here.

The run-control callbacks that ``lit-sr fit`` installs itself (progress bar, stops, prediction writer)
live in :mod:`lit_sr.training` and are re-exported here, so configs naming ``callbacks.<Name>`` keep working.
"""

from callbacks.adversarial_eval import AdversarialEvalCallback
from callbacks.backdoor_eval import BackdoorEvalCallback, BackdoorSummary
from callbacks.downstream_eval import DownstreamEvalCallback
from callbacks.image_logger import SRImageLogger
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.poison_selection import PoisonSelectionCallback, SelectionResults, SelectionRun
from callbacks.summary import RunSummary
from lit_sr.training import (
    NonFiniteLossError,
    PredictionWriter,
    StopOnNonFiniteLoss,
    StopOnSigterm,
    TimedProgressBar,
)

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
