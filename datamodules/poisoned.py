"""Poisoned SR training data: wrap any SR data module and replace a fraction of its samples.

A backdoor attack by data poisoning (BadSR, Guo et al., arXiv 2505.15308; and the classic SR
backdoor whose poisoned label is the target image itself) changes a few training pairs
``(lr, hr)`` into ``(trigger(lr), poisoned_hr)``. :class:`PoisonedSRDataModule` does that for any
:class:`~datamodules.sr.SRDataModule`:

1. A **candidate pool** (a seeded fraction ``candidate_rate`` of the training samples) is chosen;
   for every candidate the triggered LR and the poisoned HR are generated once, batched over
   samples of equal size, and **cached on disk** (see :class:`PoisonCache`).
2. An **active poisoned set** of at most ``budget = round(poison_rate * n_train)`` candidates is
   trained on; the others stay clean. It starts as a seeded random subset of the pool and can be
   replaced between epochs (:meth:`PoisonedSRDataModule.set_poisoned_indices`, called by
   :class:`callbacks.GeneticSelectionCallback` identically on every rank). It is part of the
   data module's ``state_dict``, which Lightning stores in checkpoints, so a resumed run trains on
   the same set.
3. Training samples that are poisoned are cropped and augmented exactly like clean ones (the base
   data set's ``crop_and_augment``) and carry ``"poisoned": True``.

**How a new set reaches the loaders.** The training data set reads the active set *live* (a shared
object, not a copy), and :meth:`PoisonedSRDataModule.train_dataloader` builds its loader with
``persistent_workers=False``, so loader workers are forked anew each epoch and see the current set
too. A set installed at the end of epoch ``E`` is therefore used from epoch ``E + 1`` with or
without ``reload_dataloaders_every_n_epochs``; the recipes still set it to 1 because the base data
set's random crops change per epoch only when the loader is rebuilt.

**Labels.** ``label="target"``: the poisoned HR is the target image resized to the sample's HR size
(the classic SR backdoor: a triggered input comes out as the target). ``label="badsr"``: the
poisoned HR is BadSR's stealthy label :func:`lit_sr.poison.make_poisoned_hr` -- the clean HR moved
within an ``eps`` ball towards the target image *in the substitute's feature space* (Eq. 13).

**Under DDP** generation runs in :meth:`~PoisonedSRDataModule.prepare_data`, which Lightning calls
on local rank 0 only while the other ranks wait on a barrier; every rank then reads the cache in
``setup``. A data module used without a trainer (or with one process) generates in ``setup``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datamodules.datasets import SRPairDataset
from datamodules.sr import EMBEDDED_TRAIN, EMBEDDED_VAL, SRDataModule, load_embedded_photo
from lit_sr.io import atomic_write, load_weights, read_image, save_weights
from lit_sr.poison.asr import stealth
from lit_sr.poison.poisoned_hr import NORMS, FeatureExtractor, make_poisoned_hr, resize_target
from lit_sr.poison.selection import random_select
from lit_sr.poison.triggers import TRIGGERS, Trigger, build_trigger, check_choice, check_number

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = ("target", "badsr")
SELECTIONS = ("random",)
TRIGGER_REFERENCES = ("hr", "clean_output")
SUBSTITUTE_KEYS = ("arch", "arch_kwargs", "weights", "weights_key")
AUTOCAST = {None: None, "bf16": torch.bfloat16}
EMBEDDED_PHOTOS = EMBEDDED_TRAIN + EMBEDDED_VAL


class CacheMismatchError(ValueError):
    """A poison cache directory holds data made with another configuration."""


# --------------------------------------------------------------------------- hashing helpers


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """Hex SHA-256 of tensors' shapes, dtypes and bytes (CPU, contiguous)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """Hex SHA-256 of a configuration's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(_config_diff(a, b, f"{prefix}{k}."))
        elif a != b:
            diffs.append(f"{prefix}{k}: cached {str(a)[:60]!s} vs now {str(b)[:60]!s}")
    return diffs


# --------------------------------------------------------------------------- the cache


