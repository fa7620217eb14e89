"""A query-only (black-box) attack on SR models: Square Attack adapted to the SR distortion loss.

Andriushchenko et al. (ECCV 2020) search the corners of the L_inf ball with random square
updates and keep an update only when it improves the objective. For SR the objective is the
distortion of the output (the same losses as the gradient attacks), maximised; no gradient is
ever computed, so this works on models whose gradients are unavailable or masked.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lit_sr.attacks.base import Attack, LossFn, LossName
from lit_sr.attacks.ifgsm import REFERENCES, Reference
from lit_sr.attacks.registry import register_attack
from lit_sr.runtime import Autocast
from lit_sr.validation import check_choice, check_int, check_number

# Square Attack's schedule: the fraction p is halved at these points of a 10,000-query budget.
_HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, n_queries: int) -> float:
    """Fraction of the image covered by the square at ``query``: ``p_init`` halved on a fixed schedule.

    The schedule of the Square Attack paper is defined for 10,000 queries; it is rescaled to
    ``n_queries`` so that a short budget still ends with small squares.
    """
    rescaled = int(query / n_queries * 10_000)
    halvings = sum(rescaled > point for point in _HALVING_POINTS)
    return p_init / (2**halvings)


@register_attack
class SquareAttack(Attack):
    """Black-box L_inf attack: random ``+-eps`` squares, accepted per image when the loss grows.

    Start: vertical stripes of ``+-eps`` (one random sign per column and channel). Each further
    query draws, for every image independently, a square of side ``round(sqrt(p * H * W))`` at a
    random position with one random ``+-eps`` value per channel, and keeps it for the images
    whose loss increased. All images are queried together in one forward pass.

    Query count per image: 1 for the clean reference (``reference="clean"``) plus ``n_queries``
    (the start counts as one). Duplicate proposals (the square already holds the drawn values)
    are not redrawn and simply waste a query.

    Args:
        model: the SR network; only its outputs are used (under ``torch.no_grad``).
        eps: L_inf budget in (0, 1].
        n_queries: model evaluations per image (>= 1).
        p_init: initial fraction of pixels covered by a square, in (0, 1].
        reference: ``"clean"`` (distance to f(X0); no zero-gradient issue without gradients) or
            ``"hr"`` (distance to the given HR image).
        loss, autocast, eot_samples, seed: see :class:`~lit_sr.attacks.base.Attack`
            (``eot_samples`` averages each loss evaluation, for randomised models).
    """

    name = "square"
    plain = True

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        n_queries: int = 1000,
        p_init: float = 0.1,
        reference: Reference = "clean",
        *,
        loss: LossName | LossFn = "sse",
        autocast: Autocast = "none",
        eot_samples: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(model, eps, loss=loss, autocast=autocast, eot_samples=eot_samples, seed=seed)
        self.n_queries = check_int(n_queries, "n_queries", 1)
        self.p_init = check_number(p_init, "p_init", 0, 1, low_inclusive=False)
        self.reference = check_choice(reference, "reference", REFERENCES)

    def _describe(self) -> dict:
        return {
            **super()._describe(),
            "n_queries": self.n_queries,
            "p_init": self.p_init,
            "reference": self.reference,
        }

    def _loss(self, x0: torch.Tensor, delta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        x = (x0 + delta).clamp(0, 1)
        total = self.per_sample_loss(x, ref)
        for _ in range(self.eot_samples - 1):
            total = total + self.per_sample_loss(x, ref)
        return total / self.eot_samples

    def _random_signs(self, shape: tuple[int, ...], device, generator) -> torch.Tensor:
        bits = torch.randint(0, 2, shape, device=device, generator=generator)
        return (2 * bits - 1).float()

    def _square_masks(self, n: int, h: int, w: int, side: int, device, generator) -> torch.Tensor:
        """``(N, 1, H, W)`` boolean masks, one ``side x side`` square per image at a random place."""
        top = torch.randint(0, h - side + 1, (n, 1), device=device, generator=generator)
        left = torch.randint(0, w - side + 1, (n, 1), device=device, generator=generator)
        rows = torch.arange(h, device=device).view(1, h)
        cols = torch.arange(w, device=device).view(1, w)
        in_rows = (rows >= top) & (rows < top + side)
        in_cols = (cols >= left) & (cols < left + side)
        return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)

    @torch.no_grad()
    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial LR batch found with ``n_queries`` model evaluations per image."""
        x0 = self.prepare(lr, "lr", self.device_for(lr))
        if self.reference == "clean":
            ref = self.clean_output(x0)
        else:
            if hr is None:
                raise ValueError("SquareAttack(reference='hr') needs the HR batch: call atk(lr, hr=hr)")
            ref = self.prepare(hr, "hr", x0.device)
        n, c, h, w = x0.shape
        generator = self.generator(x0.device)
        delta = self.eps * self._random_signs((n, c, 1, w), x0.device, generator).expand(n, c, h, w)
        best = self._loss(x0, delta, ref)
        for query in range(1, self.n_queries):
            p = square_fraction(self.p_init, query, self.n_queries)
            side = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
            square = self._square_masks(n, h, w, side, x0.device, generator)
            values = self.eps * self._random_signs((n, c, 1, 1), x0.device, generator)
            candidate = torch.where(square, values, delta)
            loss = self._loss(x0, candidate, ref)
            improved = loss > best
            delta = torch.where(improved.view(n, 1, 1, 1), candidate, delta)
            best = torch.where(improved, loss, best)
        return (x0 + delta).clamp(0, 1)
