"""Adversarial examples kept as files: :func:`save_adversarial` (torchattacks' ``atk.save`` for SR).

For every image a loader yields, the attack is run and the adversarial input is written as a
lossless PNG: the attacked LR (``<out_dir>/lr/<name>.png``) for an attack on the input, the
attacked reference (``<out_dir>/ref/<name>.png``) for :class:`~lit_sr.attacks.refsr_adv.RefSRAdv`.
``<out_dir>/metrics.csv`` holds one row per image: ``name``, ``index``, ``attack``, ``eps``,
``side``, ``linf_255`` (the largest pixel change of the written file, in 8-bit steps) and the
attack's metrics.

**8-bit.** A PNG holds 8-bit pixels, so the adversarial image is rounded to the nearest 8-bit
value *before* it is measured: the CSV describes the file, not the float tensor the attack
returned. For an 8-bit clean image and an ``eps`` that is a whole number of 8-bit steps (8/255),
the rounded image stays within ``eps`` (both ends of the ball lie on the 8-bit grid); otherwise
``linf_255`` shows by how much rounding moved it (at most half a step past ``eps``).
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lit_sr.attacks.base import Attack
from lit_sr.attacks.evaluation import attack_metrics
from lit_sr.attacks.partial import infer_scale
from lit_sr.attacks.refsr_adv import RefSRAdv
from lit_sr.attacks.refsr_spec import refsr_predict
from lit_sr.io import atomic_write, write_image
from lit_sr.metrics import psnr
from lit_sr.runtime import model_device


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """The nearest 8-bit values of a [0, 1] image, as float (what a PNG file keeps)."""
    return (x.float().clamp(0, 1) * 255).round() / 255


def _names(batch: Mapping[str, Any], n: int, seen: set[str]) -> list[str]:
    paths = batch.get("path")
    index = batch.get("index")
    names = []
    for k in range(n):
        if paths is not None:
            name = Path(str(paths[k])).stem
        elif index is not None:
            name = f"{int(index[k]):06d}"
        else:
            name = f"{len(seen):06d}"
        if name in seen:  # two images of one stem (two sets): keep both
            name = f"{name}_{len(seen):06d}"
        seen.add(name)
        names.append(name)
    return names


@torch.no_grad()
def _refsr_metrics(model, lr, ref, adv, hr, scale: int) -> dict[str, torch.Tensor]:
    sr, sr_adv = refsr_predict(model, lr, ref), refsr_predict(model, lr, adv)
    out = {"ref_psnr": psnr(adv, ref), "sr_psnr": psnr(sr_adv, sr, crop_border=scale, y_channel=True)}
    if hr is not None:
        out["hr_psnr"] = psnr(sr_adv, hr, crop_border=scale, y_channel=True)
        out["clean_hr_psnr"] = psnr(sr, hr, crop_border=scale, y_channel=True)
    return out


class AdversarialSink:
    """Writes adversarial images as lossless PNG into ``<out_dir>/<side>/`` and their rows into ``metrics.csv``.

    :func:`save_adversarial` and the robustness report's ``save_adversarial`` option use it: call
    :meth:`add` per batch, then :meth:`close` (writes the CSV atomically; a folder without one is
    unfinished).
    """

    def __init__(self, out_dir: str | Path, side: str = "lr"):
        self.out = Path(out_dir)
        self.side = side
        self.rows: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def add(self, batch: Mapping[str, Any], adv: torch.Tensor, clean: torch.Tensor, attack: str, eps: float,
            metrics: Mapping[str, torch.Tensor]) -> None:
        """One batch: ``adv`` is rounded to 8 bits here (what the PNG keeps); ``batch`` gives the names."""
        adv = quantize_8bit(adv)
        linf = ((adv - clean.float()).abs().flatten(1).amax(1) * 255).cpu()
        index = batch.get("index")
        for k, name in enumerate(_names(batch, adv.shape[0], self._seen)):
            write_image(adv[k], self.out / self.side / f"{name}.png")
            self.rows.append({"name": name, "index": "" if index is None else int(index[k]), "attack": attack,
                              "eps": eps, "side": self.side, "linf_255": round(float(linf[k]), 3),
                              **{key: float(v[k]) for key, v in metrics.items()}})

    def close(self) -> Path:
        if not self.rows:
            raise ValueError(f"{self.out}: no adversarial image to write (the loader yielded no batch)")
        fields = list(dict.fromkeys(key for row in self.rows for key in row))
        with atomic_write(self.out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        return self.out / "metrics.csv"


def save_adversarial(attack: Attack, loader: Iterable[Mapping[str, Any]], out_dir: str | Path,
                     scale: int | None = None) -> Path:
    """Attack every batch of ``loader`` and write the adversarial images and ``metrics.csv``; returns the CSV path.

    Args:
        attack: a built attack (``IFGSM(model, eps=8/255)``, ``PGD``, ``SquareAttack``,
            ``RefSRAdv``...). Attacks that take ``hr`` get the batch's ``hr``.
        loader: dict batches ``{"lr", "hr"?, "ref"?, "index"?, "path"?}`` (lit-sr's data modules'
            loaders); file names come from ``path`` (its stem), else ``index``.
        out_dir: the folder (``lr/`` or ``ref/``, ``metrics.csv``).
        scale: the SR scale (the SR-side border crop); ``None`` reads it from the model's output.

    Metrics (PSNR on 8-bit values, SR side on Y with ``crop_border = scale``): for an LR attack
    :func:`~lit_sr.attacks.attack_metrics` (``lr_psnr``, ``sr_psnr``, ``sr_ssim``, ``hr_psnr``...);
    for a reference attack ``ref_psnr``, ``sr_psnr``, ``hr_psnr``, ``clean_hr_psnr``.
    """
    on_ref = isinstance(attack, RefSRAdv)
    sink = AdversarialSink(out_dir, "ref" if on_ref else "lr")
    takes_hr = "hr" in inspect.signature(attack.forward).parameters
    device = model_device(attack.model)
    for batch in loader:
        lr = batch["lr"].to(device)
        hr = batch["hr"].to(device) if batch.get("hr") is not None else None
        if on_ref:
            ref = batch["ref"].to(device)
            adv = quantize_8bit(attack(lr, ref))
            if scale is None:
                scale = infer_scale(lr.shape, refsr_predict(attack.model, lr[:1], ref[:1]).shape)
            metrics = _refsr_metrics(attack.model, lr, ref, adv, hr, scale)
            clean = ref
        else:
            adv = quantize_8bit(attack(lr, hr=hr) if takes_hr and hr is not None else attack(lr))
            if scale is None:
                with torch.no_grad():
                    scale = infer_scale(lr.shape, attack.model(lr[:1]).shape)
            metrics = attack_metrics(attack.model, lr, adv, hr=hr, crop_border=scale, y_channel=True)
            clean = lr
        sink.add(batch, adv, clean, attack.name, attack.eps, metrics)
    return sink.close()