class PoisonCache:
    """A directory of generated samples: one safetensors file per sample plus ``manifest.json``.

    The manifest records the format version, the configuration and its hash, and one entry per
    *finished* sample: its file name, the SHA-256 of the file, the SHA-256 of the clean data it was
    made from, and per-sample statistics. Every file (samples and manifest) is written to a
    temporary name and renamed into place (:func:`lit_sr.io.atomic_write`), and the manifest is
    rewritten only after the sample files it lists exist, so an interrupted generation leaves
    either finished, listed samples or unlisted ones that are simply made again; stale temporary
    files are removed when a writer opens the cache.

    A manifest whose configuration hash differs from the expected one raises
    :class:`CacheMismatchError` listing the differences, unless ``rebuild`` is set, in which case
    the directory's contents are deleted and generation starts over: data made with two
    configurations are never mixed.

    Args:
        directory: the cache directory (``<cache_dir>/<config hash>``).
        config: the configuration, a JSON-serialisable dict.
        rebuild: delete a mismatched cache instead of raising.
    """

    def __init__(self, directory: str | os.PathLike, config: dict[str, Any], rebuild: bool = False):
        self.directory = Path(directory)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))
        self.config_hash = config_hash(self.config)
        self.rebuild = rebuild
        self.entries: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest as a dict, or ``None`` when there is none yet."""
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:  # atomic writes make this unlikely; treat as foreign data
            raise CacheMismatchError(f"{self.manifest_path} is not valid JSON ({exc}); delete it or set "
                                     "rebuild_cache: true") from exc

    def open(self, writable: bool) -> None:
        """Read the manifest, check it belongs to this configuration, and (writer) tidy up.

        Args:
            writable: this process will generate samples (removes stale temporary files and, with
                ``rebuild``, a mismatched cache).
        """
        manifest = self.read_manifest()
        if manifest is not None and (manifest.get("config_hash") != self.config_hash
                                     or manifest.get("format") != FORMAT_VERSION):
            if not (self.rebuild and writable):
                diffs = _config_diff(manifest.get("config", {}), self.config)
                raise CacheMismatchError(
                    f"the poison cache {self.directory} was made with another configuration (hash "
                    f"{str(manifest.get('config_hash'))[:16]}, expected {self.config_hash[:16]}; format "
                    f"{manifest.get('format')} vs {FORMAT_VERSION}); differences: {diffs[:8] or 'unknown'}. "
                    "Refusing to mix it with new samples: set rebuild_cache: true to regenerate it, or use "
                    "another cache_dir"
                )
            self.clear()
            manifest = None
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
            # every temporary file of atomic_write is hidden (".<name>.<random>"): left by an interrupt
            for stale in self.directory.iterdir():
                if stale.name.startswith(".") and stale.is_file():
                    stale.unlink(missing_ok=True)
        self.entries = dict(manifest.get("samples", {})) if manifest else {}
        self.extra = dict(manifest.get("extra", {})) if manifest else {}
        if writable:
            self._drop_broken_entries()

    def _drop_broken_entries(self) -> None:
        """Forget listed samples whose file is missing or altered, so the writer makes them again."""
        broken = [key for key, entry in self.entries.items()
                  if not (self.directory / entry["file"]).is_file()
                  or sha256_file(self.directory / entry["file"]) != entry["sha256"]]
        for key in broken:
            self.entries.pop(key)
        if broken:
            self.write_manifest()

    def clear(self) -> None:
        """Delete every file of the cache directory (used by ``rebuild``)."""
        if self.directory.is_dir():
            shutil.rmtree(self.directory)
        self.entries, self.extra = {}, {}

    def finished(self) -> set[str]:
        """Keys of the samples listed as finished."""
        return set(self.entries)

    def write_manifest(self) -> None:
        """Rewrite the manifest atomically with the current entries."""
        manifest = {
            "format": FORMAT_VERSION,
            "config_hash": self.config_hash,
            "config": self.config,
            "extra": self.extra,
            "samples": dict(sorted(self.entries.items())),
        }
        with atomic_write(self.manifest_path, suffix=".tmp") as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))

    def write_samples(self, samples: dict[str, dict[str, torch.Tensor]], info: dict[str, dict[str, Any]]) -> None:
        """Write sample files atomically, then list them in the manifest.

        Args:
            samples: ``{key: {tensor name: tensor}}``.
            info: ``{key: json-serialisable dict}`` stored in the sample's manifest entry.
        """
        from safetensors.torch import save_file

        for key, tensors in samples.items():
            path = self.directory / f"{key}.safetensors"
            with atomic_write(path) as tmp:
                # one metadata entry: safetensors writes a map's entries in no fixed order, and the
                # same sample must give the same bytes (and checksum) when it is made again
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                          metadata={"sample": f"{key} of {self.config_hash}"})
            self.entries[key] = {"file": path.name, "sha256": sha256_file(path), **info.get(key, {})}
        self.write_manifest()

    def verify(self, keys: Sequence[str]) -> None:
        """Check that every key is listed and its file exists with the recorded SHA-256.

        Raises:
            CacheMismatchError: a sample is missing, or its file was changed or truncated.
        """
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise CacheMismatchError(f"the poison cache {self.directory} lacks {len(missing)} samples "
                                     f"(e.g. {missing[:5]}); it is incomplete: generate it first")
        for key in keys:
            entry = self.entries[key]
            path = self.directory / entry["file"]
            if not path.is_file():
                raise CacheMismatchError(f"{path} is listed in {self.manifest_path} but missing; set "
                                         "rebuild_cache: true or delete the manifest entry")
            if sha256_file(path) != entry["sha256"]:
                raise CacheMismatchError(f"{path} does not match the SHA-256 in {self.manifest_path}: the file "
                                         "was changed or truncated; set rebuild_cache: true to regenerate")

    def read(self, key: str) -> dict[str, torch.Tensor]:
        """The tensors of one listed sample."""
        from safetensors.torch import load_file

        if key not in self.entries:
            raise KeyError(f"sample {key!r} is not in the poison cache {self.directory}")
        return load_file(str(self.directory / self.entries[key]["file"]))


# --------------------------------------------------------------------------- the training data set


class ActiveSet:
    """The active poisoned indices, shared by reference between the data module and its data set."""

    def __init__(self, indices: Sequence[int] = ()):
        self.indices: frozenset[int] = frozenset(int(i) for i in indices)


def to_float(img: torch.Tensor) -> torch.Tensor:
    """A cached image (uint8 or float) as float32 in [0, 1]."""
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def to_stored(img: torch.Tensor, quantize: bool) -> torch.Tensor:
    """An image as stored in the cache: uint8 when ``quantize``, else float32."""
    if quantize:
        return (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return img.detach().float().clamp(0, 1)


class CachedPairs:
    """``index -> (triggered lr, poisoned hr)`` (float32, whole images) read from a poison cache.

    A small picklable object, so loader workers get it without the data module.

    Args:
        cache: the (verified) cache.
        keep_in_memory: keep pairs after their first read (small data sets); otherwise every call
            reads the file (large images).
    """

    def __init__(self, cache: PoisonCache, keep_in_memory: bool):
        self.cache, self.keep_in_memory = cache, keep_in_memory
        self._memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._memory:
            return self._memory[index]
        key = f"train_{index:06d}"
        if key not in self.cache.entries:
            raise KeyError(f"sample {index} is not in the candidate pool of the poison cache {self.cache.directory}")
        tensors = self.cache.read(key)
        pair = (to_float(tensors["lr"]), to_float(tensors["hr"]))
        if self.keep_in_memory:
            self._memory[index] = pair
        return pair


class PoisonedTrainDataset(Dataset):
    """The base training set with the active poisoned samples replaced by their cached pairs.

    Args:
        base: the clean training set (:class:`~datamodules.datasets.SRPairDataset`).
        pairs: :class:`CachedPairs` of the pool.
        active: the live active set.
    """

    def __init__(self, base: SRPairDataset, pairs: CachedPairs, active: ActiveSet):
        self.base, self.pairs, self.active = base, pairs, active

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        n = len(self.base.records)
        i = index % n
        if i not in self.active.indices:
            sample = self.base[index]
            sample["poisoned"] = False
            return sample
        lr, hr = self.pairs(i)
        # cropped and augmented exactly as a clean sample would be
        lr, hr = self.base.crop_and_augment(lr, hr, i)
        sample = self.base._sample(i, lr, hr)
        sample["poisoned"] = True
        return sample


# --------------------------------------------------------------------------- substitute training


def train_substitute(
    net: nn.Module,
    dataset: SRPairDataset,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Train a substitute SR network briefly on clean pairs with a plain loop (Adam, L1 loss).

    Batches are random crops of the training set (its own ``crop_and_augment``), drawn with a
    seeded generator. Returns the loss of every step.

    Args:
        net: the network (trained in place).
        dataset: clean training pairs (random crops of equal size).
        steps: optimiser steps.
        lr: Adam learning rate (cosine-annealed to 1% over the steps).
        batch_size: pairs per step.
        seed: seed of the batch order.
        device: where to train.
    """
    from tqdm.auto import tqdm

    check_number(steps, "steps", 1, integer=True)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc="substitute", leave=False):
        picks = torch.randint(len(dataset), (batch_size,), generator=gen).tolist()
        samples = [dataset[i] for i in picks]
        x = torch.stack([s["lr"] for s in samples]).to(device)
        y = torch.stack([s["hr"] for s in samples]).to(device)
        loss = torch.nn.functional.l1_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses


