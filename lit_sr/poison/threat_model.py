"""Who chooses the poisoned set, and with what: BadSR's two threat models, and the attacker-side selection.

BadSR's attacker (arXiv 2505.15308, Sec. III) only *modifies data*: it poisons a data set and
hands it over; the victim trains on it. Everything the attacker computes, it computes on its own
model, the substitute ``f`` (the trigger maximises the substitute's reconstruction error, the
stealthy labels are aligned in the substitute's features). lit-sr names two threat models:

* ``"data_only"`` (the paper's): the poisoned set is chosen **before** the victim trains, on the
  attacker's model (:class:`AttackerSelection`: backdoor gradients ``g_i = d L(f(x~_i), y_p_i) /
  d theta_f`` of the substitute, then a selector), written into the poison cache's manifest with
  the data, and never changed afterwards. A data module with ``threat_model: data_only`` refuses
  a callback that changes its poisoned set during training.
* ``"victim_access"`` (stronger, ours): ``callbacks.PoisonSelectionCallback`` scores the pool on
  the **victim's** weights while it trains and installs a new poisoned set every N epochs. That
  needs the victim's weights mid-training and control over which samples each epoch poisons:
  an insider (a compromised training pipeline), not a data supplier.

The paper's selection, as we read it (Sec. IV-D, Eq. 23-27): candidates are ranked by the norm of
their backdoor gradient, and a genetic search maximises the *cumulative* gradient of the subset
minus ``lambda |S|``: ``sum_{i in S} ||g_i|| - lambda |S|`` (``fitness="sum_of_norms"``). Its
optimum under ``|S| <= budget`` is the top-``budget`` norms, which the genetic search reaches
(seeded with it). The paper gives no value for ``lambda``; ours is 0, so the subset fills the
budget (the poison rate the paper fixes at 10%). ``"norm_of_sum"`` (``||sum_{i in S} g_i||``,
gradients that add up rather than cancel) is our variant, not the paper's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from torch import nn

from lit_sr.poison.scoring import GradientScorer
from lit_sr.poison.selection import GeneticSelector, Selector, random_select, topk_select
from lit_sr.validation import check_choice, check_number

ThreatModel = Literal["data_only", "victim_access"]
THREAT_MODELS: tuple[str, ...] = ("data_only", "victim_access")
DATA_ONLY, VICTIM_ACCESS = THREAT_MODELS


def check_threat_model(value: Any, name: str = "threat_model") -> str:
    """``value`` if it names a threat model (:data:`THREAT_MODELS`), else a ``ValueError`` naming ``name``."""
    return check_choice(value, name, THREAT_MODELS)


def paper_selector(**ga_kwargs: Any) -> GeneticSelector:
    """BadSR's genetic selection as the paper defines its fitness: ``sum_of_norms`` with ``lam = 0``."""
    return GeneticSelector(fitness="sum_of_norms", lam=0.0, **ga_kwargs)


