"""The configuration of ``lit-sr refsr-claims`` (a typed dataclass, validated on construction).

What is measured (RefSR-Adv, arXiv 2601.01202, its Section IV claims and the question it leaves open):

* **(a) architectures**: the models of ``models`` (TTSR and MASA, which match on a downsampled
  reference, and DATSR, which transfers from the full-resolution one) trained with the same budget
  and attacked with the same eps and steps; the paper: DATSR far more vulnerable.
* **(b) losses**: the network ``loss_model`` after (a), trained ``finetune.steps`` more steps twice
  from the same weights on the same batches, once on the reconstruction loss and once on the full
  losses; the paper: the full-loss checkpoint slightly more vulnerable (10.64 vs 10.14 dB on DATSR).
* **(c) transfer**: each model's own RefSR-Adv reference applied to every model, one reference
  optimised against all of ``ensemble`` together, and uniform noise of the same eps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning import LightningDataModule

from lit_sr.attacks.spec import parse_eps_list
from lit_sr.errors import ConfigError
from lit_sr.validation import check_int, check_number

DEFAULT_FULL = {"adv_weight": 5e-3, "gp_weight": 10.0, "disc_arch": "image_discriminator",
                "disc_kwargs": {"in_nc": 3, "ndf": 8}, "disc_steps": 1, "lr_disc": 1e-4, "disc_betas": [0.9, 0.999]}


@dataclass
class ModelEntry:
    """One RefSR network of the claims.

    Args:
        arch: registry name (``ttsr``, ``masa``, ``datsr``).
        arch_kwargs: its constructor arguments (the scale is filled in).
        module_kwargs: extra :class:`~lit_sr.modules.refsr_module.RefSRModule` arguments
            (``lr_texture``, ``lr_groups`` ...); ``lr`` and ``losses`` come from the claims' config.
    """

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    module_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClaimsConfig:
    """``lit-sr refsr-claims`` (every bad value raises ``ConfigError`` naming its key).

    Args:
        models: label -> :class:`ModelEntry`; every one is trained ``steps`` steps on the
            reconstruction loss (L1), same data order, same learning rate.
        data: a RefSR data module (``datamodules.refsr.EmbeddedRefPairsDataModule``,
            ``CUFEDDataModule``) serving the training batches and the test sets (by level).
        test_data: another RefSR data module for the test sets (e.g. smaller images, which
            make the attacks cheaper); ``None``: ``data``'s.
        steps: training steps of each model (claim a).
        lr: Adam learning rate of every network.
        loss_model: the label of ``models`` whose network claim (b) continues twice.
        finetune_steps: steps of each continuation (claim b).
        full_losses: the full-loss continuation's RefSRModule arguments (adversarial term, its
            discriminator, ``vgg_weights`` and ``perceptual_weight`` ...). Without ``vgg_weights``
            the perceptual term is left out (its VGG would be random, measuring nothing) and the
            report says so; ``tpl_weight`` is 0 unless given (TTSR's transferal loss only).
        full_reference: the labels of ``models`` that transfer from the full-resolution reference
            (claim a compares each of them with every other model; default ``[datsr]``).
        ensemble: labels of ``models`` attacked together for claim (c) (default all).
        eps: the L_inf budget of every attack and of the noise (the paper's 8/255).
        attack_steps: RefSR-Adv's PGD steps (the same for every model).
        max_images: the first N test images of each test set (each similarity level); None: all.
        bootstrap: resamples of the paired bootstrap intervals of the mean differences.
        min_effect: the smallest mean difference of PSNR drops (dB) a verdict calls a difference
            (0.05; the paper's rec-vs-full gap is 0.5 dB).
        scale: the models' upscaling factor (also the metrics' crop border).
        device: ``auto``, ``cpu``, ``cuda`` ...
        seed: seed of the initialisations, the data order, the attacks and the noise.
        weights_dir: a ``models/`` folder of an earlier run of the same config: its networks
            (``<label>.pth``, ``<loss_model>-rec.pth``, ``<loss_model>-full.pth``) are read instead
            of trained (to measure again, e.g. on other test images, without retraining).
        out: output folder (``claims.md``, ``claims.json``, one CSV and one plot per claim,
            ``models/<label>.pth``).
    """

    models: dict[str, ModelEntry]
    data: LightningDataModule
    test_data: LightningDataModule | None = None
    full_reference: list[str] = field(default_factory=lambda: ["datsr"])
    steps: int = 60
    lr: float = 1e-3
    loss_model: str = "datsr"
    finetune_steps: int = 30
    full_losses: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FULL))
    ensemble: list[str] | None = None
    eps: float | str = "8/255"
    attack_steps: int = 10
    max_images: int | None = None
    bootstrap: int = 2000
    min_effect: float = 0.05
    scale: int = 4
    device: str = "auto"
    seed: int = 0
    weights_dir: str | None = None
    out: str = "runs/refsr_claims"
    source: str = field(default="<dict>", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.models, dict) or len(self.models) < 2:
            raise ConfigError(f"models: expected at least two labelled RefSR networks, got {self.models!r}")
        self.models = {label: _entry(label, m) for label, m in self.models.items()}
        for name in ("steps", "finetune_steps", "attack_steps", "bootstrap", "scale"):
            setattr(self, name, _checked(check_int, getattr(self, name), name, 1))
        self.seed = _checked(check_int, self.seed, "seed", 0)
        if self.max_images is not None:
            self.max_images = _checked(check_int, self.max_images, "max_images", 1)
        self.min_effect = _checked(check_number, self.min_effect, "min_effect", 0)
        self.lr = _checked(check_number, self.lr, "lr", 0, low_inclusive=False)
        self.eps = parse_eps_list([self.eps])[0]
        if self.loss_model not in self.models:
            raise ConfigError(f"loss_model: {self.loss_model!r} is not a label of models ({sorted(self.models)})")
        unknown = [label for label in self.full_reference if label not in self.models]
        if unknown:
            raise ConfigError(f"full_reference: {unknown} are not labels of models ({sorted(self.models)})")
        self.ensemble = list(self.models) if self.ensemble is None else list(self.ensemble)
        unknown = [label for label in self.ensemble if label not in self.models]
        if len(self.ensemble) < 2 or unknown:
            raise ConfigError(f"ensemble: expected two or more labels of models ({sorted(self.models)}), got "
                              f"{self.ensemble}")
        if not isinstance(self.full_losses, dict):
            raise ConfigError(f"full_losses: expected a mapping of RefSRModule arguments, got {self.full_losses!r}")
        for key in ("losses", "arch", "arch_kwargs", "lr"):
            if key in self.full_losses:
                raise ConfigError(f"full_losses.{key}: set by the claims themselves, not here")
        if self.test_data is None:
            self.test_data = self.data
        for key, members in (("data", ("setup", "train_dataloader")), ("test_data", ("setup", "test_dataloader"))):
            for member in members:
                if not callable(getattr(getattr(self, key), member, None)):
                    raise ConfigError(f"{key}: {type(getattr(self, key)).__name__} has no {member}(); expected a RefSR "
                                      "data module (datamodules.refsr.EmbeddedRefPairsDataModule, CUFEDDataModule)")

    @property
    def perceptual(self) -> bool:
        """Whether the full-loss continuation has a perceptual term (only with a VGG19 file)."""
        return bool(self.full_losses.get("vgg_weights")) and self.full_losses.get("perceptual_weight", 1e-2) > 0


def _entry(label: str, value: Any) -> ModelEntry:
    if isinstance(value, ModelEntry):
        return value
    if not isinstance(value, dict) or "arch" not in value:
        raise ConfigError(f"models.{label}: expected {{arch, arch_kwargs, module_kwargs}}, got {value!r}")
    unknown = set(value) - {"arch", "arch_kwargs", "module_kwargs"}
    if unknown:
        raise ConfigError(f"models.{label}: unknown keys {sorted(unknown)} (expected arch, arch_kwargs, module_kwargs)")
    return ModelEntry(**value)


def _checked(check, value, name: str, *args, **kwargs):
    try:
        return check(value, name, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
