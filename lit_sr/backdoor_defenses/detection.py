"""Label-free detection of poisoned training pairs: score every pair, measure the scores against the truth.

``run_detection(model, data)`` scores every training pair of a poisoned data set with each chosen
method (:mod:`lit_sr.backdoor_defenses.detection_scores`: spectral signatures on backdoor-gradient
sketches, the early training loss, activation clustering) and measures each score against the
known poisoned pairs (:mod:`lit_sr.backdoor_defenses.detection_metrics`: ROC-AUC, precision and
recall of the top-k). The detectors see the pairs only; the poisoned mask is read by the metrics
alone. :class:`DetectionResults` gives a table (:meth:`~DetectionResults.to_rows`), JSON
(:meth:`~DetectionResults.as_dict`) and a ROC plot (:meth:`~DetectionResults.plot_roc`).

**Which network each score reads.** ``spectral`` (Tran et al.'s score on one network's gradient
sketches) and ``activation_clustering`` read the network given (e.g. the trained, backdoored
model; pass the early-trained network to score that one). ``early_loss`` and
``spectral_trajectory`` (the spectral score averaged over the sketches at every evaluation point
of a short training) read one short training of a fresh copy of it, ``early_steps`` steps
(:func:`early_training`), unless an :class:`EarlyTraining` is passed. :func:`retrain_without` trains a fresh copy on the pairs that
are not flagged (the "remove and retrain" use of a detector).

Nothing here knows Lightning; it runs in one process (no collective), on the network's device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lit_sr.backdoor_defenses.detection_metrics import (
    detection_metrics,
    flag_count,
    flag_top,
    roc_auc,
    roc_curve,
)
from lit_sr.backdoor_defenses.detection_pairs import TrainingPairs, pairs_from_datamodule
from lit_sr.backdoor_defenses.detection_scores import (
    EarlyTraining,
    Pool,
    activation_clustering_scores,
    cluster_scores,
    default_layer,
    early_loss_scores,
    early_training,
    gradient_sketches,
    layer_features,
    spectral_signature_scores,
)
from lit_sr.plots import save_figure
from lit_sr.poison.scoring import GradientScorer
from lit_sr.runtime import Autocast, autocast_dtype
from lit_sr.validation import check_bool, check_choice, check_int

__all__ = [
    "METHODS",
    "DetectionResults",
    "EarlyTraining",
    "MethodResult",
    "TrainingPairs",
    "activation_clustering_scores",
    "detection_metrics",
    "early_loss_scores",
    "early_training",
    "pairs_from_datamodule",
    "retrain_without",
    "roc_auc",
    "roc_curve",
    "run_detection",
    "spectral_signature_scores",
]

Method = Literal["spectral", "spectral_trajectory", "early_loss", "activation_clustering"]
METHODS: tuple[str, ...] = ("spectral", "spectral_trajectory", "early_loss", "activation_clustering")
EarlyDirection = Literal["low", "high", "both"]


@dataclass
class MethodResult:
    """One score over every pair and how well it detects.

    Attributes:
        name: the row's name (``"spectral"``, ``"early_loss_low"``, ...).
        scores: ``(N,)`` float32 on the CPU, higher = more suspicious.
        metrics: :func:`detection_metrics`'s dict (``fpr``/``tpr`` tensors included).
        seconds: wall time of the scoring.
        details: what the score read (layer, steps, direction, cluster sizes, ...).
    """

    name: str
    scores: torch.Tensor
    metrics: dict[str, Any]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DetectionResults:
    """Per-method scores and metrics over one set of training pairs (see the module docstring)."""

    indices: list[int]
    poisoned: torch.Tensor
    methods: dict[str, MethodResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def flagged(self, method: str) -> list[int]:
        """Training indices ``method`` flags at its threshold (the top-k of :func:`detection_metrics`)."""
        result = self._method(method)
        mask = flag_top(result.scores, result.metrics["flagged"])
        return sorted(torch.tensor(self.indices)[mask].tolist())

    def _method(self, method: str) -> MethodResult:
        if method not in self.methods:
            raise KeyError(f"no method {method!r} in these results; they hold {list(self.methods)}")
        return self.methods[method]

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat row per method: ROC-AUC, precision, recall, flag rule, counts, seconds, details."""
        rows = []
        for name, r in self.methods.items():
            m = r.metrics
            rows.append({"method": name, "roc_auc": m["roc_auc"], "precision": m["precision"], "recall": m["recall"],
                         "flagged": m["flagged"], "true_positives": m["true_positives"], "flag_rule": m["flag_rule"],
                         "n_pairs": m["n_pairs"], "n_poisoned": m["n_poisoned"], "seconds": r.seconds,
                         **{k: v for k, v in r.details.items() if isinstance(v, str | int | float | bool)}})
        return rows

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values: the settings, the truth, and per method its metrics, ROC curve, scores and details."""
        methods = {}
        for name, r in self.methods.items():
            metrics = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.metrics.items()}
            methods[name] = {"metrics": metrics, "seconds": r.seconds, "details": r.details,
                             "scores": r.scores.tolist(), "flagged": self.flagged(name)}
        return {"settings": self.settings, "indices": self.indices,
                "poisoned_indices": sorted(torch.tensor(self.indices)[self.poisoned].tolist()), "methods": methods}

    def roc_figure(self, title: str = "detection of poisoned training pairs"):
        """A matplotlib ``Figure`` (Agg canvas, no pyplot) with one ROC curve per method and the chance line."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.6, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for name, r in self.methods.items():
            ax.plot(r.metrics["fpr"].numpy(), r.metrics["tpr"].numpy(), label=f"{name} (AUC {r.metrics['roc_auc']:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
        ax.set_xlabel("false-positive rate (clean pairs flagged)")
        ax.set_ylabel("true-positive rate (poisoned pairs flagged)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        return fig

    def plot_roc(self, path: str | Path, title: str = "detection of poisoned training pairs") -> Path:
        """Write :meth:`roc_figure` as a PNG, atomically; returns the path."""
        return save_figure(self.roc_figure(title), path)


def _as_pairs(data: Any, poisoned_indices: Sequence[int] | None) -> TrainingPairs:
    if isinstance(data, TrainingPairs):
        if poisoned_indices is None:
            return data
        known, chosen = set(data.indices.tolist()), set(poisoned_indices)
        unknown = sorted(chosen - known)
        if unknown:
            raise ValueError(f"poisoned_indices {unknown[:5]} are not among the pairs' indices")
        mask = torch.tensor([i in chosen for i in data.indices.tolist()], dtype=torch.bool)
        return TrainingPairs(data.lr, data.hr, mask, data.indices)
    return pairs_from_datamodule(data, poisoned_indices)


def _network(model: nn.Module) -> nn.Module:
    """The SR network: ``model`` itself, or an SR LightningModule's ``net``."""
    net = getattr(model, "net", model)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model must be an SR network (nn.Module) or a module with a .net network; got "
                        f"{type(model).__name__}")
    return net


def run_detection(
    model: nn.Module,
    data: Any,
    poisoned_indices: Sequence[int] | None = None,
    methods: Sequence[Method] = METHODS,
    *,
    scorer: GradientScorer | None = None,
    spectral_normalize: bool = False,
    early: EarlyTraining | None = None,
    early_steps: int = 100,
    early_evaluations: int = 5,
    early_lr: float = 5e-3,
    early_direction: EarlyDirection = "both",
    layer: str | None = None,
    pool: Pool = "mean",
    n_components: int = 10,
    flag_fraction: float | None = None,
    loss: Literal["l1", "mse"] | Callable = "l1",
    batch_size: int = 16,
    seed: int = 0,
    autocast: Autocast = "none",
    progress: bool = True,
) -> DetectionResults:
    """Score every training pair with each method and measure the scores against the poisoned ones.

    Args:
        model: the SR network (or an SR LightningModule, whose ``net`` is used); left unchanged.
        data: :class:`TrainingPairs`, or a poisoned SR data module set up for ``"fit"``
            (:func:`pairs_from_datamodule`).
        poisoned_indices: the truth (training indices); default the pairs' mask / the data
            module's active set.
        methods: any of ``"spectral"``, ``"spectral_trajectory"``, ``"early_loss"``,
            ``"activation_clustering"``.
        scorer: the gradient scorer of both spectral scores (default
            ``GradientScorer(sketch_dim=2048, loss=loss, seed=seed)``; a scorer with ``loss="module"``
            is refused: there is no LightningModule here to take the loss from).
        spectral_normalize: unit-normalise the sketches first (see :func:`spectral_signature_scores`).
        early: a finished :class:`EarlyTraining` to read (then ``early_*`` are unused; it must
            hold sketches for ``spectral_trajectory``).
        early_steps, early_evaluations, early_lr: the short fresh training (:func:`early_training`).
        early_direction: ``"low"`` (a low early loss is suspicious: ABL), ``"high"``, or ``"both"``
            (default: two rows, ``early_loss_low`` and ``early_loss_high``; the AUC of one is one
            minus the other's).
        layer: the layer of ``activation_clustering`` (default :func:`default_layer`).
        pool, n_components: its pooling and PCA size (:func:`layer_features`, :func:`cluster_scores`).
        flag_fraction: the flag rule of precision/recall (:func:`detection_metrics`).
        loss: the per-pair loss (``"l1"``, the recipes' pixel loss, or ``"mse"``).
        batch_size: pairs per forward / gradient batch (and the early training's mini-batch).
        seed: seeds the sketch hash, the early training and k-means.
        autocast: ``"none"`` or ``"bf16"``.
        progress: tqdm bars.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty selection of {list(METHODS)}; got {list(methods)}")
    check_choice(early_direction, "early_direction", ("low", "high", "both"))
    check_int(batch_size, "batch_size", 1)
    check_int(seed, "seed", 0)
    check_bool(progress, "progress")
    autocast_dtype(autocast)
    if flag_fraction is not None:
        flag_count(2, 1, flag_fraction)  # validates it before any work
    net = _network(model)
    pairs = _as_pairs(data, poisoned_indices)
    results: dict[str, MethodResult] = {}

    def record(name: str, scores: torch.Tensor, seconds: float, details: dict[str, Any]) -> None:
        results[name] = MethodResult(name, scores.float().cpu(), detection_metrics(scores, pairs.poisoned, flag_fraction),
                                     seconds, details)

    if scorer is None:
        scorer = GradientScorer(sketch_dim=2048, loss=loss, seed=seed, batch_size=batch_size, autocast=autocast)
    if not isinstance(scorer, GradientScorer) or scorer.sketch_dim is None or scorer.uses_module_loss:
        raise ValueError("scorer must be a lit_sr.poison.GradientScorer with a sketch_dim and loss 'l1', 'mse' or a "
                         "callable ('module' needs a LightningModule; pass its pixel_loss as the callable)")
    sketch_details = {"representation": "backdoor-gradient sketches", "sketch_dim": scorer.sketch_dim,
                      "normalize": spectral_normalize}
    if "spectral" in methods:
        start = time.perf_counter()
        sketches = gradient_sketches(net, pairs, scorer, progress=progress)
        record("spectral", spectral_signature_scores(sketches, normalize=spectral_normalize),
               time.perf_counter() - start, sketch_details)
    if "early_loss" in methods or "spectral_trajectory" in methods:
        if early is None:
            early = early_training(net, pairs, steps=early_steps, evaluations=early_evaluations, lr=early_lr,
                                   batch_size=batch_size, loss=loss, seed=seed, autocast=autocast, progress=progress,
                                   scorer=scorer if "spectral_trajectory" in methods else None)
        if early.losses.shape[-1] != len(pairs):
            raise ValueError(f"the early training given has losses of {early.losses.shape[-1]} pairs, but {len(pairs)} "
                             "pairs are scored: pass the EarlyTraining run on these pairs")
        when = {"early_steps": early.at_steps[-1], "evaluated_at": ",".join(map(str, early.at_steps))}
    if "spectral_trajectory" in methods:
        if early.sketches is None:
            raise ValueError("spectral_trajectory needs the early training's sketches: pass an EarlyTraining run "
                             "with a scorer, or none (run_detection then runs one)")
        start = time.perf_counter()
        scores = spectral_signature_scores(early.sketches, normalize=spectral_normalize)
        # the cost is the early training's (sketches included) plus this step
        record("spectral_trajectory", scores, early.seconds + time.perf_counter() - start, {**sketch_details, **when})
    if "early_loss" in methods:
        directions = ("low", "high") if early_direction == "both" else (early_direction,)
        for direction in directions:
            name = "early_loss" if len(directions) == 1 else f"early_loss_{direction}"
            # the cost of the early training (given or run here)
            record(name, early_loss_scores(early.losses, direction), early.seconds, {"direction": direction, **when})
    if "activation_clustering" in methods:
        start = time.perf_counter()
        layer = default_layer(net) if layer is None else layer
        features = layer_features(net, pairs, layer, pool, batch_size, autocast, progress)
        clustering = cluster_scores(features, n_components, seed)
        record("activation_clustering", clustering.scores, time.perf_counter() - start,
               {"layer": layer, "pool": pool, "n_components": n_components,
                "cluster_sizes": "/".join(map(str, sorted(clustering.sizes)))})
    settings = {"network": type(net).__name__, "n_pairs": len(pairs), "loss": loss if isinstance(loss, str) else
                getattr(loss, "__name__", type(loss).__name__), "seed": seed, "autocast": autocast,
                "flag_fraction": flag_fraction}
    return DetectionResults(pairs.indices.tolist(), pairs.poisoned.clone(), results, settings)


def retrain_without(
    model: nn.Module,
    pairs: TrainingPairs,
    flagged: torch.Tensor,
    steps: int = 950,
    lr: float = 5e-3,
    batch_size: int = 16,
    loss: Literal["l1", "mse"] | Callable = "l1",
    seed: int = 0,
    autocast: Autocast = "none",
    progress: bool = True,
) -> EarlyTraining:
    """Train a fresh copy of ``model``'s network on the pairs not ``flagged`` (``(N,)`` bool).

    The same loop as :func:`early_training` (re-initialised, Adam, fixed patches, no scheduler),
    run for ``steps`` (default the demo's 950). Returns the :class:`EarlyTraining` record of the
    retraining (its ``losses`` are over the kept pairs only).
    """
    kept = pairs.without(flagged)
    return early_training(_network(model), kept, steps=steps, evaluations=1, lr=lr, batch_size=batch_size,
                          loss=loss, seed=seed, autocast=autocast, progress=progress)
