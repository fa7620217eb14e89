"""Typed trigger settings that jsonargparse builds from YAML, validated before any work.

A poisoned data module's ``trigger`` is one of:

* a sample-independent trigger itself, as ``class_path`` / ``init_args`` of
  :class:`lit_sr.poison.BadNet`, :class:`~lit_sr.poison.Blend`, :class:`~lit_sr.poison.SIG` or
  :class:`~lit_sr.poison.WaNet` (built, hence validated, when the config is instantiated);
* :class:`AdversarialTriggerSpec`: BadSR's optimised trigger, whose substitute network only
  exists once it is loaded or trained. The spec holds and checks every setting at construction
  (a misspelt key is refused by jsonargparse, ``steps: -5`` by the constructor, a missing LPIPS
  backbone file by the trial build), and :meth:`AdversarialTriggerSpec.build` makes the trigger
  around the substitute later;
* from Python, the dict form ``{"name": "blend", **settings}`` (:func:`trigger_from_dict`), which
  reports an unknown key with its dotted name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from lit_sr.poison.cache import sha256_tensors
from lit_sr.poison.triggers import TRIGGERS, AdversarialTrigger, Blend, Trigger

L2Schedule = Literal["linear", "exponential", "adaptive"]
Perceptual = Literal["lpips", "ssim"]
LPIPSNet = Literal["alex", "vgg", "squeeze"]
TriggerInit = Literal["uniform", "zero"]
TriggerReference = Literal["hr", "clean_output"]


class AdversarialTriggerSpec:
    """BadSR's adversarial trigger (:class:`lit_sr.poison.AdversarialTrigger`) before its substitute exists.

    Every argument is :class:`~lit_sr.poison.AdversarialTrigger`'s (see it for the meaning),
    except ``reference``.

    Args:
        steps: Adam iterations (the paper: 300).
        lr: Adam learning rate on the [0, 1] scale.
        eps: optional L-infinity bound of the perturbation.
        lpips_weight: weight of the perceptual term (lambda_1).
        l2_schedule: the dynamic L2 weight's schedule.
        l2_weight_start: lambda_2 at the first step.
        l2_weight_end: lambda_2 at the last step (linear / exponential).
        l2_budget: RMS budget of the adaptive schedule.
        l2_growth: growth factor of the adaptive schedule.
        perceptual: ``"lpips"`` (real LPIPS; needs the backbone file) or ``"ssim"`` (kornia's SSIM
            loss, the documented stand-in).
        lpips_net: LPIPS backbone.
        lpips_backbone_path: explicit backbone weights file (else the torch hub cache).
        ssim_window: SSIM window for ``perceptual="ssim"``.
        init: random start (``"uniform"``) or none (``"zero"``).
        init_scale: half-width of the random start.
        seed: seed of the per-sample random starts.
        reference: the image whose reconstruction error is maximised: ``"hr"`` (the sample's HR
            label, the paper's ``y``) or ``"clean_output"`` (the substitute's clean output: an
            attacker who holds only the LR image).
    """

    name = "badsr"
    needs_substitute = True

    def __init__(
        self,
        steps: int = 300,
        lr: float = 1 / 255,
        eps: float | None = None,
        lpips_weight: float = 1.0,
        l2_schedule: L2Schedule = "adaptive",
        l2_weight_start: float = 1.0,
        l2_weight_end: float = 50.0,
        l2_budget: float = 4 / 255,
        l2_growth: float = 1.05,
        perceptual: Perceptual = "lpips",
        lpips_net: LPIPSNet = "alex",
        lpips_backbone_path: str | None = None,
        ssim_window: int = 11,
        init: TriggerInit = "uniform",
        init_scale: float = 1 / 255,
        seed: int = 0,
        reference: TriggerReference = "hr",
    ):
        if reference not in ("hr", "clean_output"):
            raise ValueError(f"trigger.reference must be 'hr' or 'clean_output'; got {reference!r}")
        self.reference = reference
        self.settings: dict[str, Any] = dict(
            steps=steps, lr=lr, eps=eps, lpips_weight=lpips_weight, l2_schedule=l2_schedule,
            l2_weight_start=l2_weight_start, l2_weight_end=l2_weight_end, l2_budget=l2_budget, l2_growth=l2_growth,
            perceptual=perceptual, lpips_net=lpips_net, lpips_backbone_path=lpips_backbone_path,
            ssim_window=ssim_window, init=init, init_scale=init_scale, seed=seed,
        )
        # a trial build around a stand-in network runs every check of AdversarialTrigger now (and
        # loads LPIPS, so a missing backbone file fails here), before a substitute is trained
        self.perceptual_used = _renamed(lambda: AdversarialTrigger(nn.Identity(), **self.settings)).perceptual_used

    def build(self, substitute: nn.Module, autocast: str = "none") -> AdversarialTrigger:
        """The trigger around ``substitute``, its forward under ``autocast`` (``"none"``/``"bf16"``)."""
        return AdversarialTrigger(substitute, **self.settings, autocast=autocast)

    def config(self) -> dict[str, Any]:
        """The settings as plain values (for cache keys and summaries)."""
        cfg = {"name": self.name, **self.settings, "reference": self.reference}
        cfg.pop("lpips_backbone_path")  # where the file lies does not change the result
        return cfg

    def __repr__(self) -> str:
        return f"AdversarialTriggerSpec({', '.join(f'{k}={v!r}' for k, v in self.config().items() if k != 'name')})"


def _renamed(build):
    """Run a trigger constructor, prefixing its argument errors with ``trigger.``."""
    try:
        return build()
    except (TypeError, ValueError) as exc:
        message = str(exc)
        raise type(exc)(message if message.startswith("trigger") else f"trigger.{message}") from exc


def trigger_from_dict(spec: Mapping[str, Any]) -> Trigger | AdversarialTriggerSpec:
    """``{"name": ..., **settings}`` to a trigger (static ones) or an :class:`AdversarialTriggerSpec`.

    Raises:
        ValueError: no or an unknown ``name``, or a key that is not a setting of that trigger
            (named ``trigger.<key>``, with the accepted ones).
    """
    settings = dict(spec)
    name = settings.pop("name", None)
    if not isinstance(name, str) or name.lower() not in TRIGGERS:
        raise ValueError(f"trigger must be a dict with 'name' one of {sorted(TRIGGERS)}; got {dict(spec)!r}")
    name = name.lower()
    if "substitute" in settings:
        raise ValueError("trigger must not contain 'substitute': the BadSR trigger uses the data module's "
                         "substitute (its 'substitute' argument)")
    target = AdversarialTriggerSpec if TRIGGERS[name] is AdversarialTrigger else TRIGGERS[name]
    accepted = [p for p in inspect.signature(target.__init__).parameters if p not in ("self", "substitute")]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"trigger.{unknown[0]} is not a setting of the {name} trigger; expected some of {accepted}")
    return _renamed(lambda: target(**settings))


def as_trigger(trigger: Trigger | AdversarialTriggerSpec | Mapping[str, Any] | None
               ) -> Trigger | AdversarialTriggerSpec:
    """Any accepted trigger argument as a built static trigger or an :class:`AdversarialTriggerSpec`."""
    if trigger is None:
        return Blend()
    if isinstance(trigger, Mapping):
        return trigger_from_dict(trigger)
    if isinstance(trigger, AdversarialTrigger):
        raise TypeError("pass BadSR's trigger as lit_sr.poison.specs.AdversarialTriggerSpec (or {'name': 'badsr', "
                        "...}): its substitute is the data module's")
    if not isinstance(trigger, Trigger | AdversarialTriggerSpec):
        raise TypeError(f"trigger must be a lit_sr.poison trigger, an AdversarialTriggerSpec or a dict; got "
                        f"{type(trigger).__name__}")
    return trigger


def trigger_settings(trigger: Trigger | AdversarialTriggerSpec) -> dict[str, Any]:
    """Plain settings of a trigger or spec; a custom tensor pattern enters by its content's SHA-256."""
    cfg = trigger.config()
    if isinstance(trigger, Blend) and trigger.user_pattern is not None:
        cfg["pattern_sha256"] = sha256_tensors(trigger.user_pattern)
    return {k: (sha256_tensors(v) if isinstance(v, torch.Tensor) else v) for k, v in cfg.items()}


def needs_substitute(trigger: Trigger | AdversarialTriggerSpec) -> bool:
    """Whether the trigger runs through the substitute network."""
    return isinstance(trigger, AdversarialTriggerSpec)
