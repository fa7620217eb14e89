"""Read a trained run (``train.py fit``'s folder: ``config.yaml`` + ``weights.pth``) into what the
defense report needs: the network, the defender's clean subset, the evaluator's backdoor data.

**The data module is built from the run's own ``config.yaml``**, by the ``class_path`` it names
(``datamodules.PoisonedSRDataModule`` for a poisoned arm), with jsonargparse as LightningCLI
builds it for ``train.py``: the run's exact data, trigger, labels and poison cache (regenerated
when missing, from the same seeds). The library imports no data module; the config names it.
What is read from it goes through the ``PoisonedData`` protocol's members only
(``val_dataloader``, ``backdoor_val_pair``, ``target_for``) plus the base data module's training
set (``base.train_dataset``: the clean pairs, ``load_pair(i)``).

* **Clean subset** (the defender's): a seeded ``clean_fraction`` of the training records
  (:func:`~lit_sr.backdoor_defenses.data.clean_subset_indices`), each the *clean* pair (never the
  poisoned version), centre-cropped to the run's ``patch_size`` (the demo's 32 px tiles are
  whole).
* **Evaluation set** (the evaluator's): the run's validation images (at most ``max_eval_images``),
  their triggered inputs and poisoned labels from the poison cache, and the target image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lit_sr.archs import arch_kwargs_with_scale, build_arch
from lit_sr.backdoor_defenses.data import BackdoorEvalSet, CleanSubset, clean_subset_indices, stack_pairs
from lit_sr.errors import RunError
from lit_sr.io import load_weights


@dataclass
class TrainedRun:
    """One ``train.py fit`` folder, read.

    Attributes:
        name: the run's label in the report.
        directory: its folder.
        config: its ``config.yaml`` as a dict.
        model: the network with its trained weights, in eval mode.
        scale: the SR scale.
    """

    name: str
    directory: Path
    config: dict[str, Any]
    model: nn.Module
    scale: int
    datamodule: Any = field(default=None, repr=False)


def read_run_config(directory: str | Path, key: str) -> dict[str, Any]:
    path = Path(directory) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{key}: {path} does not exist (a train.py fit run folder holds config.yaml and weights.pth)")
    cfg = yaml.safe_load(path.read_text())
    for section in ("model", "data"):
        if not isinstance(cfg, dict) or not isinstance(cfg.get(section), dict):
            raise RunError(f"{key}: {path} has no '{section}' section")
    return cfg


def build_run_model(cfg: dict[str, Any], weights: Path, key: str) -> tuple[nn.Module, int]:
    """The run's network (``model.init_args``: ``arch``, ``arch_kwargs``, ``scale``) with ``weights``."""
    init = cfg["model"].get("init_args", {})
    if "arch" not in init or "scale" not in init:
        raise RunError(f"{key}: config.yaml's model.init_args needs 'arch' and 'scale' (an SRModule run)")
    scale = int(init["scale"])
    net = build_arch(init["arch"], **arch_kwargs_with_scale(init["arch"], init.get("arch_kwargs") or {}, scale))
    if not weights.is_file():
        raise RunError(f"{key}: {weights} does not exist: the run has not finished (train.py writes it at the end)")
    load_weights(net, weights)
    return net.eval(), scale


def load_run(name: str, directory: str | Path, key: str, device: torch.device | str = "cpu",
             weights: str = "weights.pth") -> TrainedRun:
    """Read the run folder ``directory`` (``key``: its config key, for errors)."""
    directory = Path(directory)
    cfg = read_run_config(directory, key)
    model, scale = build_run_model(cfg, directory / weights, key)
    return TrainedRun(name, directory, cfg, model.to(device), scale)


def build_datamodule(run: TrainedRun) -> Any:
    """The run's data module from its ``config.yaml`` (jsonargparse, as LightningCLI), set up for ``fit``."""
    if run.datamodule is None:
        import lightning as L
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--data", type=L.LightningDataModule)
        try:
            namespace = parser.parse_object({"data": run.config["data"]})
            dm = parser.instantiate_classes(namespace).data
        except Exception as exc:  # jsonargparse wraps what the data module's constructor raised
            raise RunError(f"{run.name}: the data section of {run.directory / 'config.yaml'} does not build: {exc}") from exc
        dm.prepare_data()
        dm.setup("fit")
        run.datamodule = dm
    return run.datamodule


def _base_train_set(dm: Any, run: TrainedRun) -> Any:
    base = getattr(dm, "base", dm)
    dataset = getattr(base, "train_dataset", None)
    if dataset is None or not hasattr(dataset, "load_pair") or not hasattr(dataset, "records"):
        raise RunError(f"{run.name}: its data module has no training set with load_pair/records "
                       "(an SRDataModule, or a PoisonedSRDataModule around one)")
    return dataset


def _centre(lr: torch.Tensor, hr: torch.Tensor, lr_size: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = lr.shape[-2:]
    size = min(lr_size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return (lr[:, top : top + size, left : left + size],
            hr[:, top * scale : (top + size) * scale, left * scale : (left + size) * scale])


def clean_subset(run: TrainedRun, fraction: float, seed: int, patch_size: int | None = None) -> CleanSubset:
    """The defender's clean pairs from ``run``'s training set (see the module docstring)."""
    dm = build_datamodule(run)
    dataset = _base_train_set(dm, run)
    num_train = len(dataset.records)
    indices = clean_subset_indices(num_train, fraction, seed)
    if patch_size is None:
        patch_size = getattr(getattr(dm, "base", dm), "patch_size", None)
    pairs = []
    for i in indices:
        lr, hr = dataset.load_pair(i)
        if patch_size is not None:
            lr, hr = _centre(lr, hr, int(patch_size) // run.scale, run.scale)
        pairs.append((lr, hr))
    lr, hr = stack_pairs(pairs, f"{run.name}: the clean subset")
    return CleanSubset(lr, hr, tuple(indices), fraction, num_train)


def backdoor_eval_set(run: TrainedRun, max_images: int | None = None, crop: int | None = None) -> BackdoorEvalSet:
    """The evaluator's data of the poisoned ``run``: validation images, triggered inputs, labels, target.

    ``crop`` (HR pixels) centre-crops every image first (validation images of different sizes);
    the triggered input is cropped at the same place.
    """
    dm = build_datamodule(run)
    if not hasattr(dm, "backdoor_val_pair"):
        raise RunError(f"{run.name}: its data module ({type(dm).__name__}) is not poisoned: no trigger to evaluate")
    rows = []
    for batch in dm.val_dataloader():
        for i, lr, hr in zip(batch["index"], batch["lr"], batch["hr"]):
            trig, label = dm.backdoor_val_pair(int(i), lr, hr)
            target = dm.target_for(hr.unsqueeze(0), index=[int(i)])[0]
            if crop is not None:
                lr_c, hr_c = _centre(lr, hr, crop // run.scale, run.scale)
                trig, label = _centre(trig, label, crop // run.scale, run.scale)
                _, target = _centre(lr, target, crop // run.scale, run.scale)
                lr, hr = lr_c, hr_c
            rows.append((lr, hr, trig, label, target))
            if max_images is not None and len(rows) >= max_images:
                break
        if max_images is not None and len(rows) >= max_images:
            break
    lr, hr = stack_pairs([(r[0], r[1]) for r in rows], f"{run.name}: the validation images")
    trig, label = stack_pairs([(r[2], r[3]) for r in rows], f"{run.name}: the triggered validation images")
    target = torch.stack([r[4] for r in rows]).float()
    return BackdoorEvalSet(lr, hr, trig, label, target)