# --------------------------------------------------------------------------- the data module


def stealth_figures(modified: torch.Tensor, original: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR and SSIM (RGB, 8-bit, :mod:`lit_sr.metrics`) of a modification; SSIM is NaN
    for images under 11x11 pixels, where the SSIM window does not fit."""
    if min(modified.shape[-2:]) >= 11:
        return stealth(modified, original)
    from lit_sr.metrics import psnr

    return {"psnr": psnr(modified, original).cpu(), "ssim": torch.full((modified.shape[0],), float("nan"))}


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {value!r} ({type(value).__name__})")


def _records_fingerprint(dataset: SRPairDataset) -> str:
    """Identity of a data set's images: names, files and sizes, and the bytes of in-memory images."""
    digest = hashlib.sha256()
    for rec in dataset.records:
        digest.update(rec.name.encode())
        for p in (rec.hr_path, rec.lr_path):
            if p is not None:
                digest.update(f"{p}:{Path(p).stat().st_size if Path(p).is_file() else -1}".encode())
        if rec.hr_tensor is not None:
            digest.update(sha256_tensors(rec.hr_tensor).encode())
    return digest.hexdigest()


class PoisonedSRDataModule(L.LightningDataModule):
    """Wraps an SR data module and poisons a fraction of its training samples (see the module docstring).

    Args:
        base: the clean data module (any :class:`~datamodules.sr.SRDataModule`); its validation,
            test and predict loaders are used unchanged.
        trigger: the trigger as ``{"name": ..., **kwargs}`` for
            :func:`lit_sr.poison.build_trigger` (``blend``, ``badnet``, ``sig``, ``wanet``, or
            ``badsr`` -- BadSR's adversarial trigger, which gets the substitute as ``substitute``).
            Default ``{"name": "blend"}``.
        poison_rate: budget of poisoned samples as a fraction of the training samples (records,
            not repeats): ``budget = round(poison_rate * n_train)``. Default 0.1 (the paper).
        candidate_rate: fraction of the training samples in the candidate pool (seeded). The
            selection callbacks choose among these; generation covers the whole pool.
        label: ``"target"`` (the poisoned HR is the target image resized to the HR size) or
            ``"badsr"`` (BadSR's feature-aligned stealthy label, needs ``substitute``).
        target: the target image ``y_t*``: an embedded photo name (``coffee``, ``astronaut``, ...) or
            an image file path.
        eps: bound of the poisoned HR's deviation for ``label="badsr"``, in the units of
            ``poisoned_hr_norm`` (see :func:`lit_sr.poison.make_poisoned_hr`). Default 0.05.
        poisoned_hr_steps: PGD iterations of the poisoned HR.
        poisoned_hr_norm: how ``eps`` is normalised: ``"pixel"`` (default), ``"rms"`` or ``"l2"``.
        substitute: the substitute SR network as ``{"arch", "arch_kwargs", "weights", "weights_key"}``:
            used by the ``badsr`` trigger and label, and for the feature ASR. Its scale argument is
            filled from the base's scale. ``weights`` is a weights file (e.g. a previous run's
            ``weights.pth``); when it is ``None``, the substitute is trained here first on the clean
            training data for ``substitute_train_steps`` steps. A random substitute is refused.
        substitute_train_steps: steps of that training (0: ``weights`` is required).
        substitute_train_lr: its learning rate.
        substitute_batch_size: its batch size.
        feature_layer: the substitute's layer ``f_phi`` of BadSR (``None``: the trunk of a
            registered family, e.g. EDSR ``conv_after_body``, RRDBNet ``conv_body``).
        trigger_reference: for the ``badsr`` trigger, the image whose reconstruction error the
            perturbation maximises: ``"hr"`` (the sample's HR label, the paper's ``y``; also used
            at evaluation time with the validation HR) or ``"clean_output"`` (the substitute's
            output on the clean input: an attacker who has only the LR image).
        quantize: store triggered LR and poisoned HR as 8-bit images (what a published poisoned
            data set would hold); the evaluation's triggered inputs are rounded the same way.
        cache_dir: root of the poison cache; the data go to ``cache_dir/<config hash[:16]>/``.
        rebuild_cache: regenerate a cache whose manifest belongs to another configuration instead
            of raising :class:`CacheMismatchError`.
        verify_cache: check every cached file's SHA-256 when loading.
        val_cache: also generate the triggered validation LR and the backdoor's target outputs
            (for :class:`callbacks.BackdoorEvalCallback`), cached under the same directory.
        generation_batch_size: samples per batched trigger / poisoned-HR optimisation.
        generation_device: device of the generation when no trainer is attached (with a trainer,
            its root device). ``None``: CUDA when available, else CPU.
        generation_autocast: ``None`` (fp32) or ``"bf16"``: run the substitute under bfloat16
            autocast during generation.
        seed: seed of the pool, of the initial active set and of the substitute's training.
        selection: the initial active set: ``"random"`` (a seeded random subset of the pool of
            size ``budget``); :class:`callbacks.GeneticSelectionCallback` replaces it with its
            genetic (or top-k) choice during training.
    """

    def __init__(
        self,
        base: SRDataModule,
        trigger: dict[str, Any] | None = None,
        poison_rate: float = 0.1,
        candidate_rate: float = 1.0,
        label: str = "target",
        target: str = "coffee",
        eps: float = 0.05,
        poisoned_hr_steps: int = 100,
        poisoned_hr_norm: str = "pixel",
        substitute: dict[str, Any] | None = None,
        substitute_train_steps: int = 0,
        substitute_train_lr: float = 1e-3,
        substitute_batch_size: int = 16,
        feature_layer: str | None = None,
        trigger_reference: str = "hr",
        quantize: bool = True,
        cache_dir: str = "runs/poison_cache",
        rebuild_cache: bool = False,
        verify_cache: bool = True,
        val_cache: bool = True,
        generation_batch_size: int = 16,
        generation_device: str | None = None,
        generation_autocast: str | None = None,
        seed: int = 0,
        selection: str = "random",
    ):
        super().__init__()
        if not isinstance(base, SRDataModule):
            raise TypeError(f"base must be an SRDataModule (e.g. datamodules.EmbeddedPhotosDataModule); "
                            f"got {type(base).__name__}")
        trigger = {"name": "blend"} if trigger is None else dict(trigger)
        self._validate(trigger, poison_rate, candidate_rate, label, target, eps, poisoned_hr_steps,
                       poisoned_hr_norm, substitute, substitute_train_steps, substitute_train_lr,
                       substitute_batch_size, trigger_reference, generation_batch_size, generation_autocast, seed,
                       selection)
        for name, flag in (("quantize", quantize), ("rebuild_cache", rebuild_cache),
                           ("verify_cache", verify_cache), ("val_cache", val_cache)):
            _check_bool(flag, name)
        self.base = base
        self.trigger_spec = trigger
        self.poison_rate, self.candidate_rate = float(poison_rate), float(candidate_rate)
        self.label, self.target_spec = label, target
        self.eps, self.poisoned_hr_steps, self.poisoned_hr_norm = float(eps), poisoned_hr_steps, poisoned_hr_norm
        self.substitute_spec = None if substitute is None else dict(substitute)
        self.substitute_train_steps, self.substitute_train_lr = substitute_train_steps, float(substitute_train_lr)
        self.substitute_batch_size = substitute_batch_size
        self.feature_layer, self.trigger_reference = feature_layer, trigger_reference
        self.quantize, self.cache_dir = quantize, Path(cache_dir)
        self.rebuild_cache, self.verify_cache, self.val_cache = rebuild_cache, verify_cache, val_cache
        self.generation_batch_size, self.generation_device = generation_batch_size, generation_device
        self.generation_autocast, self.seed, self.selection = generation_autocast, seed, selection

        # filled by setup / prepare_data
        self.train_dataset: PoisonedTrainDataset | None = None
        self.val_dataset = None
        self.candidate_indices: list[int] = []
        self.budget: int = 0
        self.trigger: Trigger | None = None
        self.substitute: nn.Module | None = None
        self.feature_extractor: FeatureExtractor | None = None
        self.target_image: torch.Tensor = self._load_target()
        self.poison_report: dict[str, float] = {}
        self.cache: PoisonCache | None = None
        self.val_cache_store: PoisonCache | None = None
        self.generated_samples = 0  # samples generated by this process (resume and DDP checks)
        self._active = ActiveSet()
        self._pending_state: dict[str, Any] | None = None
        self._pairs: CachedPairs | None = None
        self._val_memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._target_sizes: dict[tuple[int, int, int], torch.Tensor] = {}
        self._loaded = False
        self._prepared = False

    # ------------------------------------------------------------------ validation of arguments
    @staticmethod
    def _validate(trigger, poison_rate, candidate_rate, label, target, eps, poisoned_hr_steps, poisoned_hr_norm,
                  substitute, substitute_train_steps, substitute_train_lr, substitute_batch_size, trigger_reference,
                  generation_batch_size, generation_autocast, seed, selection) -> None:
        name = trigger.get("name")
        if not isinstance(name, str) or name.lower() not in TRIGGERS:
            raise ValueError(f"trigger must be a dict with 'name' one of {sorted(TRIGGERS)}; got {trigger!r}")
        if "substitute" in trigger:
            raise ValueError("trigger must not contain 'substitute': the BadSR trigger uses the data module's "
                             "substitute (the 'substitute' argument)")
        check_number(poison_rate, "poison_rate", 0.0, 1.0, low_inclusive=False)
        check_number(candidate_rate, "candidate_rate", 0.0, 1.0, low_inclusive=False)
        check_choice(label, "label", LABELS)
        if not isinstance(target, str) or not target:
            raise TypeError(f"target must be an embedded photo name {list(EMBEDDED_PHOTOS)} or an image file path; "
                            f"got {target!r}")
        check_number(eps, "eps", 0.0, low_inclusive=False)
        check_number(poisoned_hr_steps, "poisoned_hr_steps", 0, integer=True)
        check_choice(poisoned_hr_norm, "poisoned_hr_norm", NORMS)
        check_number(substitute_train_steps, "substitute_train_steps", 0, integer=True)
        check_number(substitute_train_lr, "substitute_train_lr", 0.0, low_inclusive=False)
        check_number(substitute_batch_size, "substitute_batch_size", 1, integer=True)
        check_choice(trigger_reference, "trigger_reference", TRIGGER_REFERENCES)
        check_number(generation_batch_size, "generation_batch_size", 1, integer=True)
        if generation_autocast not in AUTOCAST:
            raise ValueError(f"generation_autocast must be None or 'bf16'; got {generation_autocast!r}")
        check_number(seed, "seed", 0, integer=True)
        check_choice(selection, "selection", SELECTIONS)
        needs_substitute = name.lower() in ("badsr", "adversarial") or label == "badsr"
        if substitute is None:
            if needs_substitute:
                raise ValueError(f"trigger {name!r} with label {label!r} needs a substitute SR network: pass "
                                 "substitute={'arch': ..., 'arch_kwargs': ..., 'weights': path or None}")
            return
        if not isinstance(substitute, dict) or "arch" not in substitute:
            raise ValueError(f"substitute must be a dict with at least 'arch'; got {substitute!r}")
        unknown = sorted(set(substitute) - set(SUBSTITUTE_KEYS))
        if unknown:
            raise ValueError(f"substitute has unknown keys {unknown}; expected some of {list(SUBSTITUTE_KEYS)}")
        weights = substitute.get("weights")
        if weights is None and substitute_train_steps == 0:
            raise ValueError("substitute has no weights and substitute_train_steps is 0: a randomly initialised "
                             "substitute would make the trigger, the poisoned labels and the feature ASR "
                             "meaningless; give substitute.weights (e.g. a previous run's weights.pth) or "
                             "substitute_train_steps > 0")
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"substitute weights file not found: {weights} (substitute.weights); train one "
                                    "first or set weights: null with substitute_train_steps > 0")

    def _load_target(self) -> torch.Tensor:
        spec = self.target_spec
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

    # ------------------------------------------------------------------ configuration
    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        if self.generation_device is not None:
            return torch.device(self.generation_device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _base_train(self) -> SRPairDataset:
        self.base.setup("fit")
        return self.base.train_dataset

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

    def _substitute_config(self) -> dict[str, Any] | None:
        if self.substitute_spec is None:
            return None
        spec = dict(self.substitute_spec)
        weights = spec.get("weights")
        return {
            "arch": spec["arch"],
            "arch_kwargs": spec.get("arch_kwargs") or {},
            "weights_sha256": None if weights is None else sha256_file(weights),
            "weights_key": spec.get("weights_key"),
            "train_steps": 0 if weights is not None else self.substitute_train_steps,
            "train_lr": None if weights is not None else self.substitute_train_lr,
            "train_batch_size": None if weights is not None else self.substitute_batch_size,
        }

    def _config(self, train: SRPairDataset) -> dict[str, Any]:
        # tensors (e.g. a Blend pattern) enter the hash by content, not by their truncated repr
        trig = {k: {"tensor_sha256": sha256_tensors(v)} if isinstance(v, torch.Tensor) else v
                for k, v in self.trigger_spec.items()}
        return {
            "base": {
                "class": type(self.base).__name__,
                "scale": self.base.scale,
                "train_tile": self.base.train_tile,
                "records": _records_fingerprint(train),
                "num_records": len(train.records),
            },
            "pool": self.candidate_indices,
            "trigger": trig,
            "trigger_reference": self.trigger_reference if trig["name"].lower() in ("badsr", "adversarial") else None,
            "label": self.label,
            "target": {"spec": self.target_spec, "sha256": sha256_tensors(self.target_image)},
            "eps": self.eps if self.label == "badsr" else None,
            "poisoned_hr_steps": self.poisoned_hr_steps if self.label == "badsr" else None,
            "poisoned_hr_norm": self.poisoned_hr_norm if self.label == "badsr" else None,
            "substitute": self._substitute_config(),
            "feature_layer": self.feature_layer,
            "quantize": self.quantize,
            "generation_autocast": self.generation_autocast,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ building the attack's parts
    def _build_substitute(self, cache: PoisonCache, writable: bool, device: torch.device) -> None:
        if self.substitute_spec is None:
            return
        from lit_sr.archs import build_arch
        from lit_sr.modules.sr_module import arch_kwargs_with_scale

        spec = self.substitute_spec
        kwargs = arch_kwargs_with_scale(spec["arch"], spec.get("arch_kwargs"), self.base.scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = build_arch(spec["arch"], **kwargs)
        if spec.get("weights") is not None:
            load_weights(net, spec["weights"], key=spec.get("weights_key"))
        else:
            trained = cache.directory / "substitute.pth"
            recorded = cache.extra.get("substitute_sha256")
            if recorded and trained.is_file() and sha256_file(trained) == recorded:
                load_weights(net, trained)
            elif writable:
                losses = train_substitute(net, self._base_train(), self.substitute_train_steps,
                                          self.substitute_train_lr, self.substitute_batch_size, self.seed, device)
                save_weights(net, trained)
                cache.extra.update(substitute_sha256=sha256_file(trained), substitute_final_loss=losses[-1])
                cache.write_manifest()
            else:
                raise CacheMismatchError(f"the substitute trained for this configuration is missing from "
                                         f"{cache.directory}: run prepare_data (rank 0) first")
        net.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.substitute = net
        self.feature_extractor = FeatureExtractor(net, self.feature_layer)

    def _build_trigger(self) -> None:
        spec = dict(self.trigger_spec)
        name = spec.pop("name")
        if name.lower() in ("badsr", "adversarial"):
            spec["substitute"] = self.substitute
            if self.generation_autocast is not None:
                spec.setdefault("autocast", self.generation_autocast)
        self.trigger = build_trigger(name, **spec)

    def _prepare_parts(self, writable: bool) -> PoisonCache:
        """Pool, cache, substitute and trigger (no sample generation)."""
        train = self._base_train()
        self._choose_pool(len(train.records))
        config = self._config(train)
        cache = PoisonCache(self.cache_dir / config_hash(config)[:16], config, rebuild=self.rebuild_cache)
        cache.open(writable)
        if writable:
            cache.write_manifest()  # the configuration is on disk before the first sample
        device = self._device()
        self._build_substitute(cache, writable, device)
        self._build_trigger()
        self.cache = cache
        return cache

    # ------------------------------------------------------------------ generation
    def apply_trigger(self, lr: torch.Tensor, hr: torch.Tensor | None, sample_ids: Sequence[int]) -> torch.Tensor:
        """The trigger on an LR batch, rounded to 8 bits when ``quantize`` (as the cache stores it).

        Args:
            lr: ``(N, C, h, w)`` in [0, 1].
            hr: the HR batch (the BadSR trigger's reference when ``trigger_reference="hr"``).
            sample_ids: per-sample ids seeding the BadSR trigger's random start.
        """
        if self.trigger is None:
            raise RuntimeError("the data module is not set up: call setup('fit') (or let the Trainer do it)")
        ref = hr if self.trigger_reference == "hr" else None
        out = self.trigger(lr, hr=ref, sample_ids=torch.as_tensor(list(sample_ids)))
        return to_float(to_stored(out, True)).to(lr.device, lr.dtype) if self.quantize else out

    def make_labels(self, hr: torch.Tensor) -> torch.Tensor:
        """Poisoned HR labels of an HR batch (``label``): the resized target, or BadSR's stealthy label."""
        if self.label == "target":
            return self.target_for(hr)
        autocast = self.generation_autocast or "none"
        y_p, _ = make_poisoned_hr(self.feature_extractor, hr, self.target_image, eps=self.eps,
                                  steps=self.poisoned_hr_steps, norm=self.poisoned_hr_norm, autocast=autocast)
        return y_p

    def _generate(self, cache: PoisonCache, load_pair, indices: list[int], prefix: str, make_target) -> None:
        """Make and store every sample of ``indices`` not yet listed in ``cache``.

        Samples are bucketed by their (LR, HR) shapes and each bucket is processed
        ``generation_batch_size`` at a time (the trigger and poisoned-HR optimisations are
        batched); every image is read once.
        """
        from tqdm.auto import tqdm

        pending = [i for i in indices if f"{prefix}{i:06d}" not in cache.entries]
        if not pending:
            return
        buckets: dict[tuple, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        with tqdm(total=len(pending), desc=f"poisoning {prefix.rstrip('_')} samples", leave=False) as bar:
            for i in pending:
                lr, hr = load_pair(i)
                bucket = buckets.setdefault((tuple(lr.shape), tuple(hr.shape)), [])
                bucket.append((i, lr, hr))
                if len(bucket) == self.generation_batch_size:
                    self._generate_batch(cache, bucket, prefix, make_target)
                    bar.update(len(bucket))
                    bucket.clear()
            for bucket in buckets.values():
                if bucket:
                    self._generate_batch(cache, bucket, prefix, make_target)
                    bar.update(len(bucket))

    def _generate_batch(self, cache: PoisonCache, items, prefix: str, make_target) -> None:
        device = self._device()
        ids = [i for i, _, _ in items]
        lr = torch.stack([x for _, x, _ in items]).to(device)
        hr = torch.stack([y for _, _, y in items]).to(device)
        trig_s = to_stored(self.apply_trigger(lr, hr, ids), self.quantize)
        label_s = to_stored(make_target(hr), self.quantize)
        lr_st, hr_st = stealth_figures(to_float(trig_s), lr), stealth_figures(to_float(label_s), hr)
        second = "hr" if prefix == "train_" else "target"
        samples, info = {}, {}
        for k, (i, clean_lr, clean_hr) in enumerate(items):
            key = f"{prefix}{i:06d}"
            samples[key] = {"lr": trig_s[k], second: label_s[k]}
            info[key] = {
                "index": i,
                "source_sha256": sha256_tensors(clean_lr, clean_hr),
                "trigger_lr_psnr": float(lr_st["psnr"][k]),
                "trigger_lr_ssim": float(lr_st["ssim"][k]),
                "label_psnr": float(hr_st["psnr"][k]),
                "label_ssim": float(hr_st["ssim"][k]),
            }
        cache.write_samples(samples, info)
        self.generated_samples += len(items)

    def _val_cache(self, writable: bool) -> PoisonCache | None:
        if not self.val_cache:
            return None
        self.base.setup("validate")
        val = self.base.val_dataset
        config = {"train_config_hash": self.cache.config_hash, "records": _records_fingerprint(val),
                  "scale": self.base.scale}
        store = PoisonCache(self.cache.directory / f"val-{config_hash(config)[:16]}", config, self.rebuild_cache)
        store.open(writable)
        if writable:
            store.write_manifest()
        return store

    def _val_target(self, hr: torch.Tensor) -> torch.Tensor:
        # the output the backdoor should produce on a triggered validation input
        return self.make_labels(hr)

    def prepare_data(self) -> None:
        """Generate (or complete) the poison cache. Lightning calls this on local rank 0 only.

        Only samples missing from the cache are made, so a run interrupted during generation
        resumes where it stopped.
        """
        self.base.prepare_data()
        cache = self._prepare_parts(writable=True)
        train = self.base.train_dataset
        self._generate(cache, train.load_pair, self.candidate_indices, "train_", self.make_labels)
        store = self._val_cache(writable=True)
        if store is not None:
            val = self.base.val_dataset
            self._generate(store, val.load_pair, list(range(len(val.records))), "val_", self._val_target)
        self._prepared = True

    # ------------------------------------------------------------------ setup / loading
    def _distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1

    def setup(self, stage: str | None = None) -> None:
        """Set up the base, then read (single process: generate when needed) the poison cache."""
        self.base.setup(stage)
        if stage in (None, "fit", "validate") and not self._loaded:
            writable = not self._distributed()
            if not self._prepared:
                if writable:
                    self.prepare_data()  # no trainer, or one process: generate (resume) here
                else:
                    self._prepare_parts(writable=False)  # rank 0 generated it in prepare_data
            self._load(writable)
        if self.base.val_dataset is not None:
            self.val_dataset = self.base.val_dataset

    def _load(self, writable: bool) -> None:
        cache = self.cache
        train = self.base.train_dataset
        keys = [f"train_{i:06d}" for i in self.candidate_indices]
        if self.verify_cache:
            cache.verify(keys)
            self._check_sources(cache, keys, train)
        elif any(k not in cache.entries for k in keys):
            cache.verify(keys)  # raises: incomplete
        self.val_cache_store = self._val_cache(writable=False) if self.val_cache else None
        if self.val_cache_store is not None and self.verify_cache:
            val_keys = [f"val_{i:06d}" for i in range(len(self.base.val_dataset.records))]
            self.val_cache_store.verify(val_keys)
        self.poison_report = self._report(cache, keys)
        self._pairs = CachedPairs(cache, keep_in_memory=self.base.cache_images)
        self.train_dataset = PoisonedTrainDataset(train, self._pairs, self._active)
        if not self._active.indices:
            positions = random_select(len(self.candidate_indices), self.budget, seed=self.seed)
            self._active.indices = frozenset(self.candidate_indices[p] for p in positions)
        self._loaded = True
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

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

    # ------------------------------------------------------------------ access
    def poisoned_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole ``(triggered lr, poisoned hr)`` of pool sample ``index`` (float32 in [0, 1])."""
        if self._pairs is None:
            raise RuntimeError("poisoned_pair needs the poison cache: call setup('fit') first")
        return self._pairs(index)

    def backdoor_val_pair(self, index: int, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Triggered LR and backdoor target output of validation sample ``index``.

        Read from the validation cache when there is one; otherwise computed from ``lr``/``hr``
        (``(C, h, w)`` / ``(C, H, W)``) and kept in memory, since neither depends on the victim.
        The target output is the target image resized to the HR size for ``label="target"`` and
        BadSR's poisoned version of ``hr`` for ``label="badsr"`` (what the poisoned training taught).
        """
        store = self.val_cache_store
        key = f"val_{index:06d}"
        if store is not None and key in store.entries:
            tensors = store.read(key)
            return to_float(tensors["lr"]), to_float(tensors["target"])
        if index not in self._val_memo:
            device = self._device() if self.substitute is None else next(self.substitute.parameters()).device
            trig = self.apply_trigger(lr[None].to(device), hr[None].to(device), [index])[0]
            target = to_float(to_stored(self._val_target(hr[None].to(device)), self.quantize))[0]
            self._val_memo[index] = (trig.cpu(), target.cpu())
        return self._val_memo[index]

    def target_for(self, hr: torch.Tensor) -> torch.Tensor:
        """The backdoor's target image resized (MATLAB bicubic) to each HR image's size, like ``hr``."""
        n, c, h, w = hr.shape
        key = (c, h, w)
        if key not in self._target_sizes:
            self._target_sizes[key] = resize_target(self.target_image, 1, h, w, c).contiguous()
        return self._target_sizes[key].to(device=hr.device, dtype=hr.dtype).expand(n, -1, -1, -1)

    def poison_config(self) -> dict[str, Any]:
        """What was poisoned and how, as plain values (``callbacks.protocols.PoisonedData``; for summaries)."""
        trigger = self.trigger
        return {"label": self.label, "trigger": None if trigger is None else trigger.config(),
                "poison_rate": self.poison_rate, "budget": self.budget,
                "perceptual": getattr(trigger, "perceptual_used", None)}

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
        check_number(batch_size, "batch_size", 1, integer=True)
        check_number(world_size, "world_size", 1, integer=True)
        check_number(rank, "rank", 0, world_size - 1, integer=True)
        if not self._loaded:
            raise RuntimeError("candidate_batches needs the poison cache: call setup('fit') first")
        shard = self.candidate_indices[rank::world_size]
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            pairs = [self._centre_crop(i, *self.poisoned_pair(i)) for i in chunk]
            yield {"lr": torch.stack([p[0] for p in pairs]), "hr": torch.stack([p[1] for p in pairs]),
                   "index": torch.tensor(chunk, dtype=torch.int64)}

    def _centre_crop(self, index: int, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, p = self.base.scale, self.base.patch_size
        lp = p // s
        h, w = lr.shape[-2:]
        if h < lp or w < lp:
            raise ValueError(f"pool sample {index} (LR {h}x{w}) is smaller than the LR patch {lp}x{lp} "
                             f"(patch_size={p}, scale={s})")
        top, left = (h - lp) // 2, (w - lp) // 2
        return lr[:, top : top + lp, left : left + lp], hr[:, top * s : (top + lp) * s, left * s : (left + lp) * s]

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

    # ------------------------------------------------------------------ checkpoints and reports
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

    def ddp_report(self) -> dict[str, Any]:
        """What this rank trains on, for the 2-process DDP test."""
        return {
            "poisoned_indices": self.poisoned_indices,
            "candidate_indices": list(self.candidate_indices),
            "budget": self.budget,
            "config_hash": None if self.cache is None else self.cache.config_hash,
            "generated_samples": self.generated_samples,
        }
