"""Label-free suspicion scores of training pairs, higher = more suspicious.

Three observations from the classifier literature, carried over to SR (the network maps LR to HR,
so "the representation of a sample" is chosen per score and stated):

* **spectral signatures** (Tran et al., NeurIPS 2018): poisoned samples leave a strong common
  direction in a learnt representation; the score of sample ``i`` is its squared projection on the
  top right-singular vector of the centred representations. Here the representation is the
  per-sample backdoor-gradient sketch of :class:`lit_sr.poison.GradientScorer` (the gradient of
  the pair's training loss with respect to the weights, count-sketched), so pairs that pull the
  weights the same unusual way stand out.
* **early loss** (anti-backdoor learning, Li et al., NeurIPS 2021): a network learns the poisoned
  pairs at another speed than the clean ones, so their loss early in training differs. ABL
  observed *faster* (lower loss, ``direction="low"``, the default); for SR a target label far
  from the input can be learnt *slower* (``direction="high"``); the score's sign is the parameter.
* **activation clustering** (Chen et al., 2018): the features of a chosen layer, pooled, reduced
  and split in two by 2-means; poisoned samples fall in the smaller cluster. The paper reduces with
  ICA to 10 dimensions; here PCA (``n_components``, default 10), deterministic and dependency-free.
  The score is ``d(x, c_large) - d(x, c_small)``: positive for a sample nearer the smaller
  cluster's centre.

Everything runs batched on the network's device with the project's ``autocast`` argument; the
network is left as it was (modes and ``requires_grad`` restored).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_sr.backdoor_defenses.detection_pairs import TrainingPairs
from lit_sr.poison.scoring import GradientScorer
from lit_sr.runtime import (
    Autocast,
    autocast_context,
    autocast_dtype,
    frozen_eval,
    grad_enabled_outside_inference,
    model_device,
)
from lit_sr.validation import check_choice, check_int, check_positive

PairLoss = Literal["l1", "mse"]
Direction = Literal["low", "high"]
Pool = Literal["mean", "mean_std", "flatten"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


def _n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


# --------------------------------------------------------------------------- (a) spectral signatures
def spectral_signature_scores(sketches: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Squared projection of each centred row of ``sketches`` on their top right-singular vector (Tran et al.).

    Args:
        sketches: ``(N, D)``, one representation per sample (here gradient sketches), any float
            dtype; or ``(T, N, D)``, the same samples at ``T`` points of a training (a trajectory):
            then each point's scores are divided by their mean and the ``T`` are averaged, so that
            every point weighs the same. ``T = 1`` is Tran et al. exactly; the trajectory is our
            extension, because one point's top direction was measured to swing between the
            poisoned pairs and clean variation from one checkpoint to the next (README,
            "Detecting poisoned pairs").
        normalize: scale every row to unit norm first (then only directions count, not gradient
            magnitudes; off by default, as in Tran et al.).

    Returns:
        ``(N,)`` float32 scores on the sketches' device.
    """
    if isinstance(sketches, torch.Tensor) and sketches.dim() == 3:
        per_point = torch.stack([spectral_signature_scores(s, normalize) for s in sketches]).double()
        return (per_point / per_point.mean(1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)).mean(0).float()
    if not isinstance(sketches, torch.Tensor) or sketches.dim() != 2 or sketches.shape[0] < 2:
        raise ValueError(f"sketches must be an (N, D) or (T, N, D) tensor with N >= 2; got "
                         f"{tuple(sketches.shape) if isinstance(sketches, torch.Tensor) else type(sketches).__name__}")
    x = sketches.double()
    if normalize:
        x = F.normalize(x, dim=1)
    x = x - x.mean(0, keepdim=True)
    # the top right-singular vector of x is the top eigenvector of x^T x; with N << D the N x N
    # Gram matrix gives it for less: x^T u / ||x^T u|| for the top eigenvector u of x x^T
    if x.shape[0] <= x.shape[1]:
        _, vectors = torch.linalg.eigh(x @ x.T)
        direction = F.normalize(x.T @ vectors[:, -1], dim=0)
    else:
        _, vectors = torch.linalg.eigh(x.T @ x)
        direction = vectors[:, -1]
    return (x @ direction).square().float()


