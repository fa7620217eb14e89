"""A poisoned training set as plain image folders other tools read (BasicSR's paired folders).

:func:`export_poisoned_set` writes every training record of a poisoned data module, the active
poisoned samples replaced by their cached pairs (triggered LR, poisoned HR), as::

    <out_dir>/hr/000003_coffee.png          HR (poisoned HR for a poisoned sample)
    <out_dir>/lr_x4/000003_coffee.png       LR partner, same name (BasicSR ``filename_tmpl: '{}'``)
    <out_dir>/manifest.json                 what was poisoned and how (see below)

The same names in both folders is BasicSR's ``PairedImageDataset`` default; lit-sr's
``datamodules.DIV2KDataModule(train_hr=<out>/hr, train_lr=<out>/lr_x4)`` reads the same folders
(its LR partner is ``<name>x4.png`` or ``<name>.png``). Names start with the record index,
zero-padded, so a sorted listing gives the records in their original order.

**8-bit.** PNG holds 8-bit pixels. The poison cache stores 8-bit pixels by default
(``quantize: true``), and clean 8-bit photographs are 8-bit already: then the export is exact.
A cache made with ``quantize: false`` holds float pixels: the export rounds them to the nearest
8-bit value (``round(255 x) / 255``, as :func:`lit_sr.io.write_image` does) and the manifest says
``"rounded_to_8bit": true``; a run trained from the folders then sees the rounded pairs.

The manifest: ``format``, ``scale``, ``hr_dir``, ``lr_dir``, ``num_records``, ``poisoned_indices``,
``trigger`` (every setting), ``label`` and ``label_settings``, ``eps`` (BadSR's poisoned-HR bound,
``None`` for other labels), ``target``, ``substitute`` (its settings and ``sha256``), the cache's
``config_hash``, ``rounded_to_8bit``, and per record ``{index, name, poisoned, hr_sha256,
lr_sha256}`` (SHA-256 of the written files).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from lit_sr.io import atomic_write, sha256_file, write_image

FORMAT = "lit-sr poisoned set v1"
MANIFEST = "manifest.json"

Pair = tuple[torch.Tensor, torch.Tensor]


class PoisonedSource(Protocol):
    """What :func:`export_poisoned` reads from a set-up poisoned data module
    (``datamodules.PoisonedSRDataModule`` after ``setup("fit")``)."""

    base: Any  # .scale and .train_dataset (.records with .name, .load_pair(i))

    @property
    def poisoned_indices(self) -> list[int]: ...

    def poisoned_pair(self, index: int) -> Pair: ...

    def poison_config(self) -> dict[str, Any]: ...

    def set_poisoned_indices(self, indices: Sequence[int]) -> None: ...


def _is_8bit(x: torch.Tensor) -> bool:
    return x.dtype == torch.uint8 or bool(torch.equal((x.float() * 255).round() / 255, x.float()))


def export_poisoned_set(
    out_dir: str | Path,
    names: Sequence[str],
    scale: int,
    load_clean: Callable[[int], Pair],
    load_poisoned: Callable[[int], Pair],
    poisoned_indices: Sequence[int],
    info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write records ``0 .. len(names) - 1`` as HR/LR PNG folders and a manifest; returns the manifest's path.

    Args:
        out_dir: the folder to make (refused when it holds a manifest, unless ``overwrite``).
        names: each record's name (its file stem); the files are ``<index:06d>_<name>.png``.
        scale: the SR scale (the LR folder is ``lr_x<scale>``; sizes are checked against it).
        load_clean: ``i -> (lr, hr)``, float in [0, 1], whole images, for a clean record.
        load_poisoned: ``i -> (triggered lr, poisoned hr)`` for a record in ``poisoned_indices``.
        poisoned_indices: the poisoned records.
        info: what goes in the manifest besides the records (trigger, label, eps, substitute...).
        overwrite: replace a previous export in ``out_dir``.

    The manifest is written last (atomically): a folder without one is an unfinished export.
    """
    out = Path(out_dir)
    poisoned = sorted({int(i) for i in poisoned_indices})
    bad = [i for i in poisoned if not 0 <= i < len(names)]
    if bad:
        raise ValueError(f"poisoned_indices {bad[:5]} are outside the {len(names)} records")
    if (out / MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds an export ({out / MANIFEST}); pass overwrite=True "
                                  f"(--overwrite) to replace it")
        (out / MANIFEST).unlink()
    hr_dir, lr_dir = out / "hr", out / f"lr_x{scale}"
    for folder in (hr_dir, lr_dir):
        if folder.exists():
            shutil.rmtree(folder)
    records, rounded = [], False
    chosen = set(poisoned)
    for i, name in enumerate(names):
        lr, hr = load_poisoned(i) if i in chosen else load_clean(i)
        if hr.shape[-2:] != (lr.shape[-2] * scale, lr.shape[-1] * scale):
            raise ValueError(f"record {i} ({name}): LR {tuple(lr.shape)} and HR {tuple(hr.shape)} do not "
                             f"match scale {scale}")
        rounded = rounded or not (_is_8bit(lr) and _is_8bit(hr))
        stem = f"{i:06d}_{name}"
        hr_path = write_image(hr.float().clamp(0, 1), hr_dir / f"{stem}.png")
        lr_path = write_image(lr.float().clamp(0, 1), lr_dir / f"{stem}.png")
        records.append({"index": i, "name": stem, "poisoned": i in chosen,
                        "hr_sha256": sha256_file(hr_path), "lr_sha256": sha256_file(lr_path)})
    manifest = {"format": FORMAT, "scale": scale, "hr_dir": hr_dir.name, "lr_dir": lr_dir.name,
                "num_records": len(names), "poisoned_indices": poisoned, "rounded_to_8bit": rounded,
                **dict(info or {}), "records": records}
    with atomic_write(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, default=str))
    return out / MANIFEST


