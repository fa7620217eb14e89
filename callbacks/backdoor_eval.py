"""Backdoor evaluation during training and the end-of-run BadSR summary table.

* :class:`BackdoorEvalCallback`: at validation, runs the model on clean and triggered validation
  inputs and logs the attack success rates, the clean quality and the stealth figures.
* :class:`BackdoorSummary`: at the end of ``fit``, compares the backdoored model with a clean model
  trained separately and with bicubic, prints the table and writes it as JSON.

Both read the poisoned data module through :class:`callbacks.protocols.PoisonedData`
(:class:`datamodules.PoisonedSRDataModule` is one): its cached triggered validation inputs and
backdoor target outputs (``backdoor_val_pair``), its target image (``target_for``), its
substitute's feature extractor (used on the device where the data module placed it, never moved),
its ``poison_report`` and ``poison_config()``; and the module through
:class:`callbacks.protocols.SRModel` (``scale``, ``super_resolve``).

**The success metrics** (:mod:`lit_sr.poison.asr`, where each is defined; counts, not rates, are
summed over batches and DDP ranks, then divided once; a rate with nothing included is ``None`` in
the JSON, "n/a (0 included)" in the tables, and not logged -- never NaN):

* ``backdoor/asr_pixel``: the triggered output is within ``PSNR >= psnr_thr`` dB **and**
  ``SSIM >= ssim_thr`` (RGB, 8-bit) of the **target image** ``y_t*`` resized to the output size,
  for every label kind (for BadSR's stealthy label this is the attack's goal, which its
  ``eps``-bounded labels may not reach). Images whose *clean* output already meets it are left
  out of both counts.
* ``backdoor/attainment_mean`` and ``backdoor/attainment_asr``: label attainment
  ``a = <f(x~) - f(x), y_p - y> / ||y_p - y||^2`` per image, with ``y_p`` the poisoned label the
  training pairs taught (the data module's backdoor target output), and the share of images with
  ``a >= attainment_thr``: what a stealthy label can register, since the SR error shared by both
  outputs cancels.
* ``backdoor/feature_shift_ratio`` (with a substitute): the trigger's shift of the output towards
  the target's features divided by the poisoned labels' own shift (``backdoor/feature_shift`` and
  ``backdoor/label_feature_shift``, the means of :func:`lit_sr.poison.asr.feature_shift`).
* ``backdoor/asr_feature`` (with a substitute): in the substitute's features the triggered output
  is closer to the target image than to the clean output; images whose clean output is already
  closer to the target than to the HR are left out. (Its ceiling is low for ``eps``-bounded
  labels; the ratio above is the informative figure.)

Other figures: ``backdoor/clean_psnr_y`` (clean inputs vs HR, Y channel, ``crop_border = scale``),
``backdoor/triggered_psnr_y`` (triggered inputs vs HR), ``backdoor/target_psnr`` (triggered output
vs the target image, RGB: how close the backdoor gets even below the threshold),
``backdoor/val_trigger_lr_psnr`` / ``_ssim`` (triggered vs clean validation LR), and the training
pool's stealth from ``poison_report``: ``backdoor/poisoned_hr_psnr`` / ``_ssim`` (poisoned vs clean
HR) and ``backdoor/trigger_lr_psnr`` / ``_ssim`` (triggered vs clean LR).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from callbacks.backdoor_pictures import backdoor_grid, grid_row, plot_history
from callbacks.poison_selection import ReportsSelection, SelectionResults
from callbacks.protocols import PoisonedData, SRModel, require
from callbacks.summary import training_record
from lit_sr.archs import arch_kwargs_with_scale, build_arch
from lit_sr.image_logging import log_image, logger_hints
from lit_sr.io import atomic_write, load_weights, read_image
from lit_sr.metrics import psnr, ssim
from lit_sr.ops import imresize
from lit_sr.poison.asr import (
    PSNR_THR,
    SSIM_THR,
    Rate,
    SuccessTally,
    feature_asr,
    label_attainment,
    own_effect,
)
from lit_sr.runtime import model_device
from lit_sr.tables import fmt, text_table
from lit_sr.validation import check_number

MEANS = ("clean_psnr_y", "triggered_psnr_y", "target_psnr", "val_trigger_lr_psnr", "val_trigger_lr_ssim")
FEATURE_ASR_FIELDS = ("feature_success", "feature_included")
# the success metrics drawn over training (<log_dir>/backdoor/success.png)
HISTORY_KEYS = ("asr_pixel", "attainment_asr", "attainment_mean", "feature_shift_ratio", "asr_feature")


def check_parts(trainer: L.Trainer, pl_module: L.LightningModule, who: str) -> None:
    """Raise ``TypeError`` unless the data module is a ``PoisonedData`` and the module an ``SRModel``."""
    require(trainer.datamodule, PoisonedData, who, "trainer.datamodule")
    require(pl_module, SRModel, who, "the LightningModule")


def lr_stealth(triggered_lr: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR and SSIM (RGB, 8-bit) of the triggered LR against the clean LR; SSIM is NaN
    (left out of its mean) under 11x11 pixels, where the SSIM window does not fit."""
    p = psnr(triggered_lr, lr).clamp(max=100)
    s = ssim(triggered_lr, lr) if min(lr.shape[-2:]) >= 11 else torch.full_like(p, math.nan)
    return {"psnr": p, "ssim": s}