def gradient_sketches(
    net: nn.Module,
    pairs: TrainingPairs,
    scorer: GradientScorer | None = None,
    module_loss: LossFn | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``(N, sketch_dim)`` backdoor-gradient sketches of every pair, in pair order (float32, on the CPU).

    Args:
        net: the SR network whose weights are differentiated.
        pairs: the training pairs.
        scorer: how (default ``GradientScorer(sketch_dim=2048, loss="l1")``: the L1 pixel loss
            of the recipes); it must keep sketches.
        module_loss: the victim's loss, for a scorer with ``loss="module"``.
        progress: show a tqdm bar.
    """
    scorer = GradientScorer(sketch_dim=2048, loss="l1") if scorer is None else scorer
    if not isinstance(scorer, GradientScorer) or scorer.sketch_dim is None:
        raise ValueError("gradient_sketches needs a lit_sr.poison.GradientScorer with a sketch_dim (not None)")
    scorer.check_network(net)
    device = model_device(net, torch.device("cpu"))
    batches = _progress(pairs.batches(scorer.batch_size, device), _n_batches(len(pairs), scorer.batch_size),
                        "gradient sketches", progress)
    scores = scorer.score(net, batches, module_loss)
    if scores.indices != pairs.indices.tolist():
        raise RuntimeError("the gradient scorer returned the pairs in another order")
    return scores.sketches.float().cpu()


# --------------------------------------------------------------------------- (b) early loss
def _per_sample_loss(out: torch.Tensor, hr: torch.Tensor, loss: PairLoss | LossFn) -> torch.Tensor:
    if loss == "l1":
        return (out.float() - hr).abs().flatten(1).mean(1)
    if loss == "mse":
        return (out.float() - hr).square().flatten(1).mean(1)
    return torch.stack([loss(o[None].float(), h[None]).reshape(()) for o, h in zip(out, hr)])


def _check_loss(loss) -> None:
    if not callable(loss) and loss not in ("l1", "mse"):
        raise ValueError(f"loss must be 'l1', 'mse' or a callable (output, target) -> scalar; got {loss!r}")


def per_sample_losses(
    net: nn.Module, pairs: TrainingPairs, loss: PairLoss | LossFn = "l1", batch_size: int = 16,
    autocast: Autocast = "none", progress: bool = False,
) -> torch.Tensor:
    """``(N,)`` float32 loss of every pair under ``net`` (eval mode, no gradients), on the CPU.

    ``loss``: ``"l1"`` (default, the recipes' pixel loss) or ``"mse"``, the mean over the pair's
    pixels; or a callable ``(output, target) -> scalar`` applied to one-pair batches.
    """
    _check_loss(loss)
    check_int(batch_size, "batch_size", 1)
    autocast_dtype(autocast)
    device = model_device(net, torch.device("cpu"))
    out = []
    with frozen_eval(net), torch.no_grad():
        for batch in _progress(pairs.batches(batch_size, device), _n_batches(len(pairs), batch_size), "losses",
                               progress):
            with autocast_context(autocast, device):
                sr = net(batch["lr"])
            out.append(_per_sample_loss(sr, batch["hr"], loss).cpu())
    return torch.cat(out)


def early_loss_scores(losses: torch.Tensor, direction: Direction = "low") -> torch.Tensor:
    """Suspicion from per-pair losses: ``-loss`` for ``direction="low"`` (learnt faster, ABL), ``loss`` for ``"high"``.

    ``losses`` is ``(N,)`` or ``(T, N)`` (losses at ``T`` points of the early training, averaged).
    """
    check_choice(direction, "direction", ("low", "high"))
    losses = losses.float()
    if losses.dim() == 2:
        losses = losses.mean(0)
    if losses.dim() != 1:
        raise ValueError(f"losses must be (N,) or (T, N); got {tuple(losses.shape)}")
    return -losses if direction == "low" else losses.clone()


@dataclass
class EarlyTraining:
    """A short training of a fresh network on the pairs, and the per-pair losses along it.

    Attributes:
        net: the network after ``steps`` steps.
        losses: ``(T, N)`` float32, every pair's loss at each evaluation point.
        at_steps: the ``T`` step counts at which ``losses`` were measured.
        seconds: wall time of the training and evaluations.
        sketches: ``(T, N, sketch_dim)`` backdoor-gradient sketches of every pair at the same
            points, when a scorer was given (the trajectory of :func:`spectral_signature_scores`).
    """

    net: nn.Module
    losses: torch.Tensor
    at_steps: list[int]
    seconds: float
    sketches: torch.Tensor | None = None


def reinitialise(net: nn.Module, seed: int) -> nn.Module:
    """A copy of ``net`` with every layer that has ``reset_parameters`` re-drawn (seeded; ``net`` is untouched).

    This is PyTorch's default initialisation of each layer, not necessarily the architecture's
    own scheme (BasicSR's EDSR keeps PyTorch's, so there they agree).
    """
    fresh = copy.deepcopy(net)
    devices = [model_device(fresh)] if model_device(fresh, torch.device("cpu")).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
    return fresh


def early_training(
    net: nn.Module,
    pairs: TrainingPairs,
    steps: int = 100,
    evaluations: int = 5,
    lr: float = 5e-3,
    batch_size: int = 16,
    loss: PairLoss | LossFn = "l1",
    seed: int = 0,
    reinit: bool = True,
    autocast: Autocast = "none",
    progress: bool = True,
    scorer: GradientScorer | None = None,
) -> EarlyTraining:
    """Train a fresh copy of ``net`` for ``steps`` Adam steps on ``pairs``, recording every pair's loss.

    The copy is re-initialised (:func:`reinitialise`, seed ``seed``) unless ``reinit=False``;
    mini-batches are seeded epochs of a random permutation (no augmentation: the fixed patches
    of ``pairs``). Every pair's loss is measured (eval mode) after ``steps * j / evaluations``
    steps, ``j = 1 .. evaluations``, and, with ``scorer``, its backdoor-gradient sketches
    (:func:`gradient_sketches`; the scorer's loss must not be ``"module"``). ``net`` itself is
    not changed. The default 100 steps at Adam 5e-3 and batch 16 are ~10% of the demo's
    950-step schedule (the "early" phase).
    """
    import time

    check_int(steps, "steps", 1)
    check_int(evaluations, "evaluations", 1, steps)
    check_positive(lr, "lr")
    check_int(batch_size, "batch_size", 1)
    check_int(seed, "seed", 0)
    _check_loss(loss)
    autocast_dtype(autocast)
    start = time.perf_counter()
    if scorer is not None and (not isinstance(scorer, GradientScorer) or scorer.sketch_dim is None
                               or scorer.uses_module_loss):
        raise ValueError("early_training's scorer must be a GradientScorer with a sketch_dim and loss 'l1', 'mse' "
                         "or a callable (there is no LightningModule to take a 'module' loss from)")
    # Lightning hooks run under inference mode; a copy made there could not be trained
    with grad_enabled_outside_inference():
        fresh = reinitialise(net, seed) if reinit else copy.deepcopy(net)
        device = model_device(fresh, torch.device("cpu"))
        for p in fresh.parameters():
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(fresh.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        checkpoints = sorted({round(steps * j / evaluations) for j in range(1, evaluations + 1)})
        order, losses, sketches = torch.empty(0, dtype=torch.int64), [], []
        fresh.train()
        for step in _progress(range(1, steps + 1), steps, "early training", progress):
            if order.numel() < batch_size:  # a new epoch's permutation when the current one runs out
                order = torch.cat([order, torch.randperm(len(pairs), generator=generator)])
            chosen, order = order[:batch_size], order[batch_size:]
            lr_b, hr_b = pairs.lr[chosen].to(device), pairs.hr[chosen].to(device)
            with autocast_context(autocast, device):
                sr = fresh(lr_b)
            value = _per_sample_loss(sr, hr_b, loss).mean()
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
            if step in checkpoints:
                losses.append(per_sample_losses(fresh, pairs, loss, batch_size, autocast))
                if scorer is not None:
                    sketches.append(gradient_sketches(fresh, pairs, scorer, progress=False))
        fresh.eval()
        return EarlyTraining(fresh, torch.stack(losses), checkpoints, time.perf_counter() - start,
                             torch.stack(sketches) if sketches else None)


# --------------------------------------------------------------------------- (c) activation clustering
def layer_names(net: nn.Module) -> list[str]:
    """Names of ``net``'s submodules a feature hook can be put on (``named_modules``, the root excluded)."""
    return [name for name, _ in net.named_modules() if name]


def _layer(net: nn.Module, name: str) -> nn.Module:
    modules = dict(net.named_modules())
    if not isinstance(name, str) or not name or name not in modules:
        raise ValueError(f"layer {name!r} is not a submodule of {type(net).__name__}; valid names: "
                         f"{layer_names(net)}")
    return modules[name]


def _pool(features: torch.Tensor, pool: Pool) -> torch.Tensor:
    f = features.float()
    if f.dim() < 3 or pool == "flatten":
        return f.flatten(1)
    spatial = f.flatten(2)  # (B, C, H*W)
    if pool == "mean":
        return spatial.mean(2)
    return torch.cat([spatial.mean(2), spatial.std(2, unbiased=False)], 1)


def layer_features(
    net: nn.Module, pairs: TrainingPairs, layer: str, pool: Pool = "mean", batch_size: int = 16,
    autocast: Autocast = "none", progress: bool = False,
) -> torch.Tensor:
    """``(N, F)`` float32 pooled outputs of submodule ``layer`` on every pair's LR (CPU).

    ``pool``: ``"mean"`` (the spatial mean of each channel), ``"mean_std"`` (mean and standard
    deviation of each channel: a local high-frequency trigger moves the second more) or
    ``"flatten"`` (the whole map; the patches share one size).
    """
    module = _layer(net, layer)
    check_choice(pool, "pool", ("mean", "mean_std", "flatten"))
    check_int(batch_size, "batch_size", 1)
    autocast_dtype(autocast)
    device = model_device(net, torch.device("cpu"))
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {layer!r} returns a {type(output).__name__}, not a tensor; choose another layer")
        captured.append(_pool(output.detach(), pool).cpu())

    handle = module.register_forward_hook(hook)
    try:
        with frozen_eval(net), torch.no_grad():
            for batch in _progress(pairs.batches(batch_size, device), _n_batches(len(pairs), batch_size),
                                   f"features {layer}", progress):
                with autocast_context(autocast, device):
                    net(batch["lr"])
    finally:
        handle.remove()
    return torch.cat(captured)


def pca(x: torch.Tensor, n_components: int) -> torch.Tensor:
    """The centred rows of ``x`` ``(N, F)`` projected on their top ``n_components`` principal axes (float64).

    Each axis's sign is fixed (its largest-magnitude loading positive) so that the result is
    deterministic.
    """
    x = x.double() - x.double().mean(0, keepdim=True)
    k = min(n_components, x.shape[0], x.shape[1])
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:k]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return x @ (axes * signs).T


def kmeans(x: torch.Tensor, k: int = 2, seed: int = 0, restarts: int = 10, iterations: int = 100
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding, the best of ``restarts`` seeded runs (lowest inertia).

    Returns ``(labels (N,) int64, centres (k, F))``. A cluster that empties is re-seeded with the
    point farthest from its centre.
    """
    check_int(k, "k", 1, x.shape[0])
    check_int(restarts, "restarts", 1)
    check_int(iterations, "iterations", 1)
    x = x.double()
    generator = torch.Generator().manual_seed(check_int(seed, "seed", 0))
    best = None
    for _ in range(restarts):
        centres = _kmeanspp(x, k, generator)
        for _ in range(iterations):
            labels = torch.cdist(x, centres).argmin(1)
            new = torch.zeros_like(centres).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)
            new = new / counts.clamp(min=1).unsqueeze(1).double()
            for empty in torch.nonzero(counts == 0).reshape(-1).tolist():
                new[empty] = x[torch.cdist(x, new).min(1).values.argmax()]
            if torch.equal(new, centres):
                break
            centres = new
        labels = torch.cdist(x, centres).argmin(1)
        inertia = float(torch.cdist(x, centres).min(1).values.square().sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centres)
    return best[1], best[2]


def _kmeanspp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    centres = [x[int(torch.randint(x.shape[0], (1,), generator=generator))]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(1).values.square()
        if float(d2.sum()) == 0:
            pick = int(torch.randint(x.shape[0], (1,), generator=generator))
        else:
            pick = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        centres.append(x[pick])
    return torch.stack(centres)


@dataclass
class Clustering:
    """Activation clustering's outcome: the scores and what they came from."""

    scores: torch.Tensor
    labels: torch.Tensor
    small_cluster: int
    sizes: list[int]


def cluster_scores(features: torch.Tensor, n_components: int = 10, seed: int = 0, restarts: int = 10) -> Clustering:
    """2-means on the PCA-reduced ``features``; score ``d(x, c_large) - d(x, c_small)`` (see the module docstring)."""
    check_int(n_components, "n_components", 1)
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, F) with N >= 2; got {tuple(features.shape)}")
    reduced = pca(features, n_components)
    labels, centres = kmeans(reduced, 2, seed=seed, restarts=restarts)
    sizes = torch.bincount(labels, minlength=2)
    small = int(sizes.argmin())  # equal sizes: cluster 0
    distances = torch.cdist(reduced, centres)
    scores = (distances[:, 1 - small] - distances[:, small]).float()
    return Clustering(scores, labels, small, sizes.tolist())


def activation_clustering_scores(
    net: nn.Module,
    pairs: TrainingPairs,
    layer: str,
    pool: Pool = "mean",
    n_components: int = 10,
    seed: int = 0,
    restarts: int = 10,
    batch_size: int = 16,
    autocast: Autocast = "none",
    progress: bool = False,
) -> torch.Tensor:
    """``(N,)`` activation-clustering scores of ``layer``'s pooled features (see :func:`layer_features`, :func:`cluster_scores`)."""
    features = layer_features(net, pairs, layer, pool, batch_size, autocast, progress)
    return cluster_scores(features, n_components, seed, restarts).scores


def default_layer(net: nn.Module, candidates: Sequence[str] = ("conv_after_body", "body")) -> str:
    """The layer activation clustering reads by default: the deep features before upsampling.

    BasicSR's EDSR/RCAN/SwinIR name it ``conv_after_body`` (RRDBNet ``conv_body``); otherwise pass ``layer``.
    """
    names = set(layer_names(net))
    for name in (*candidates, "conv_body"):
        if name in names:
            return name
    raise ValueError(f"{type(net).__name__} has none of the default layers {[*candidates, 'conv_body']}; pass "
                     f"layer=... (valid names: {layer_names(net)})")
