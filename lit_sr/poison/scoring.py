"""Scoring poisoning candidates by their backdoor gradients (BadSR Sec. IV-D), as a plain object.

:class:`GradientScorer` turns batches of poisoned candidates ``{"lr": triggered LR, "hr":
poisoned HR, "index"}`` into :class:`GradientScores`: for every candidate ``i`` the norm of its
backdoor gradient ``g_i = d loss(net(lr_i), hr_i) / d theta`` and a count sketch of ``g_i``
(:func:`lit_sr.poison.gradients.per_sample_grad_stats`: ``torch.func`` ``functional_call`` +
``vmap(grad)``, chunked, on the network's device). Nothing here knows Lightning or DDP; the
selection callback deals the pool out over ranks and gathers the scores.

**Which loss.** ``loss="module"`` (default) differentiates the victim's own training loss (the
LightningModule's pixel loss: L1 for the recipes), so the ranking measures how hard a sample
pulls the weights *as the training sees it*; the BadSR paper does not name the loss, and MSE
(``"mse"``) or L1 (``"l1"``) can be chosen explicitly. The loss is applied to one-sample
batches (a mean over that sample's pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lit_sr.poison.gradients import per_sample_grad_stats
from lit_sr.runtime import Autocast, autocast_dtype, model_device
from lit_sr.validation import check_choice, check_number

ScoreLoss = Literal["module", "mse", "l1"]
SCORE_LOSSES: tuple[str, ...] = ("module", "mse", "l1")
SketchDtype = Literal["float32", "float16"]
_SKETCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GradientScores:
    """Per-candidate backdoor-gradient summaries, row ``r`` for pool index ``indices[r]``.

    Attributes:
        norms: ``(N,)`` float32 gradient norms.
        sketches: ``(N, sketch_dim)`` count sketches (float32 or float16), or ``None``.
        indices: the pool indices, one per row.
    """

    norms: torch.Tensor
    sketches: torch.Tensor | None
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def to_pool_order(self, pool: list[int]) -> GradientScores:
        """The same scores with rows in the order of ``pool``; every member exactly once."""
        got = list(self.indices)
        if sorted(got) != sorted(pool) or len(set(pool)) != len(pool):
            missing = sorted(set(pool) - set(got))[:10]
            extra = sorted(set(got) - set(pool))[:10]
            raise ValueError(f"candidate_batches yielded {len(got)} samples for a pool of {len(pool)} candidates "
                             f"(missing e.g. {missing}, unexpected or repeated e.g. {extra}); it must yield every "
                             f"candidate exactly once over all ranks")
        row_of = {idx: row for row, idx in enumerate(got)}
        order = torch.tensor([row_of[idx] for idx in pool], dtype=torch.int64)
        sketches = None if self.sketches is None else self.sketches[order]
        return GradientScores(self.norms[order], sketches, list(pool))


class GradientScorer:
    """Backdoor-gradient norms and sketches of poisoning candidates (see the module docstring).

    The pass runs the network in eval mode (restored after), without touching ``.grad``, the
    optimiser or ``requires_grad``, and works under ``torch.inference_mode``.

    Args:
        batch_size: candidates requested from the data module at a time.
        chunk_size: samples per ``vmap`` call (bounds memory: chunk x (parameters + activations));
            ``None``: ``batch_size``.
        sketch_dim: buckets of the gradient sketch (``None``: norms only; the ``norm_of_sum``
            selection fitness needs sketches).
        seed: seed of the sketch's hash (identical on every rank and across resumes).
        loss: ``"module"`` (default: the victim's training loss, given to :meth:`score`),
            ``"mse"``, ``"l1"`` or a callable ``(output, target) -> scalar``.
        params: names of the network parameters to differentiate (default: every trainable one).
        autocast: ``"none"`` (float32) or ``"bf16"`` (the forward under bfloat16 autocast).
        sketch_dtype: ``"float32"`` (default) or ``"float16"`` (half the memory and DDP traffic
            of the sketches; each entry then keeps ~3 significant digits, and the selection still
            sums them in float32 or wider; an entry beyond float16's range is an error, not an
            ``inf``). float16 is what keeps a 100,000-candidate selection under 1.5 GB; its
            rounding is far below the sketch's own error (``docs/performance.md``).
    """

    def __init__(
        self,
        batch_size: int = 16,
        chunk_size: int | None = None,
        sketch_dim: int | None = 2048,
        seed: int = 0,
        loss: ScoreLoss | LossFn = "module",
        params: list[str] | None = None,
        autocast: Autocast = "none",
        sketch_dtype: SketchDtype = "float32",
    ):
        check_number(batch_size, "batch_size", 1, integer=True)
        if chunk_size is not None:
            check_number(chunk_size, "chunk_size", 1, integer=True)
        if sketch_dim is not None:
            check_number(sketch_dim, "sketch_dim", 1, integer=True)
        check_number(seed, "seed", 0, integer=True)
        if not callable(loss) and loss not in SCORE_LOSSES:
            raise ValueError(f"loss must be one of {list(SCORE_LOSSES)} or a callable (output, target) -> scalar; "
                             f"got {loss!r}")
        if isinstance(params, str):
            raise TypeError(f"params must be a list of parameter names, not a string; got {params!r}")
        autocast_dtype(autocast)  # a named error for anything but "none" / "bf16"
        check_choice(sketch_dtype, "sketch_dtype", tuple(_SKETCH_DTYPES))
        self.batch_size, self.chunk_size = batch_size, chunk_size or batch_size
        self.sketch_dim, self.seed, self.loss = sketch_dim, seed, loss
        self.params = None if params is None else list(params)
        self.autocast, self.sketch_dtype = autocast, sketch_dtype

    @property
    def uses_module_loss(self) -> bool:
        """Whether :meth:`score` needs the victim's training loss."""
        return isinstance(self.loss, str) and self.loss == "module"

    def check_network(self, net: nn.Module) -> None:
        """Raise ``ValueError`` if ``params`` names a parameter ``net`` does not have."""
        if self.params is not None:
            names = dict(net.named_parameters())
            unknown = [n for n in self.params if n not in names]
            if unknown:
                raise ValueError(f"params {unknown} are not parameters of {type(net).__name__}")

    def resolve_loss(self, module_loss: LossFn | None) -> str | LossFn:
        """The loss :func:`per_sample_grad_stats` gets: ``module_loss`` for ``loss="module"``."""
        if not self.uses_module_loss:
            return self.loss
        if module_loss is None:
            raise ValueError("GradientScorer(loss='module') needs the victim's training loss, and none was given "
                             "(the LightningModule has no 'pixel_loss'); pass it, or set loss to 'mse' or 'l1'")
        return module_loss

    def score(
        self, net: nn.Module, batches: Iterable[Mapping[str, Any]], module_loss: LossFn | None = None
    ) -> GradientScores:
        """Norms and sketches of every candidate in ``batches`` (in the order they come).

        Args:
            net: the network being trained (its current weights are differentiated).
            batches: ``{"lr": (B, C, h, w), "hr": (B, C, H, W), "index": (B,)}`` dicts.
            module_loss: the victim's training loss, for ``loss="module"``.

        Returns:
            :class:`GradientScores` on ``net``'s device (an empty one when there are no batches).
        """
        loss = self.resolve_loss(module_loss)
        device = model_device(net, torch.device("cpu"))
        norms, sketches, indices = [], [], []
        for batch in batches:
            n, s = per_sample_grad_stats(net, batch["lr"], batch["hr"], loss=loss, chunk_size=self.chunk_size,
                                         sketch_dim=self.sketch_dim, seed=self.seed, params=self.params,
                                         autocast=self.autocast)
            norms.append(n)
            sketches.append(None if s is None else self._store(s))
            indices.extend(int(i) for i in torch.as_tensor(batch["index"]).reshape(-1).tolist())
        dtype = _SKETCH_DTYPES[self.sketch_dtype]
        if not norms:  # a rank whose shard is empty (pool smaller than the world) still joins a gather
            empty = None if self.sketch_dim is None else torch.zeros(0, self.sketch_dim, dtype=dtype, device=device)
            return GradientScores(torch.zeros(0, device=device), empty, [])
        return GradientScores(torch.cat(norms), None if self.sketch_dim is None else torch.cat(sketches), indices)

    def _store(self, sketch: torch.Tensor) -> torch.Tensor:
        if self.sketch_dtype == "float32":
            return sketch
        limit = float(torch.finfo(torch.float16).max)
        peak = float(sketch.abs().max()) if sketch.numel() else 0.0
        if peak > limit:
            raise ValueError(f"a gradient sketch entry ({peak:.3g}) exceeds float16's range ({limit:.0f}); "
                             f"use GradientScorer(sketch_dtype='float32')")
        return sketch.half()

    def state_dict(self) -> dict[str, Any]:
        """What makes two scorers' sketches comparable (saved in checkpoints, checked on resume)."""
        loss = self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", type(self.loss).__name__)
        return {"sketch_dim": self.sketch_dim, "seed": self.seed, "loss": loss, "params": self.params,
                "autocast": self.autocast, "sketch_dtype": self.sketch_dtype}