class BackdoorTally:
    """The backdoor figures of one evaluation: :class:`lit_sr.poison.asr.SuccessTally` (pixel ASR
    against the target image, label attainment, feature shifts, the means of :data:`MEANS`) plus
    the feature ASR's counts; summed over batches and DDP ranks, then divided once.

    Args:
        psnr_thr: pixel-ASR PSNR threshold (dB).
        ssim_thr: pixel-ASR SSIM threshold.
        scale: the SR scale (``crop_border`` of the Y-channel PSNR).
        attainment_thr: attainment-ASR threshold.
        keep_per_image: also keep each image's clean PSNR-Y and label attainment (``None`` where
            undefined), in order (one process only: the end-of-run summary's paired comparisons,
            e.g. the backdoor's own effect over the clean model; not reduced over ranks).
    """

    def __init__(self, psnr_thr: float, ssim_thr: float, scale: int, attainment_thr: float = 0.5,
                 keep_per_image: bool = False):
        self.success = SuccessTally(psnr_thr, ssim_thr, attainment_thr, means=MEANS)
        self.scale = scale
        self.feature = dict.fromkeys(FEATURE_ASR_FIELDS, 0.0)
        self.per_image: list[float] | None = [] if keep_per_image else None
        self.attainment_per_image: list[float | None] = []

    @property
    def count(self) -> int:
        return int(self.success.sums["num_images"])

    @torch.no_grad()
    def update(
        self,
        lr: torch.Tensor,
        hr: torch.Tensor,
        triggered_lr: torch.Tensor,
        clean_sr: torch.Tensor,
        triggered_sr: torch.Tensor,
        target_out: torch.Tensor,
        target_image: torch.Tensor,
        feature_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        """Add one batch (all ``(N, C, H, W)`` in [0, 1]; ``target_out`` is the poisoned label of
        these images, ``target_image`` the target image resized to ``hr``)."""
        clean_y = psnr(clean_sr, hr, self.scale, y_channel=True)
        st = lr_stealth(triggered_lr, lr)
        means = {"clean_psnr_y": clean_y, "triggered_psnr_y": psnr(triggered_sr, hr, self.scale, y_channel=True),
                 "target_psnr": psnr(triggered_sr, target_image).clamp(max=100),
                 "val_trigger_lr_psnr": st["psnr"], "val_trigger_lr_ssim": st["ssim"]}
        self.success.update(clean_sr, triggered_sr, hr, target_out, target_image, feature_fn, means)
        if feature_fn is not None:
            feat = feature_asr(feature_fn, triggered_sr, target_image, clean_sr, hr)
            self.feature["feature_success"] += feat.num_success
            self.feature["feature_included"] += feat.num_included
        if self.per_image is not None:
            self.per_image.extend(float(v) for v in clean_y.cpu())
            a = label_attainment(clean_sr, triggered_sr, hr, target_out).cpu().tolist()
            self.attainment_per_image.extend(v if math.isfinite(v) else None for v in a)

    def as_tensor(self, device: torch.device) -> torch.Tensor:
        extra = torch.tensor([self.feature[k] for k in FEATURE_ASR_FIELDS], dtype=torch.float64, device=device)
        return torch.cat([self.success.as_tensor(device), extra])

    def load_tensor(self, t: torch.Tensor) -> None:
        n = len(self.success.fields)
        self.success.load_tensor(t[:n])
        self.feature = {k: float(v) for k, v in zip(FEATURE_ASR_FIELDS, t[n:].tolist())}

    def metrics(self, with_feature: bool) -> dict[str, float | None]:
        """Rates (with their ``_success`` / ``_included`` counts) and means; ``None``, never NaN,
        where nothing was counted (see :class:`lit_sr.poison.asr.SuccessTally`)."""
        flat = self.success.flat()
        out = self.success.figures()
        if with_feature:
            fs, fi = self.feature["feature_success"], self.feature["feature_included"]
            out.update(asr_feature=fs / fi if fi else None, asr_feature_success=fs, asr_feature_included=fi,
                       feature_shift=flat["feature_shift"], label_feature_shift=flat["label_feature_shift"],
                       feature_shift_ratio=flat["feature_shift_ratio"])
        if self.per_image is not None:
            out["clean_psnr_y_per_image"] = list(self.per_image)
            out["attainment_per_image"] = list(self.attainment_per_image)
        return out


def backdoor_inputs(datamodule, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Triggered LR and target outputs of a validation batch, from the data module's cache."""
    pairs = [datamodule.backdoor_val_pair(int(i), lr, hr)
             for i, lr, hr in zip(batch["index"], batch["lr"], batch["hr"])]
    return (torch.stack([p[0] for p in pairs]).to(device, batch["lr"].dtype),
            torch.stack([p[1] for p in pairs]).to(device, batch["hr"].dtype))


def feature_function(datamodule: PoisonedData) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The substitute's features of a batch, or ``None`` without a substitute.

    The extractor runs where the data module placed it (it is the data module's, and may be
    shared with its poison generation): the batch goes to the extractor's device and the features
    come back to the batch's device.
    """
    extractor = datamodule.feature_extractor
    if extractor is None:
        return None
    device = model_device(extractor, torch.device("cpu"))
    return lambda x: extractor(x.to(device).float()).to(x.device)


class BackdoorEvalCallback(L.Callback):
    """Logs backdoor success rates, clean quality and stealth at validation (see the module docstring).

    Every ``every_n_epochs`` validation epochs (not during the sanity check), for each validation
    batch: the clean output (the module's ``validation_step`` output ``"sr"`` when it returns one,
    else ``super_resolve``), the output on the triggered input, the poisoned label and the target
    image. The triggered inputs and poisoned labels come from the data module's validation cache
    (generated once, on rank 0, in ``prepare_data``; they do not depend on the victim, so they are
    reused every epoch); without that cache they are computed on first use and kept in memory. The
    BadSR adversarial trigger optimises per image: that runs outside ``torch.inference_mode``.

    Counts are summed over batches and reduced over DDP ranks (``trainer.strategy.reduce``) before
    dividing, so every rank logs the same values; a rate with nothing included is not logged (it
    would be NaN). (Lightning's distributed validation sampler may repeat a few images to even out
    the shards; they count twice.)

    **Pictures.** An image grid of the first ``num_grid_images`` validation images, columns
    ``clean LR | triggered LR | clean SR | triggered SR | target | |SR(x~) - SR(x)| x k`` (labelled in
    a header strip; ``k = diff_gain``, also in the TensorBoard caption), goes to TensorBoard
    (``backdoor/grid``) and, with ``save_png``, to ``<log_dir>/backdoor/epoch<E>.png``. The success
    metrics of every evaluation so far are drawn against the training step in
    ``<log_dir>/backdoor/success.png`` (and kept in ``success.json`` beside it), on rank 0; the
    same plot goes to TensorBoard as ``backdoor/success``.

    Args:
        every_n_epochs: evaluate at every this-many-th validation epoch.
        psnr_thr: pixel-ASR PSNR threshold in dB. Default 20.
        ssim_thr: pixel-ASR SSIM threshold. Default 0.7.
        attainment_thr: attainment-ASR threshold (:func:`lit_sr.poison.asr.attainment_asr`). Default 0.5.
        max_images: evaluate at most this many validation images per rank (``None``: all).
        num_grid_images: images in the grid (0: no grid).
        diff_gain: the amplification ``k`` of the difference panel. Default 8.
        save_png: also write the grid and the success plot as PNG.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        psnr_thr: float = PSNR_THR,
        ssim_thr: float = SSIM_THR,
        attainment_thr: float = 0.5,
        max_images: int | None = None,
        num_grid_images: int = 2,
        diff_gain: float = 8.0,
        save_png: bool = True,
    ):
        super().__init__()
        check_number(every_n_epochs, "every_n_epochs", 1, integer=True)
        check_number(psnr_thr, "psnr_thr")
        check_number(ssim_thr, "ssim_thr", -1.0, 1.0)
        check_number(attainment_thr, "attainment_thr")
        if max_images is not None:
            check_number(max_images, "max_images", 1, integer=True)
        check_number(num_grid_images, "num_grid_images", 0, integer=True)
        check_number(diff_gain, "diff_gain", 0, low_inclusive=False)
        self.every_n_epochs, self.psnr_thr, self.ssim_thr = every_n_epochs, float(psnr_thr), float(ssim_thr)
        self.attainment_thr, self.diff_gain = float(attainment_thr), float(diff_gain)
        self.max_images, self.num_grid_images, self.save_png = max_images, num_grid_images, save_png
        self.last_metrics: dict[str, float | None] = {}
        self.history: list[dict[str, float | None]] = []
        self._tally: BackdoorTally | None = None
        self._rows: list[list[torch.Tensor]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_parts(trainer, pl_module, type(self).__name__)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP: read it here, where every rank is.
        self._log_dir = trainer.log_dir

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tally, self._rows = None, []
        if self._is_due(trainer):
            check_parts(trainer, pl_module, type(self).__name__)
            self._tally = BackdoorTally(self.psnr_thr, self.ssim_thr, pl_module.scale, self.attainment_thr)

    def _is_due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return trainer.current_epoch % self.every_n_epochs == 0 or bool(trainer.should_stop) or (
            trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        tally = self._tally
        if tally is None or (self.max_images is not None and tally.count >= self.max_images):
            return
        dm = trainer.datamodule
        device = pl_module.device
        sr_fn = pl_module.super_resolve
        lr, hr = batch["lr"], batch["hr"]
        clean_sr = outputs["sr"] if isinstance(outputs, dict) and "sr" in outputs else sr_fn(lr)
        triggered_lr, target_out = backdoor_inputs(dm, batch, device)
        with torch.no_grad():
            triggered_sr = sr_fn(triggered_lr).float().clamp(0, 1)
        clean_sr = clean_sr.float().clamp(0, 1)
        target_image = dm.target_for(hr.float(), index=batch["index"])
        tally.update(lr.float(), hr.float(), triggered_lr.float(), clean_sr, triggered_sr, target_out.float(),
                     target_image, feature_function(dm))
        if trainer.is_global_zero and len(self._rows) < self.num_grid_images:
            for k in range(min(lr.shape[0], self.num_grid_images - len(self._rows))):
                self._rows.append(grid_row(lr[k], triggered_lr[k], clean_sr[k], triggered_sr[k], target_image[k],
                                           pl_module.scale, self.diff_gain))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tally = self._tally
        if tally is None:
            return
        reduced = trainer.strategy.reduce(tally.as_tensor(pl_module.device), reduce_op="sum")
        tally.load_tensor(reduced.cpu())
        dm = trainer.datamodule
        metrics = tally.metrics(with_feature=dm.feature_extractor is not None)
        metrics.update({k: float(v) for k, v in dm.poison_report.items() if k != "num_candidates"})
        self.last_metrics = metrics
        for name, value in metrics.items():
            if value is None:  # nothing included: no number to log (never NaN); identical on every rank
                continue
            # identical on every rank after the reduction; sync_dist keeps Lightning's DDP bookkeeping quiet
            pl_module.log(f"backdoor/{name}", float(value), on_step=False, on_epoch=True, sync_dist=True)
        if trainer.is_global_zero:
            self.history.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                 **{k: metrics.get(k) for k in HISTORY_KEYS}})
            self._save_history(trainer)
            if self._rows:
                self._log_grid(trainer, backdoor_grid(self._rows, self.diff_gain))

    def _save_history(self, trainer: L.Trainer) -> None:
        log_dir = getattr(self, "_log_dir", None)
        if not (self.save_png and log_dir):
            return
        folder = Path(log_dir) / "backdoor"
        with atomic_write(folder / "success.json") as tmp:
            tmp.write_text(json.dumps(self.history, indent=2))
        png = plot_history(self.history, HISTORY_KEYS, folder / "success.png")
        # the same plot in the loggers, beside the grid (the scalars are there too, one chart each)
        log_image(trainer.loggers, "backdoor/success", read_image(png), trainer.global_step)

    def _log_grid(self, trainer: L.Trainer, grid: torch.Tensor) -> None:
        caption = ("columns: clean LR | triggered LR | clean SR | triggered SR | target image | "
                   f"|SR(x~) - SR(x)| x {self.diff_gain:g} (the trigger's effect on the output, amplified)")
        log_dir = getattr(self, "_log_dir", None)
        png = Path(log_dir) / "backdoor" / f"epoch{trainer.current_epoch:04d}.png" if self.save_png and log_dir else None
        log_image(trainer.loggers, "backdoor/grid", grid, trainer.global_step, png=png, caption=caption)


# --------------------------------------------------------------------------- end-of-run summary


def no_selection_line(configured: bool) -> str:
    """The summary's line when no selection ran: a selection callback may be there and not have fired yet."""
    if configured:
        return ("selection: none ran yet (the selection callback is configured but had not reached a selection "
                "epoch when training ended: see its every_n_epochs / select_every); the initial random set was kept")
    return "selection: none ran (no PoisonSelectionCallback; the initial random set was kept)"


def find_selection_results(trainer: L.Trainer) -> SelectionResults | None:
    """The ``SelectionResults`` of the one callback that reports selections (``ReportsSelection``), if any."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, ReportsSelection)]
    if len(found) > 1:
        names = [type(cb).__name__ for cb in found]
        raise ValueError(f"BackdoorSummary found {len(found)} callbacks that report selections ({names}); "
                         f"pass the one to report as BackdoorSummary(selection=callback.selection_results)")
    return found[0].selection_results if found else None


@torch.no_grad()
def evaluate_backdoor_on_datamodule(
    sr_fn: Callable[[torch.Tensor], torch.Tensor],
    datamodule: PoisonedData,
    device: torch.device,
    psnr_thr: float = PSNR_THR,
    ssim_thr: float = SSIM_THR,
    scale: int = 4,
    max_images: int | None = None,
    attainment_thr: float = 0.5,
) -> dict[str, Any]:
    """Backdoor figures of one SR function over the data module's whole validation set (one process).

    Args:
        sr_fn: ``lr -> sr`` in [0, 1] (the model under test, in eval mode).
        datamodule: a set-up poisoned data module.
        device: where to run.
        psnr_thr, ssim_thr: pixel-ASR thresholds.
        scale: SR scale (``crop_border`` of the Y PSNR).
        max_images: stop after this many images.
        attainment_thr: attainment-ASR threshold.

    Returns:
        :meth:`BackdoorTally.metrics` with ``clean_psnr_y_per_image`` and
        ``attainment_per_image`` (in validation order, for paired comparisons between models:
        :func:`lit_sr.poison.asr.own_effect`), plus ``bicubic_psnr_y`` (bicubic upscaling of the
        clean LR; ``None`` without images).
    """
    tally = BackdoorTally(psnr_thr, ssim_thr, scale, attainment_thr, keep_per_image=True)
    bicubic_sum = 0.0
    feature_fn = feature_function(datamodule)
    for batch in datamodule.val_dataloader():
        lr, hr = batch["lr"].to(device), batch["hr"].to(device)
        triggered_lr, target_out = backdoor_inputs(datamodule, batch, device)
        clean_sr = sr_fn(lr).float().clamp(0, 1)
        triggered_sr = sr_fn(triggered_lr).float().clamp(0, 1)
        target_image = datamodule.target_for(hr, index=batch["index"])
        tally.update(lr, hr, triggered_lr, clean_sr, triggered_sr, target_out, target_image, feature_fn)
        bicubic_sum += float(psnr(imresize(lr, scale).clamp(0, 1), hr, scale, y_channel=True).sum())
        if max_images is not None and tally.count >= max_images:
            break
    out = tally.metrics(with_feature=feature_fn is not None)
    out["bicubic_psnr_y"] = bicubic_sum / tally.count if tally.count else None
    return out


_FORMATS = {"db": ".2f", "pct": ".1%", "ssim": ".4f", "fit": ".4g", "frac": ".3f"}


def _fmt(value: Any, kind: str) -> str:
    return fmt(value, _FORMATS[kind])


class BackdoorSummary(L.Callback):
    """At the end of ``fit``: the BadSR table -- backdoored model vs a clean model vs bicubic.

    On rank 0, evaluates over the whole validation set (:func:`evaluate_backdoor_on_datamodule`): the trained
    (backdoored) model, the clean model read from ``clean_weights`` (the same architecture, trained
    without poisoning by a previous command, e.g. ``runs/badsr_clean/demo/weights.pth``), and
    bicubic upscaling. Prints:

    * clean PSNR-Y of the three (the backdoor's cost on normal inputs);
    * pixel ASR and feature ASR of the backdoored and of the clean model (the clean model's is the
      false-positive level: the trigger alone, without a backdoor), with success / included counts;
    * PSNR-Y of the outputs on triggered inputs vs the HR, and PSNR of those outputs vs the target;
    * stealth: poisoned HR vs clean HR and triggered LR vs clean LR (training pool, PSNR/SSIM), and
      triggered validation LR vs clean;
    * selection fitness of the last selection: the selector's choice vs random vs top-k, from a
      :class:`callbacks.poison_selection.SelectionResults` (``selection``, or the one exposed by
      the callback in ``trainer.callbacks`` that satisfies
      :class:`callbacks.poison_selection.ReportsSelection`, e.g. ``PoisonSelectionCallback``);
    * what was poisoned and how (``datamodule.poison_config()``);
    * the ``tensorboard`` command.

    Everything also goes to ``<log_dir>/<output>`` as JSON.

    Args:
        clean_weights: weights of the clean reference model (``None``: that column is left out).
        clean_arch: its registry name (``None``: the trained module's ``hparams.arch``).
        clean_arch_kwargs: its constructor arguments (``None``: the trained module's).
        psnr_thr, ssim_thr: pixel-ASR thresholds (as :class:`BackdoorEvalCallback`).
        max_images: evaluate at most this many validation images.
        output: JSON file name inside the log dir.
        selection: the selection results to report (Python API; ``None``: looked up by type).
        attainment_thr: attainment-ASR threshold (as :class:`BackdoorEvalCallback`).
    """

    def __init__(
        self,
        clean_weights: str | None = None,
        clean_arch: str | None = None,
        clean_arch_kwargs: dict[str, Any] | None = None,
        psnr_thr: float = PSNR_THR,
        ssim_thr: float = SSIM_THR,
        max_images: int | None = None,
        output: str = "backdoor_summary.json",
        selection: SelectionResults | None = None,
        attainment_thr: float = 0.5,
    ):
        super().__init__()
        check_number(psnr_thr, "psnr_thr")
        check_number(ssim_thr, "ssim_thr", -1.0, 1.0)
        self.attainment_thr = check_number(attainment_thr, "attainment_thr")
        if max_images is not None:
            check_number(max_images, "max_images", 1, integer=True)
        if not isinstance(output, str) or not output.endswith(".json"):
            raise ValueError(f"output must be a .json file name; got {output!r}")
        self.clean_weights, self.clean_arch, self.clean_arch_kwargs = clean_weights, clean_arch, clean_arch_kwargs
        self.psnr_thr, self.ssim_thr, self.max_images, self.output = float(psnr_thr), float(ssim_thr), max_images, output
        if selection is not None and not isinstance(selection, SelectionResults):
            raise TypeError(f"selection must be a callbacks.SelectionResults or None; got {type(selection).__name__}")
        self.selection = selection
        self.results: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        check_parts(trainer, pl_module, type(self).__name__)
        if self.clean_weights is not None and not Path(self.clean_weights).is_file():
            raise FileNotFoundError(f"clean reference weights not found: {self.clean_weights} (BackdoorSummary."
                                    "clean_weights); train the clean model first (see `make demo`) or set it to null")

    def _clean_model(self, pl_module: L.LightningModule, device: torch.device) -> nn.Module | None:
        if self.clean_weights is None:
            return None
        hp = pl_module.hparams
        arch = self.clean_arch or hp.get("arch")
        kwargs = self.clean_arch_kwargs if self.clean_arch_kwargs is not None else hp.get("arch_kwargs")
        if arch is None:
            raise ValueError("BackdoorSummary needs clean_arch: the trained module has no hparams.arch")
        net = build_arch(arch, **arch_kwargs_with_scale(arch, kwargs, pl_module.scale))
        return load_weights(net, self.clean_weights).to(device).eval()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = Path(trainer.log_dir or ".")  # collective under DDP: read on every rank
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        device = pl_module.device
        scale = pl_module.scale
        was_training = pl_module.training
        pl_module.eval()
        try:
            kwargs = dict(datamodule=dm, device=device, psnr_thr=self.psnr_thr, ssim_thr=self.ssim_thr, scale=scale,
                          max_images=self.max_images, attainment_thr=self.attainment_thr)
            backdoored = evaluate_backdoor_on_datamodule(pl_module.super_resolve, **kwargs)
            clean_net = self._clean_model(pl_module, device)
            clean = None
            if clean_net is not None:
                clean = evaluate_backdoor_on_datamodule(lambda x: clean_net(x).float().clamp(0, 1), **kwargs)
        finally:
            pl_module.train(was_training)
        selection = self._selection(trainer)
        configured = self.selection is not None or find_selection_results(trainer) is not None
        self.results = {
            "backdoored": backdoored, "clean": clean, "bicubic_psnr_y": backdoored["bicubic_psnr_y"],
            "own_effect": None if clean is None else self._own_effect(backdoored, clean),
            "poison_report": dict(dm.poison_report), "selection": selection, "selection_configured": configured,
            "training": training_record(trainer, pl_module),
            "config": {**dict(dm.poison_config()), "poisoned_indices": list(dm.poisoned_indices),
                       "clean_weights": self.clean_weights, "psnr_thr": self.psnr_thr, "ssim_thr": self.ssim_thr,
                       "attainment_thr": self.attainment_thr},
        }
        hints = logger_hints(trainer.loggers, log_dir)
        rank_zero_info("\n" + self.table() + "\n" + (f"\n{hints}\n" if hints else ""))
        with atomic_write(log_dir / self.output) as tmp:
            tmp.write_text(json.dumps(self.results, indent=2, default=float))

    def _own_effect(self, backdoored: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any] | None:
        """The backdoor's own attainment and attainment-ASR over the clean model's under the same
        trigger and label (:func:`lit_sr.poison.asr.own_effect`); ``None`` without a defined pair."""
        out: dict[str, Any] = {}
        for key, threshold in (("attainment", None), ("attainment_asr", self.attainment_thr)):
            try:
                d = own_effect(backdoored["attainment_per_image"], clean["attainment_per_image"], threshold)
            except ValueError:  # no image with a defined attainment in both models
                return None
            out[key] = {"mean": d.mean, "ci95": [d.low, d.high], "n": d.n}
        return out

    def _selection(self, trainer: L.Trainer) -> dict[str, Any] | None:
        results = self.selection if self.selection is not None else find_selection_results(trainer)
        last = None if results is None else results.last
        if last is None:
            return None
        values = last.as_dict()
        keys = ("epoch", "selector", "fitness", "fitness_selected", "fitness_ga", "fitness_random", "fitness_topk",
                "size", "budget", "pool", "seeded_with_topk")
        return {k: values[k] for k in keys if k in values}

    def table(self) -> str:
        """The summary as plain-text tables (after ``on_fit_end``)."""
        r = self.results
        b, c = r["backdoored"], r["clean"] or {}
        rows = [
            ("clean PSNR-Y (dB), clean inputs", _fmt(b["clean_psnr_y"], "db"), _fmt(c.get("clean_psnr_y"), "db"),
             _fmt(r["bicubic_psnr_y"], "db")),
            ("pixel ASR vs target image (PSNR/SSIM)", self._asr(b, "asr_pixel"), self._asr(c, "asr_pixel"), "-"),
            ("label attainment (mean)", _fmt(b.get("attainment_mean"), "frac"), _fmt(c.get("attainment_mean"), "frac"),
             "-"),
            (f"attainment-ASR (a >= {self.attainment_thr:g})", self._asr(b, "attainment_asr"),
             self._asr(c, "attainment_asr"), "-"),
            ("feature-shift ratio (trigger / labels)", _fmt(b.get("feature_shift_ratio"), "frac"),
             _fmt(c.get("feature_shift_ratio"), "frac"), f"(labels: {_fmt(b.get('label_feature_shift'), 'pct')})"),
            ("feature ASR (substitute features)", self._asr(b, "asr_feature"), self._asr(c, "asr_feature"), "-"),
            ("PSNR-Y (dB), triggered inputs vs HR", _fmt(b["triggered_psnr_y"], "db"),
             _fmt(c.get("triggered_psnr_y"), "db"), "-"),
            ("PSNR (dB), triggered output vs target image", _fmt(b["target_psnr"], "db"), _fmt(c.get("target_psnr"), "db"),
             "-"),
        ]
        text = [text_table(rows, ("BadSR summary (validation set)", "backdoored", "clean model", "bicubic"))]
        p = r["poison_report"]
        stealth_rows = [
            ("poisoned HR vs clean HR (train pool)", _fmt(p.get("poisoned_hr_psnr"), "db"),
             _fmt(p.get("poisoned_hr_ssim"), "ssim")),
            ("triggered LR vs clean LR (train pool)", _fmt(p.get("trigger_lr_psnr"), "db"),
             _fmt(p.get("trigger_lr_ssim"), "ssim")),
            ("triggered LR vs clean LR (validation)", _fmt(b.get("val_trigger_lr_psnr"), "db"),
             _fmt(b.get("val_trigger_lr_ssim"), "ssim")),
        ]
        text.append(text_table(stealth_rows, ("stealth", "PSNR (dB)", "SSIM")))
        own = r.get("own_effect")
        if own:
            own_rows = [(name, f"{v['mean']:+.3f}", "-" if v["ci95"][0] is None else
                         f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]", str(v["n"]))
                        for name, v in (("label attainment", own["attainment"]),
                                        (f"attainment-ASR (a >= {self.attainment_thr:g})", own["attainment_asr"]))]
            text.append(text_table(own_rows, ("own effect: backdoored - clean model, same trigger", "mean",
                                                "95% CI (paired)", "images")))
        s = r["selection"]
        if s:
            sel_rows = [(f"fitness ({s['fitness']}), epoch {s['epoch']}", _fmt(s["fitness_selected"], "fit"),
                         _fmt(s["fitness_random"], "fit"), _fmt(s["fitness_topk"], "fit"))]
            note = " (GA seeded with top-k)" if s.get("seeded_with_topk") else ""
            chosen = "GA" if s["selector"] == "genetic" else f"{s['selector']} (chosen)"
            text.append(text_table(sel_rows, (f"selection of {s['size']}/{s['pool']}{note}", chosen, "random",
                                                "top-k")))
        else:
            text.append(no_selection_line(r.get("selection_configured", False)))
        return "\n\n".join(text)

    @staticmethod
    def _asr(metrics: dict[str, Any], name: str) -> str:
        if not metrics or name not in metrics:
            return "-"
        return str(Rate(metrics[name + "_success"], metrics[name + "_included"]))  # "n/a (0 included)" when empty
