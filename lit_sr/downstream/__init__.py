"""Downstream checks on SR outputs: classifier / detector wrappers, their training modules and metrics."""

from lit_sr.downstream.modules import ClassifierModule, DetectorModule
from lit_sr.downstream.wrappers import (
    DownstreamClassifier,
    DownstreamDetector,
    MissingWeightsError,
    torchvision_weights_file,
)

__all__ = [
    "ClassifierModule",
    "DetectorModule",
    "DownstreamClassifier",
    "DownstreamDetector",
    "MissingWeightsError",
    "torchvision_weights_file",
]