def manifest_info(config: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's description of the poisoning from a data module's ``poison_config()``."""
    label_settings = dict(config.get("label_settings") or {})
    substitute = config.get("substitute")
    return {
        "trigger": config.get("trigger"),
        "label": config.get("label"),
        "label_settings": label_settings,
        "eps": label_settings.get("eps"),
        "target": config.get("target"),
        "substitute": substitute,
        "substitute_sha256": None if not substitute else substitute.get("sha256"),
        "poison_rate": config.get("poison_rate"),
        "budget": config.get("budget"),
        "quantize": config.get("quantize"),
        "seed": config.get("seed"),
        "config_hash": config.get("config_hash"),
    }


def export_poisoned(datamodule: PoisonedSource, out_dir: str | Path, indices: Sequence[int] | None = None,
                    overwrite: bool = False) -> Path:
    """:func:`export_poisoned_set` of a set-up poisoned data module's training set.

    Args:
        datamodule: e.g. ``datamodules.PoisonedSRDataModule`` after ``setup("fit")``.
        out_dir: the export folder.
        indices: the poisoned records to export (a run's final active set, e.g. the
            ``config.poisoned_indices`` of its ``backdoor_summary.json``, after a selection
            callback changed it); ``None``: the data module's active set. Each must be in the pool.
        overwrite: replace a previous export.
    """
    train = datamodule.base.train_dataset
    if train is None:
        raise RuntimeError("export_poisoned needs a set-up data module: call datamodule.setup('fit') first")
    if indices is not None:
        datamodule.set_poisoned_indices(list(indices))  # checks the pool and the budget, names what is wrong
    return export_poisoned_set(out_dir, [r.name for r in train.records], int(datamodule.base.scale),
                               train.load_pair, datamodule.poisoned_pair, datamodule.poisoned_indices,
                               manifest_info(datamodule.poison_config()), overwrite=overwrite)