class AttackerSelection:
    """BadSR's effective poisoning on the attacker's own model, before the victim trains (``data_only``).

    The poisoned data module runs it once, after the candidate pool is generated: every candidate
    ``(triggered LR, poisoned HR)`` is scored by its backdoor gradient on the **substitute** (the
    attacker's model, frozen; its parameters are differentiated without being changed), the
    selector picks at most ``budget`` of them, and the result is written into the poison cache's
    manifest (``extra.selections``), so every later run with the same data uses exactly that set.

    Args:
        scorer: how candidates are scored (``None``: ``GradientScorer(loss="l1")``: the L1 loss the
            substitute is trained with, :func:`lit_sr.poison.substitute.train_substitute`).
            ``loss="module"`` is refused: there is no victim module on the attacker's side.
        selector: how the set is chosen (``None``: :func:`paper_selector`, the paper's
            ``sum_of_norms`` fitness with ``lam = 0``). A ``norm_of_sum`` selector needs a scorer
            with ``sketch_dim``.
        seed: seed of the selection and of the random baseline it is compared with.
    """

    def __init__(self, scorer: GradientScorer | None = None, selector: Selector | None = None, seed: int = 0):
        scorer = GradientScorer(loss="l1", sketch_dim=None) if scorer is None else scorer
        selector = paper_selector() if selector is None else selector
        if not isinstance(scorer, GradientScorer):
            raise TypeError(f"selection.scorer must be a lit_sr.poison.GradientScorer; got {type(scorer).__name__}")
        if not isinstance(selector, Selector):
            raise TypeError(f"selection.selector must be a lit_sr.poison selector (GeneticSelector, RandomSelector, "
                            f"TopKSelector); got {type(selector).__name__}")
        if scorer.uses_module_loss:
            raise ValueError("selection.scorer.loss is 'module', the victim's training loss, which the attacker does "
                             "not have before the victim trains: use 'l1' (the substitute's training loss) or 'mse'")
        if selector.needs_sketches and scorer.sketch_dim is None:
            raise ValueError("selection.selector has fitness 'norm_of_sum', which needs gradient sketches, but "
                             "selection.scorer has sketch_dim=None: give the scorer a sketch_dim")
        self.scorer, self.selector = scorer, selector
        self.seed = check_number(seed, "selection.seed", 0, integer=True)

    def config(self) -> dict[str, Any]:
        """What makes two selections the same (the key of the manifest's record)."""
        selector = {"name": self.selector.name, "fitness": self.selector.fitness, "lam": self.selector.lam,
                    **getattr(self.selector, "ga_kwargs", {})}
        if hasattr(self.selector, "seed_with_topk"):
            selector["seed_with_topk"] = self.selector.seed_with_topk
        return {"threat_model": DATA_ONLY, "model": "substitute", "scorer": self.scorer.state_dict(),
                "selector": selector, "seed": self.seed}

    def choose(self, net: nn.Module, batches: Iterable[Mapping[str, Any]], pool: Sequence[int],
               budget: int) -> dict[str, Any]:
        """Score ``pool`` on ``net`` (the substitute) and select at most ``budget`` of it.

        Args:
            net: the attacker's model (frozen parameters are fine: they are differentiated, not changed).
            batches: ``{"lr", "hr", "index"}`` batches of every pool member (the poisoned pairs).
            pool: the pool's dataset indices, in order.
            budget: the largest poisoned set.

        Returns:
            The record written to the manifest: ``indices`` (the poisoned set, sorted dataset
            indices), ``topk``, ``fitness_selected`` / ``fitness_random`` / ``fitness_topk`` (the
            selector's fitness of its choice, of a random subset and of the top-k by norm),
            ``history`` (best fitness per generation), ``norms`` (per pool member, pool order),
            ``selector``, ``fitness``, ``lam``, ``pool``, ``budget`` and ``config``.
        """
        scorer = self.scorer
        if scorer.params is None:  # the substitute is frozen: name every parameter explicitly
            scorer = copy.copy(scorer)
            scorer.params = [name for name, _ in net.named_parameters()]
        scores = scorer.score(net, batches).to_pool_order(list(pool))
        norms = scores.norms.detach().float().cpu().numpy()
        sketches = None if scores.sketches is None else scores.sketches.detach().cpu().numpy()
        budget = min(int(budget), len(pool))
        selected = self.selector.select(norms, sketches, budget, seed=self.seed)
        topk = topk_select(norms, budget)
        rand = random_select(len(pool), budget, seed=self.seed)
        fit = self.selector.fitness_of
        return {
            "indices": sorted(int(pool[p]) for p in selected.positions.tolist()),
            "topk": sorted(int(pool[p]) for p in topk.tolist()),
            "fitness_selected": fit(selected.positions.tolist(), norms, sketches),
            "fitness_random": fit(rand.tolist(), norms, sketches),
            "fitness_topk": fit(topk.tolist(), norms, sketches),
            "history": [float(h) for h in selected.history],
            "norms": [float(n) for n in norms.tolist()],
            "selector": self.selector.name, "fitness": self.selector.fitness, "lam": self.selector.lam,
            "pool": len(pool), "budget": budget, "config": self.config(),
        }

    def __repr__(self) -> str:
        return (f"AttackerSelection(selector={self.selector.name}, fitness={self.selector.fitness!r}, "
                f"lam={self.selector.lam}, loss={self.scorer.state_dict()['loss']!r})")
