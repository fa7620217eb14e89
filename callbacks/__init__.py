"""Lightning callbacks of lit-sr, one job each."""

from callbacks.image_logger import SRImageLogger
from callbacks.summary import RunSummary

__all__ = ["RunSummary", "SRImageLogger"]
