"""Poisoned SR training data: wrap any SR data module and replace a fraction of its samples.

A backdoor attack by data poisoning (BadSR, Guo et al., arXiv 2505.15308; and the classic SR
backdoor whose poisoned label is the target image itself) changes a few training pairs
``(lr, hr)`` into ``(trigger(lr), poisoned_hr)``. :class:`PoisonedSRDataModule` does that for any
:class:`~datamodules.sr.SRDataModule`. The poisoning itself is library code, one way:

1. settings, typed and checked when the module is built (:mod:`lit_sr.poison.specs`,
   :class:`lit_sr.poison.substitute.SubstituteSpec`), before any work;
2. the substitute, loaded or trained once on global rank 0 and broadcast
   (:mod:`lit_sr.poison.substitute`);
3. a :class:`lit_sr.poison.poisoner.Poisoner` (trigger + label maker, pure tensors) fills the
   poison cache (:mod:`lit_sr.poison.cache`), sharded over every rank of every node
   (:mod:`lit_sr.poison.sharding`, :mod:`lit_sr.poison.generation`), for the **candidate pool**
   (a seeded fraction ``candidate_rate`` of the training samples) and the validation set (the
   triggered validation inputs and the backdoor's target outputs, read by the backdoor evaluation).

The data module itself holds the pool, the **active poisoned set** (at most
``budget = round(poison_rate * n_train)`` candidates, a seeded random subset at first, replaced
between epochs with :meth:`PoisonedSRDataModule.set_poisoned_indices`, identically on every
rank, and stored in checkpoints), the loaders and its state. Poisoned training samples are cropped
and augmented exactly like clean ones and carry ``"poisoned": True``.

**How a new set reaches the loaders.** The training data set reads the active set *live* (a shared
object), and :meth:`PoisonedSRDataModule.train_dataloader` uses ``persistent_workers=False``, so
workers are forked anew each epoch and see the current set: a set installed at the end of epoch
``E`` is used from epoch ``E + 1``.

**Under DDP** (see the README, "Multi-GPU and multi-node poisoning"): ``setup`` runs on every
rank (:class:`lit_sr.poison.generation.CacheFiller`). When every rank finds its cache complete and
valid nothing is written (a read-only cache works). Otherwise the ranks that share a cache folder
split the pool and the validation set between them, each writes its own partial manifest, and the
folder's lowest rank merges them after a barrier.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from datamodules.datasets import SRPairDataset
from datamodules.poisoned_train import (
    ActiveSet,
    CachedPairs,
    PoisonedTrainDataset,
    _records_fingerprint,
)
from datamodules.sr import EMBEDDED_TRAIN, EMBEDDED_VAL, SRDataModule, load_embedded_photo
from lit_sr.io import read_image
from lit_sr.poison import sharding
from lit_sr.poison.cache import (
    CacheMismatchError,
    PoisonCache,
    config_hash,
    sha256_file,
    sha256_tensors,
    to_float,
    to_stored,
)
from lit_sr.poison.generation import CacheFiller, CachePart, sample_key
from lit_sr.poison.poisoned_hr import NORMS, STEP_RULES, FeatureExtractor, step_rule_setting
from lit_sr.poison.poisoner import CleanLabel, FeatureAlignedLabel, Poisoner, TargetLabel, stealth_figures
from lit_sr.poison.selection import random_select
from lit_sr.poison.specs import AdversarialTriggerSpec, as_trigger, needs_substitute, trigger_settings
from lit_sr.poison.substitute import SubstituteSpec, train_substitute
from lit_sr.poison.threat_model import DATA_ONLY, AttackerSelection, ThreatModel, check_threat_model
from lit_sr.poison.triggers import AdversarialTrigger, Trigger
from lit_sr.runtime import AUTOCAST_CHOICES, Autocast
from lit_sr.validation import check_bool, check_choice, check_eps, check_fraction, check_int, check_positive

__all__ = [
    "CacheMismatchError",
    "PoisonCache",
    "PoisonedSRDataModule",
    "config_hash",
    "sha256_file",
    "sha256_tensors",
    "stealth_figures",
    "to_float",
    "to_stored",
    "train_substitute",
]

Label = Literal["target", "badsr", "clean"]
LABELS: tuple[str, ...] = ("target", "badsr", "clean")
EMBEDDED_PHOTOS = EMBEDDED_TRAIN + EMBEDDED_VAL


# --------------------------------------------------------------------------- the data module


class PoisonedSRDataModule(L.LightningDataModule):
    """Wraps an SR data module and poisons a fraction of its training samples (see the module docstring).

    Args:
        base: the clean data module (any :class:`~datamodules.sr.SRDataModule`); its validation,
            test and predict loaders are used unchanged.
        trigger: a sample-independent trigger (``class_path: lit_sr.poison.Blend`` /
            ``BadNet`` / ``SIG`` / ``WaNet`` with its ``init_args``), BadSR's
            :class:`lit_sr.poison.specs.AdversarialTriggerSpec` (built around the substitute).
            From Python the dict ``{"name": ..., **settings}`` is accepted too (it is not in the
            type hint, so that jsonargparse reports a misspelt YAML key by name). Default ``Blend()``.
        poison_rate: budget of poisoned samples as a fraction of the training samples (records,
            not repeats): ``budget = round(poison_rate * n_train)``. Default 0.1 (the paper).
        candidate_rate: fraction of the training samples in the candidate pool (seeded). The
            selection callbacks choose among these; generation covers the whole pool.
        label: ``"target"`` (the target image resized to the HR size), ``"badsr"`` (BadSR's
            feature-aligned stealthy label, needs ``substitute``) or ``"clean"`` (the clean HR:
            only the input is triggered, a control). See :mod:`lit_sr.poison.poisoner`.
        target: the target image ``y_t*``: an embedded photo name (``coffee``, ``astronaut``, ...) or
            an image file path.
        eps: bound of the poisoned HR's deviation for ``label="badsr"``, in the units of
            ``poisoned_hr_norm`` (see :func:`lit_sr.poison.make_poisoned_hr`). Default 0.05.
        poisoned_hr_steps: PGD iterations of the poisoned HR.
        poisoned_hr_norm: how ``eps`` is normalised: ``"pixel"`` (default), ``"rms"`` or ``"l2"``.
        poisoned_hr_step_rule: the PGD step of the poisoned HR: ``"l2"`` (normalised gradient,
            default) or ``"sign"`` (sign of the gradient: more texture, lower SSIM at the same PSNR).
        substitute: the substitute SR network (:class:`lit_sr.poison.substitute.SubstituteSpec`;
            from Python also its dict): used by the BadSR trigger and label and for the feature ASR.
        quantize: store triggered LR and poisoned HR as 8-bit images (what a published poisoned
            data set would hold); the evaluation's triggered inputs are rounded the same way.
        cache_dir: root of the poison cache; the data go to ``cache_dir/<config hash[:16]>/``.
        rebuild_cache: regenerate a cache whose manifest belongs to another configuration instead
            of raising :class:`CacheMismatchError`.
        verify_cache: check every cached file's SHA-256 (and the clean data it was made from).
        generation_batch_size: samples per batched trigger / poisoned-HR optimisation.
        generation_device: device of the generation when no trainer is attached (with a trainer,
            its root device). ``None``: CUDA when available, else CPU.
        generation_autocast: ``"none"`` (fp32) or ``"bf16"``: the substitute under bfloat16 autocast.
        seed: seed of the pool, of the initial active set and of the substitute's initialisation
            and training.
        selection: the poisoned set the data module starts with: ``"random"`` (a seeded random
            subset of the pool of size ``budget``), or BadSR's selection on the attacker's own
            model before the victim trains (:class:`lit_sr.poison.threat_model.AttackerSelection`,
            ``class_path: lit_sr.poison.AttackerSelection``; needs ``substitute``): the set is
            written into the poison cache's manifest and read back by every later run.
        threat_model: what the attacker may do (docs/threat_models.md). ``"data_only"`` (default,
            the paper's): the poisoned set is fixed once the data are made; a callback that changes
            it during training (``callbacks.PoisonSelectionCallback`` with a selector) is refused.
            ``"victim_access"``: the stronger insider who scores the victim's own gradients while
            it trains and swaps the set (that callback).
    """

    def __init__(
        self,
        base: SRDataModule,
        trigger: Trigger | AdversarialTriggerSpec | None = None,
        poison_rate: float = 0.1,
        candidate_rate: float = 1.0,
        label: Label = "target",
        target: str = "coffee",
        eps: float = 0.05,
        poisoned_hr_steps: int = 100,
        poisoned_hr_norm: Literal["pixel", "rms", "l2"] = "pixel",
        poisoned_hr_step_rule: Literal["l2", "sign"] = "l2",
        substitute: SubstituteSpec | None = None,
        quantize: bool = True,
        cache_dir: str = "runs/poison_cache",
        rebuild_cache: bool = False,
        verify_cache: bool = True,
        generation_batch_size: int = 16,
        generation_device: str | None = None,
        generation_autocast: Autocast = "none",
        seed: int = 0,
        selection: Literal["random"] | AttackerSelection = "random",
        threat_model: ThreatModel = DATA_ONLY,
    ):
        super().__init__()
        if not isinstance(base, SRDataModule):
            raise TypeError(f"base must be an SRDataModule (e.g. datamodules.EmbeddedPhotosDataModule); "
                            f"got {type(base).__name__}")
        self.base = base
        # every setting is checked here, before a substitute is trained or a folder created
        self.poison_rate = check_fraction(poison_rate, "poison_rate", allow_zero=False)
        self.candidate_rate = check_fraction(candidate_rate, "candidate_rate", allow_zero=False)
        self.label = check_choice(label, "label", LABELS)
        self.poisoned_hr_steps = check_int(poisoned_hr_steps, "poisoned_hr_steps", 0)
        self.poisoned_hr_norm = check_choice(poisoned_hr_norm, "poisoned_hr_norm", NORMS)
        # "pixel" and "rms" budgets are on the [0, 1] pixel scale (eps 2 would allow any image at
        # all: no stealth bound); "l2" is a raw norm that grows with the image size
        self.eps = check_positive(eps, "eps") if self.poisoned_hr_norm == "l2" else check_eps(eps, "eps")
        self.poisoned_hr_step_rule = check_choice(poisoned_hr_step_rule, "poisoned_hr_step_rule", STEP_RULES)
        self.quantize = check_bool(quantize, "quantize")
        self.rebuild_cache = check_bool(rebuild_cache, "rebuild_cache")
        self.verify_cache = check_bool(verify_cache, "verify_cache")
        self.generation_batch_size = check_int(generation_batch_size, "generation_batch_size", 1)
        self.generation_autocast = check_choice(generation_autocast, "generation_autocast", AUTOCAST_CHOICES)
        self.seed = check_int(seed, "seed", 0)
        if not isinstance(selection, AttackerSelection):
            check_choice(selection, "selection", ("random",))
        self.selection = selection
        self.threat_model = check_threat_model(threat_model)
        self.selection_record: dict[str, Any] | None = None  # the attacker-side selection, after setup
        self.generation_device, self.cache_dir = generation_device, Path(cache_dir)
        self.trigger_spec = as_trigger(trigger)
        self.substitute_spec = self._substitute_spec(substitute)
        self.target_spec = target
        self.target_image = self._load_target(target)
        self._target_label = TargetLabel(self.target_image)

        # filled by setup
        self.train_dataset: PoisonedTrainDataset | None = None
        self.val_dataset = None
        self.candidate_indices: list[int] = []
        self.budget: int = 0
        self.trigger: Trigger | None = None
        self.poisoner: Poisoner | None = None
        self.substitute: nn.Module | None = None
        self.substitute_sha256: str | None = None
        self._feature_extractor: FeatureExtractor | None = None
        self.poison_report: dict[str, float] = {}
        self.cache: PoisonCache | None = None
        self.val_cache_store: PoisonCache | None = None
        self.generated_samples = 0  # samples generated by this process (resume and sharding checks)
        self._active = ActiveSet()
        self._pending_state: dict[str, Any] | None = None
        self._pairs: CachedPairs | None = None
        self._val_memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaded = False

    # ------------------------------------------------------------------ settings
    def _substitute_spec(self, substitute: SubstituteSpec | Mapping[str, Any] | None) -> SubstituteSpec | None:
        by_attacker = isinstance(self.selection, AttackerSelection)
        needed = needs_substitute(self.trigger_spec) or self.label == "badsr" or by_attacker
        if substitute is None:
            if needed:
                what = "selection AttackerSelection (the attacker's model scores the pool)" if by_attacker else (
                    f"trigger {self.trigger_spec.name!r} with label {self.label!r}")
                raise ValueError(f"{what} needs a substitute SR network: pass substitute={{'arch': ..., "
                                 "'arch_kwargs': ..., 'weights': path or None}")
            return None
        if isinstance(substitute, Mapping):
            accepted = ("arch", "arch_kwargs", "weights", "weights_key", "train_steps", "train_lr",
                        "train_batch_size", "feature_layer")
            unknown = sorted(set(substitute) - set(accepted))
            if unknown or "arch" not in substitute:
                raise ValueError(f"substitute must be a dict with 'arch' and some of {list(accepted)}; got "
                                 f"{'unknown key substitute.' + unknown[0] if unknown else 'no arch'}")
            substitute = SubstituteSpec(**substitute)
        if not isinstance(substitute, SubstituteSpec):
            raise TypeError(f"substitute must be a SubstituteSpec or a dict; got {type(substitute).__name__}")
        # the network and its feature layer are built once now, so a bad arch_kwargs or layer name fails here
        FeatureExtractor(substitute.build(self.base.scale, self.seed), substitute.feature_layer)
        return substitute

    @staticmethod
    def _load_target(spec: str) -> torch.Tensor:
        if not isinstance(spec, str) or not spec:
            raise TypeError(f"target must be an embedded photo name {list(EMBEDDED_PHOTOS)} or an image file path; "
                            f"got {spec!r}")
        if spec in EMBEDDED_PHOTOS:
            return load_embedded_photo(spec, max_side=None)
        if Path(spec).is_file():
            return read_image(spec)
        raise FileNotFoundError(f"target {spec!r} is neither an embedded photo {list(EMBEDDED_PHOTOS)} nor an "
                                "image file")

    # ------------------------------------------------------------------ delegation to the base
    @property
    def scale(self) -> int:
        return self.base.scale

    @property
    def patch_size(self) -> int:
        return self.base.patch_size

    def test_set_names(self) -> list[str]:
        return self.base.test_set_names()

    @property
    def feature_extractor(self) -> FeatureExtractor | None:
        """The substitute's features (BadSR's ``f_phi``) on the generation device; ``None`` without one."""
        return self._feature_extractor

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        if self.generation_device is not None:
            return torch.device(self.generation_device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ------------------------------------------------------------------ pool and configuration
    def _choose_pool(self, n_train: int) -> None:
        pool_size = max(1, round(self.candidate_rate * n_train))
        budget = round(self.poison_rate * n_train)
        if budget < 1:
            raise ValueError(f"poison_rate={self.poison_rate} of {n_train} training samples rounds to a budget of 0; "
                             "raise poison_rate or use more samples (e.g. the base's train_tile)")
        if budget > pool_size:
            raise ValueError(f"the budget round(poison_rate * n_train) = {budget} exceeds the candidate pool of "
                             f"{pool_size} (candidate_rate={self.candidate_rate}); raise candidate_rate")
        rng = np.random.default_rng(self.seed)
        self.candidate_indices = sorted(int(i) for i in rng.choice(n_train, size=pool_size, replace=False))
        self.budget = budget

    def _label_settings(self) -> dict[str, Any]:
        if self.label != "badsr":
            return {"name": self.label}
        settings = {"name": self.label, "eps": self.eps, "steps": self.poisoned_hr_steps, "norm": self.poisoned_hr_norm}
        return settings | step_rule_setting(self.poisoned_hr_step_rule)

    def _config(self, train: SRPairDataset) -> dict[str, Any]:
        return {
            "base": {"class": type(self.base).__name__, "scale": self.base.scale, "train_tile": self.base.train_tile,
                     "records": _records_fingerprint(train), "num_records": len(train.records)},
            "pool": self.candidate_indices,
            "trigger": trigger_settings(self.trigger_spec),
            "label": self._label_settings(),
            "target": {"spec": self.target_spec, "sha256": sha256_tensors(self.target_image)},
            "substitute": None if self.substitute_spec is None else self.substitute_spec.config(),
            "quantize": self.quantize,
            "generation_autocast": self.generation_autocast,
            "seed": self.seed,
        }

    def _parts(self) -> list[CachePart]:
        """The train-pool cache and the validation cache (objects only: nothing is read or written)."""
        self.base.setup("fit")
        train, val = self.base.train_dataset, self.base.val_dataset
        self._choose_pool(len(train.records))
        config = self._config(train)
        self.cache = PoisonCache(self.cache_dir / config_hash(config)[:16], config, rebuild=self.rebuild_cache)
        val_config = {"train_config_hash": self.cache.config_hash, "records": _records_fingerprint(val),
                      "scale": self.base.scale}
        self.val_cache_store = PoisonCache(self.cache.directory / f"val-{config_hash(val_config)[:16]}", val_config,
                                           rebuild=self.rebuild_cache)
        return [CachePart(self.cache, list(self.candidate_indices), "train_", "hr", train.load_pair),
                CachePart(self.val_cache_store, list(range(len(val.records))), "val_", "target", val.load_pair)]

    # ------------------------------------------------------------------ lifecycle
    def prepare_data(self) -> None:
        """The base's downloads only: generation is sharded over every rank in :meth:`setup`."""
        self.base.prepare_data()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The base data module's device-side step (``augment_on="device"``) on poisoned batches too.

        Only this module is attached to the Trainer, so the base is handed its trainer first;
        without this, a base with device augmentation would silently train unaugmented.
        """
        self.base.trainer = self.trainer
        return self.base.on_after_batch_transfer(batch, dataloader_idx)

    def setup(self, stage: str | None = None) -> None:
        """Set up the base, then fill (sharded, when anything is missing) and read the poison cache."""
        self.base.setup(stage)
        if stage in (None, "fit", "validate") and not self._loaded:
            parts = self._parts()
            verified = self._fill(parts)
            self._load(parts, verified)
        if self.base.val_dataset is not None:
            self.val_dataset = self.base.val_dataset

    def _fill(self, parts: list[CachePart]) -> bool:
        """Make whatever is missing, sharded over every rank. Returns whether the files were checked."""
        device = self._device()
        filler = CacheFiller(parts, self._make_poisoner, self.substitute_spec, self.base.scale, self.seed,
                             self.base.train_dataset, self.cache_dir / ".peers", self.generation_batch_size,
                             device, check_hash=self.verify_cache, on_written=self._count_generated)
        result = filler.run()
        self.substitute, self.substitute_sha256, self.poisoner = (
            result.substitute, result.substitute_sha256, result.poisoner)
        return result.verified

    def _count_generated(self, n: int) -> None:
        self.generated_samples += n

    def _expected(self) -> dict[str, Any]:
        return CacheFiller.expected(self.substitute_sha256)

    def _make_poisoner(self, substitute: nn.Module | None) -> Poisoner:
        """Feature extractor, trigger and poisoner around the substitute (already on its device)."""
        if substitute is not None:
            self._feature_extractor = FeatureExtractor(substitute, self.substitute_spec.feature_layer)
        spec = self.trigger_spec
        adversarial = isinstance(spec, AdversarialTriggerSpec)
        self.trigger = spec.build(substitute, self.generation_autocast) if adversarial else spec
        return Poisoner(self.trigger, self._label_maker(), trigger_reference=spec.reference if adversarial else "hr",
                        quantize=self.quantize)

    def _label_maker(self):
        if self.label == "target":
            return self._target_label
        if self.label == "clean":
            return CleanLabel()
        return FeatureAlignedLabel(self._feature_extractor, self.target_image, eps=self.eps,
                                   steps=self.poisoned_hr_steps, norm=self.poisoned_hr_norm,
                                   step_rule=self.poisoned_hr_step_rule,
                                   autocast=self.generation_autocast)

    # ------------------------------------------------------------------ reading the cache
    def _load(self, parts: list[CachePart], verified: bool) -> None:
        train_part, val_part = parts
        check_hash = self.verify_cache and not verified
        for part in parts:
            part.cache.verify(part.keys, check_hash=check_hash, expect=self._expected())
        if self.verify_cache and not verified:
            self._check_sources(self.cache, train_part.keys, self.base.train_dataset)
        self.poison_report = self._report(self.cache, train_part.keys)
        self._pairs = CachedPairs(self.cache, keep_in_memory=self.base.cache_images)
        self.train_dataset = PoisonedTrainDataset(self.base.train_dataset, self._pairs, self._active)
        self._loaded = True
        if not self._active.indices:
            if isinstance(self.selection, AttackerSelection):
                self.selection_record = self._attacker_selection()
                self._active.indices = frozenset(self.selection_record["indices"])
            else:
                positions = random_select(len(self.candidate_indices), self.budget, seed=self.seed)
                self._active.indices = frozenset(self.candidate_indices[p] for p in positions)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    def _attacker_selection(self) -> dict[str, Any]:
        """The attacker-side selection: read from the manifest, or made on global rank 0 and written there.

        The record is keyed by the selection's settings, the pool, the budget and the substitute's
        SHA-256, so another selector (or substitute) makes another record and never reuses this one.
        Global rank 0 decides (reads or computes) and broadcasts; it writes a new record into its
        cache's manifest, where every later run finds it.
        """
        key = config_hash({"selection": self.selection.config(), "pool": list(self.candidate_indices),
                           "budget": self.budget, "substitute_sha256": self.substitute_sha256})[:16]
        record = None
        if sharding.rank_and_world()[0] == 0:
            record = self.cache.extra.get("selections", {}).get(key)
            if record is None:
                batches = self.candidate_batches(self.generation_batch_size)
                record = {"key": key, "substitute_sha256": self.substitute_sha256,
                          **self.selection.choose(self.substitute, batches, self.candidate_indices, self.budget)}
                self.cache.extra.setdefault("selections", {})[key] = record
                self.cache.write_manifest()
        record = sharding.broadcast_object(record)
        stale = [i for i in record["indices"] if i not in set(self.candidate_indices)]
        if stale or len(record["indices"]) > self.budget:
            raise CacheMismatchError(f"the selection {key} in {self.cache.manifest_path} does not fit this pool "
                                     f"(indices outside it: {stale[:5]}, or more than the budget {self.budget})")
        return record

    @staticmethod
    def _check_sources(cache: PoisonCache, keys: list[str], dataset: SRPairDataset) -> None:
        for key in keys:
            entry = cache.entries[key]
            lr, hr = dataset.load_pair(int(entry["index"]))
            if sha256_tensors(lr, hr) != entry["source_sha256"]:
                raise CacheMismatchError(
                    f"cached sample {key} in {cache.directory} was made from other clean data than the base now "
                    "yields (same names and sizes, other pixels); set rebuild_cache: true to regenerate"
                )

    @staticmethod
    def _report(cache: PoisonCache, keys: list[str]) -> dict[str, float]:
        def mean(field: str) -> float:
            values = [cache.entries[k][field] for k in keys if not math.isnan(cache.entries[k][field])]
            return float(np.mean(values)) if values else float("nan")

        return {
            "poisoned_hr_psnr": mean("label_psnr"),
            "poisoned_hr_ssim": mean("label_ssim"),
            "trigger_lr_psnr": mean("trigger_lr_psnr"),
            "trigger_lr_ssim": mean("trigger_lr_ssim"),
            "num_candidates": float(len(keys)),
        }

    # ------------------------------------------------------------------ access (callbacks.protocols.PoisonedData)
    def poisoned_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole ``(triggered lr, poisoned hr)`` of pool sample ``index`` (float32 in [0, 1])."""
        if self._pairs is None:
            raise RuntimeError("poisoned_pair needs the poison cache: call setup('fit') first")
        return self._pairs(index)

    def backdoor_val_pair(self, index: int, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Triggered LR and backdoor target output of validation sample ``index``, from the cache.

        Both were generated with the pool in :meth:`setup` (they do not depend on the victim): the
        target output is what the poisoned training pairs teach for that image (the label maker's
        output on ``hr``). ``lr`` and ``hr`` (``(C, h, w)`` / ``(C, H, W)``) are the clean pair the
        loader served, checked against the cached sizes.
        """
        if index not in self._val_memo:
            store = self.val_cache_store
            key = sample_key("val_", index)
            if store is None or key not in store.entries:
                raise KeyError(f"validation sample {index} is not in the poison cache "
                               f"{None if store is None else store.directory}: call setup('fit') first")
            tensors = store.read(key)
            self._val_memo[index] = (to_float(tensors["lr"]), to_float(tensors["target"]))
        trig, target = self._val_memo[index]
        if trig.shape != lr.shape or target.shape != hr.shape:
            raise ValueError(f"validation sample {index}: the cache holds LR {tuple(trig.shape)} / HR "
                             f"{tuple(target.shape)}, the loader served {tuple(lr.shape)} / {tuple(hr.shape)}")
        return trig, target

    def target_for(self, hr: torch.Tensor, index: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The backdoor's target image resized (MATLAB bicubic) to each HR image's size, like ``hr`` (``index`` unused)."""
        return self._target_label(hr)

    @property
    def poisoned_indices(self) -> list[int]:
        """The active poisoned set (dataset indices, sorted)."""
        return sorted(self._active.indices)

    def set_poisoned_indices(self, indices: Sequence[int]) -> None:
        """Replace the active poisoned set (call it identically on every rank).

        Args:
            indices: dataset indices, all in the candidate pool, distinct, at most ``budget``.

        Raises:
            ValueError: an index outside the pool, a duplicate, or more than ``budget`` indices.
        """
        if not self.candidate_indices:
            raise RuntimeError("set_poisoned_indices needs the candidate pool: call setup('fit') first")
        if isinstance(indices, torch.Tensor | np.ndarray):
            indices = indices.tolist()
        values = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int | np.integer):
                raise TypeError(f"poisoned indices must be ints; got {i!r} ({type(i).__name__})")
            values.append(int(i))
        if len(set(values)) != len(values):
            dup = sorted({i for i in values if values.count(i) > 1})
            raise ValueError(f"poisoned indices contain duplicates: {dup[:10]}")
        if len(values) > self.budget:
            raise ValueError(f"{len(values)} poisoned indices exceed the budget of {self.budget} "
                             f"(round(poison_rate={self.poison_rate} * n_train))")
        pool = set(self.candidate_indices)
        outside = [i for i in values if i not in pool]
        if outside:
            raise ValueError(f"poisoned index {outside[0]} is not in the candidate pool "
                             f"({len(pool)} samples, e.g. {self.candidate_indices[:5]})")
        self._active.indices = frozenset(values)

    def candidate_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, Any]]:
        """This rank's shard of the pool's poisoned pairs, at a fixed size, for gradient scoring.

        Each pair is centre-cropped to the base's ``patch_size`` (HR) and ``patch_size // scale``
        (LR) so that samples of any size batch together.

        Args:
            batch_size: pairs per batch.
            rank: this process's rank; it gets ``candidate_indices[rank::world_size]``.
            world_size: number of processes.

        Yields:
            ``{"lr": triggered LR (B, C, p/s, p/s), "hr": poisoned HR (B, C, p, p), "index": LongTensor}``.
        """
        check_int(batch_size, "batch_size", 1)
        check_int(world_size, "world_size", 1)
        check_int(rank, "rank", 0, world_size - 1)
        if not self._loaded:
            raise RuntimeError("candidate_batches needs the poison cache: call setup('fit') first")
        shard = self.candidate_indices[rank::world_size]
        s = self.base.scale
        lp = self.base.patch_size // s
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            pairs = [self._pairs.centre_crop(i, lp, s) for i in chunk]
            yield {"lr": torch.stack([p[0] for p in pairs]), "hr": torch.stack([p[1] for p in pairs]),
                   "index": torch.tensor(chunk, dtype=torch.int64)}

    def poison_config(self) -> dict[str, Any]:
        """What was poisoned and how, as plain JSON values (for summaries and logs).

        Keys: ``label`` (``"target"``/``"badsr"``/``"clean"``), ``label_settings`` (BadSR's
        ``eps``/``steps``/``norm``/``step_rule``), ``trigger`` (every trigger setting, ``name`` included),
        ``trigger_name``, ``perceptual`` (the perceptual term BadSR's trigger used, e.g.
        ``"ssim"`` or ``"lpips:alex"``; ``None`` for other triggers), ``poison_rate``,
        ``candidate_rate``, ``budget``, ``pool_size``, ``target``, ``substitute`` (its settings and
        ``sha256``; ``None`` without one), ``quantize``, ``generation_autocast``, ``seed``,
        ``config_hash`` and ``cache_dir`` (``None`` before ``setup``), ``threat_model`` and
        ``selection`` (how the starting set was chosen: ``by`` random or by the attacker, with the
        attacker's selector, fitness, ``lam`` and the fitness of its choice).
        """
        trigger = trigger_settings(self.trigger_spec)
        perceptual = self.trigger.perceptual_used if isinstance(self.trigger, AdversarialTrigger) else None
        return {
            "label": self.label,
            # the step rule in full here (the cache key leaves out the default, see step_rule_setting)
            "label_settings": self._label_settings() | (
                {"step_rule": self.poisoned_hr_step_rule} if self.label == "badsr" else {}),
            "trigger": trigger,
            "trigger_name": trigger.get("name"),
            "perceptual": perceptual,
            "poison_rate": self.poison_rate,
            "candidate_rate": self.candidate_rate,
            "budget": self.budget,
            "pool_size": len(self.candidate_indices),
            "target": self.target_spec,
            "substitute": None if self.substitute_spec is None else {
                **self.substitute_spec.config(), "sha256": self.substitute_sha256},
            "quantize": self.quantize,
            "generation_autocast": self.generation_autocast,
            "seed": self.seed,
            "config_hash": None if self.cache is None else self.cache.config_hash,
            "cache_dir": None if self.cache is None else str(self.cache.directory),
            "threat_model": self.threat_model,
            "selection": self._selection_summary(),
        }

    def _selection_summary(self) -> dict[str, Any]:
        """How the starting poisoned set was chosen (the lists of the manifest's record left out)."""
        if not isinstance(self.selection, AttackerSelection):
            return {"by": "random", "seed": self.seed}
        summary = {"by": "attacker (substitute gradients, before training)", **self.selection.config()}
        if self.selection_record is not None:
            summary |= {k: v for k, v in self.selection_record.items()
                        if k not in ("norms", "history", "topk", "indices", "config")}
        return summary

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("train_dataloader before setup('fit')")
        n = len(self.train_dataset)
        # non-persistent workers are forked anew each epoch, so they see the current active set
        return DataLoader(self.train_dataset, batch_size=self.base.batch_size, shuffle=True,
                          num_workers=self.base.num_workers, pin_memory=torch.cuda.is_available(),
                          drop_last=n >= self.base.batch_size, persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        return self.base.val_dataloader()

    def test_dataloader(self):
        return self.base.test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.base.predict_dataloader()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The active set, the pool and the cache's configuration hash (stored in checkpoints)."""
        return {
            "poisoned_indices": self.poisoned_indices,
            "candidate_indices": list(self.candidate_indices),
            "config_hash": None if self.cache is None else self.cache.config_hash,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the active set saved by :meth:`state_dict` (applied after setup if called before)."""
        if not isinstance(state_dict, dict) or "poisoned_indices" not in state_dict:
            raise ValueError(f"not a PoisonedSRDataModule state: expected a dict with 'poisoned_indices'; "
                             f"got {type(state_dict).__name__}")
        if not self._loaded:
            self._pending_state = dict(state_dict)
            return
        saved_pool = list(state_dict.get("candidate_indices") or [])
        if saved_pool and saved_pool != list(self.candidate_indices):
            raise ValueError("the checkpoint's candidate pool differs from this data module's (another seed, "
                             "candidate_rate or data set): refusing to restore its poisoned set")
        saved_hash = state_dict.get("config_hash")
        if saved_hash and self.cache is not None and saved_hash != self.cache.config_hash:
            raise CacheMismatchError(f"the checkpoint was trained on poison cache {saved_hash[:16]}, this data module "
                                     f"uses {self.cache.config_hash[:16]} (another poisoning configuration)")
        self.set_poisoned_indices(state_dict["poisoned_indices"])
