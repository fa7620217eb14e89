"""Attack the model on a fixed validation subset every N validations and log how its output breaks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchvision.utils import make_grid

from callbacks.protocols import RefSRModel, require
from lit_sr.attacks import infer_scale
from lit_sr.attacks.refsr_spec import (
    REF_ATTACKS,
    RefSRAttackRunner,
    RefSRAttackSpec,
    parse_refsr_attacks,
    ref_attack_kind,
    refsr_predict,
)
from lit_sr.attacks.registry import plain_kinds
from lit_sr.attacks.spec import (
    AttackRunner,
    AttackSpec,
    eps_label,
    parse_attacks,
    parse_eps_list,
    predict,
    shape_batches,
)
from lit_sr.io import write_image
from lit_sr.plots import figure_to_tensor, psnr_vs_eps_figure, save_figure
from lit_sr.runtime import Autocast, autocast_dtype, model_device
from lit_sr.validation import check_int

DEFAULT_ATTACKS = {"ifgsm": {"steps": 10}}
DEFAULT_REFSR_ATTACKS = {"refsr_adv": {"steps": 10}}
DEFAULT_EPS = (2 / 255, 8 / 255)


def _check_int(value, name: str, minimum: int) -> int:
    return check_int(value, f"AdversarialEvalCallback.{name}", minimum)


def attack_row(
    lr: torch.Tensor, lr_adv: torch.Tensor, sr: torch.Tensor, sr_adv: torch.Tensor, scale: int, eps: float
) -> list[torch.Tensor]:
    """The five equal-size tiles of one image: clean LR, attacked LR (both nearest x scale), the perturbation
    (mid-grey = 0, black/white = -eps/+eps, nearest x scale), clean SR and attacked SR."""

    def enlarge(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None].float(), scale_factor=scale, mode="nearest")[0]

    perturbation = (0.5 + (lr_adv - lr) / (2 * eps)).clamp(0, 1)
    tiles = [enlarge(lr), enlarge(lr_adv), enlarge(perturbation), sr.float(), sr_adv.float()]
    h = min(t.shape[-2] for t in tiles)
    w = min(t.shape[-1] for t in tiles)
    return [t[..., :h, :w].cpu() for t in tiles]


def stack_rows(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    """One ``(3, H, W)`` grid from rows of equal-size tiles; rows of different sizes are padded white."""
    images = [make_grid(tiles, nrow=len(tiles), padding=2, pad_value=1.0) for tiles in rows]
    width = max(img.shape[-1] for img in images)
    return torch.cat([F.pad(img, (0, width - img.shape[-1]), value=1.0) for img in images], dim=-2)


class AdversarialEvalCallback(L.Callback):
    """Every ``every_n_epochs`` validations, attacks the first validation images and logs the damage.

    The first ``num_images`` images of the first validation loader are gathered on each rank
    (under DDP every rank attacks its own shard) during validation, copied out of inference mode.
    At the end of the validation epoch (never during the sanity check) every configured attack is
    run at every eps on them, on ``pl_module.eval_net()`` (the EMA weights when the module keeps
    them) or the module itself, outside inference mode and with autograd on. The model is
    restored exactly (modes, ``requires_grad``, no ``.grad`` left): the attacks freeze and restore
    it themselves.

    Logged, reduced across ranks as sums and counts (so unequal shards weigh by image):
    ``attack/<name>/eps<k>/<metric>`` with ``k = eps * 255`` and the metrics of
    :class:`lit_sr.attacks.spec.AttackRunner`: ``lr_psnr`` (stealth), ``sr_psnr`` and ``sr_ssim``
    (attacked vs clean output), ``hr_psnr``, ``hr_ssim``, ``clean_hr_psnr`` (vs ground truth); the
    targeted attack adds ``target_psnr`` and ``clean_target_psnr``. With ``log_images``, rank 0
    also sends a PSNR-vs-eps plot and image grids to TensorBoard and writes them as PNG under
    ``<log_dir>/attacks/``. Each grid row is clean LR | attacked LR | perturbation (all nearest,
    enlarged by the scale) | clean SR | attacked SR.

    **Reference-based SR.** When the validation batches carry ``"ref"``, the module must be a
    :class:`callbacks.protocols.RefSRModel` (``RefSRModule`` is) and the attacks run on its ``net``
    as ``net(lr, ref)``: ``refsr_adv`` (RefSR-Adv, PGD on the reference) and ``ref_square`` (the
    query-only Square Attack on the reference) perturb the reference and log ``ref_psnr`` as their
    stealth; the plain kinds (``ifgsm``, ``pgd``, ``square``) perturb the LR input with the
    reference held fixed (:mod:`lit_sr.attacks.refsr_spec`). The default is
    ``{"refsr_adv": {"steps": 10}}``. Grid rows of reference attacks show the reference, the
    attacked reference and the perturbation at their own size.

    Args:
        attacks: name -> parameters, as the ``attacks`` block of the robustness report (kinds
            ``ifgsm``, ``pgd``, ``partial``, ``universal``, ``targeted``, ``square``, and for RefSR
            models ``refsr_adv`` and ``ref_square``; ``attack:`` picks the kind when the name is not one). Default ``{"ifgsm": {"steps": 10}}``: 10
            steps instead of the paper's 50 keep the check cheap inside training. ``reference``
            defaults to ``"hr"`` (the official code). The universal attack is fitted on each
            rank's subset (images narrower than its ``crop_size`` are left out).
        eps: budgets on the [0, 1] scale, numbers or strings like ``"8/255"``; default 2/255, 8/255.
        num_images: images per rank attacked (the first of the validation loader).
        every_n_epochs: run on every N-th validation (counted across the run, kept in checkpoints).
        log_images: log the plot and grids (rank 0) to the loggers and as PNG.
        num_grid_images: images per grid.
        y_channel: metrics on BT.601 Y (the SR convention) instead of RGB.
        crop_border: SR-side border crop of the metrics; ``None`` means the module's ``scale``.
        batch_size: images attacked together (same-size images only).
        autocast: ``"none"`` (float32) or ``"bf16"`` for the attacks' forward passes (metrics stay fp32).
        seed: seed of the attacks' random choices (random starts, squares).
        save_png: also write the plot and grids as PNG files (with ``log_images``).
    """

    def __init__(
        self,
        attacks: dict[str, dict[str, Any] | None] | None = None,
        eps: list[float | str] | None = None,
        num_images: int = 4,
        every_n_epochs: int = 1,
        log_images: bool = True,
        num_grid_images: int = 2,
        y_channel: bool = True,
        crop_border: int | None = None,
        batch_size: int = 8,
        autocast: Autocast = "none",
        seed: int = 0,
        save_png: bool = True,
    ):
        super().__init__()
        self.specs, self.ref_specs = _parse_blocks(attacks)
        self.eps = parse_eps_list(list(DEFAULT_EPS) if eps is None else eps, "AdversarialEvalCallback.eps")
        self.num_images = _check_int(num_images, "num_images", 1)
        self.every_n_epochs = _check_int(every_n_epochs, "every_n_epochs", 1)
        self.num_grid_images = _check_int(num_grid_images, "num_grid_images", 0)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.crop_border = None if crop_border is None else _check_int(crop_border, "crop_border", 0)
        autocast_dtype(autocast, "AdversarialEvalCallback.autocast")  # raises naming it on anything else
        self.autocast = autocast
        self.log_images, self.y_channel, self.save_png = bool(log_images), bool(y_channel), bool(save_png)
        self._val_runs = 0
        self._active = False
        self._subset: list[tuple[torch.Tensor, ...]] = []  # (lr, hr) or, for RefSR batches, (lr, hr, ref)
        # This rank's (sum, count) per metric key at the last run, before the reduction (for checks).
        self.local_results: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {"val_runs": self._val_runs}

    def load_state_dict(self, state_dict: dict) -> None:
        self._val_runs = int(state_dict.get("val_runs", 0))

    # ------------------------------------------------------------------ gathering
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP: read it here, where every rank is.
        self._log_dir = trainer.log_dir

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._subset = []
        self._active = False
        if trainer.sanity_checking:
            return
        self._val_runs += 1
        self._active = self._val_runs % self.every_n_epochs == 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or dataloader_idx != 0 or len(self._subset) >= self.num_images:
            return
        if not isinstance(batch, dict) or "lr" not in batch or "hr" not in batch:
            raise TypeError(
                "AdversarialEvalCallback needs dict validation batches with 'lr' and 'hr' tensors, got "
                f"{type(batch).__name__}{' with keys ' + str(sorted(batch)) if isinstance(batch, dict) else ''}"
            )
        # Validation tensors are inference tensors; copies made outside inference mode are ordinary
        # tensors that autograd can use later. They wait on the CPU so the subset costs no GPU memory.
        keys = ("lr", "hr", "ref") if "ref" in batch else ("lr", "hr")
        with torch.inference_mode(False):
            for images in zip(*(batch[k] for k in keys)):
                if len(self._subset) >= self.num_images:
                    break
                self._subset.append(tuple(x.detach().cpu().clone() for x in images))

    # ------------------------------------------------------------------ attacking
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        if self._refsr():
            self._attack_refsr(trainer, pl_module)
            return
        if self.specs is None:
            raise TypeError(
                "AdversarialEvalCallback.attacks names reference attacks "
                f"({sorted(s.label for s in self.ref_specs if s.side == 'ref')}) but the validation batches have no 'ref'"
            )
        model = self._eval_model(pl_module)
        device = model_device(model) or pl_module.device
        scale = self._scale(pl_module, model, device)
        crop_border = scale if self.crop_border is None else self.crop_border
        want_grids = self.log_images and trainer.is_global_zero and self.num_grid_images > 0
        with torch.inference_mode(False), torch.enable_grad():
            keys, sums, counts, grids = self._attack_subset(model, device, crop_border, scale, want_grids)
        self._reduce_and_log(trainer, pl_module, keys, sums, counts, grids)

    def _reduce_and_log(self, trainer, pl_module, keys, sums, counts, grids) -> None:
        """Sum this rank's (sum, count) per key over the ranks, log the means, send the visuals (rank 0)."""
        self.local_results = {k: (s, c) for k, s, c in zip(keys, sums.tolist(), counts.tolist())}
        totals = trainer.strategy.reduce(torch.stack([sums, counts]).to(pl_module.device), reduce_op="sum")
        means = {}
        for key, total, count in zip(keys, totals[0].tolist(), totals[1].tolist()):
            if count > 0:  # counts are global, so every rank logs the same keys
                means[key] = total / count
                # Already reduced; sync_dist on equal values changes nothing and keeps Lightning's
                # epoch-level DDP check satisfied.
                pl_module.log(key, torch.tensor(means[key], device=pl_module.device), on_step=False,
                              on_epoch=True, sync_dist=True)
        if self.log_images and trainer.is_global_zero:
            self._log_visuals(trainer, means, grids)
        self._subset = []

    @staticmethod
    def _eval_model(pl_module: L.LightningModule) -> nn.Module:
        # ``eval_net`` is the EMA network when the module keeps one: a method on SRModule, a property
        # in callbacks.protocols.SRModel; a module without it is attacked as it is.
        eval_net = getattr(pl_module, "eval_net", None)
        if isinstance(eval_net, nn.Module):
            return eval_net
        return eval_net() if callable(eval_net) else pl_module

    def _scale(self, pl_module: L.LightningModule, model: nn.Module, device: torch.device) -> int:
        scale = getattr(pl_module, "scale", None)
        if isinstance(scale, int) and scale >= 1:
            return scale
        if not self._subset:
            return 1
        lr = self._subset[0][0][None].to(device)
        return infer_scale(lr.shape, predict(model, lr).shape)

    def _refsr(self) -> bool:
        """Whether the gathered subset comes from reference-based SR batches (every rank sees the same kind)."""
        return bool(self._subset) and len(self._subset[0]) == 3

    def _active_specs(self) -> list:
        return (self.ref_specs if self._refsr() else self.specs) or []

    def metric_keys(self, refsr: bool | None = None) -> list[str]:
        """Every key this callback can log, in a fixed order (the same on every rank).

        ``refsr``: the keys of the RefSR attacks (``True``), of the SR ones (``False``) or of the
        kind of the subset gathered last (``None``).
        """
        specs = (self.ref_specs if refsr else self.specs) if refsr is not None else self._active_specs()
        return [
            f"attack/{spec.label}/{eps_label(eps)}/{metric}"
            for spec in specs or []
            for eps in self.eps
            for metric in spec.metric_keys()
        ]

    # ------------------------------------------------------------------ reference-based SR
    def _attack_refsr(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        require(pl_module, RefSRModel, "AdversarialEvalCallback (validation batches with 'ref')", "the LightningModule")
        if self.ref_specs is None:
            raise TypeError(
                "AdversarialEvalCallback.attacks holds kinds that cannot run on a RefSR model "
                f"({sorted(s.kind for s in self.specs)}); use {sorted(REF_ATTACKS)} (on the reference) or "
                f"{list(plain_kinds())} (on the LR input)"
            )
        model = pl_module.net
        device = model_device(model) or pl_module.device
        crop_border = pl_module.scale if self.crop_border is None else self.crop_border
        want_grids = self.log_images and trainer.is_global_zero and self.num_grid_images > 0
        with torch.inference_mode(False), torch.enable_grad():
            keys, sums, counts, grids = self._attack_refsr_subset(model, device, crop_border, pl_module.scale,
                                                                  want_grids)
        self._reduce_and_log(trainer, pl_module, keys, sums, counts, grids)

    def _attack_refsr_subset(self, model: nn.Module, device: torch.device, crop_border: int, scale: int,
                             want_grids: bool):
        keys = self.metric_keys(refsr=True)
        index = {k: i for i, k in enumerate(keys)}
        sums = torch.zeros(len(keys), dtype=torch.float64)
        counts = torch.zeros(len(keys), dtype=torch.float64)
        grids: dict[tuple[str, str], torch.Tensor] = {}
        shapes = [(lr.shape, ref.shape) for lr, _, ref in self._subset]
        everything = list(range(len(self._subset)))
        for spec in self.ref_specs:
            for eps in self.eps:
                runner = RefSRAttackRunner(spec, model, eps, seed=self.seed, autocast=self.autocast,
                                           crop_border=crop_border, y_channel=self.y_channel)
                shown = set(everything[: self.num_grid_images]) if want_grids else set()
                rows: dict[int, list[torch.Tensor]] = {}
                for idx in shape_batches(shapes, everything, self.batch_size):
                    lr, hr, ref = (torch.stack([self._subset[i][k] for i in idx]).to(device) for k in range(3))
                    adv, metrics = runner.run(lr, ref, hr)
                    for name, values in metrics.items():
                        key = index[f"attack/{spec.label}/{eps_label(eps)}/{name}"]
                        sums[key] += values.sum()
                        counts[key] += values.numel()
                    for j, i in enumerate(idx):
                        if i in shown:
                            rows[i] = _refsr_row(model, spec, lr[j : j + 1], ref[j : j + 1], adv[j : j + 1], scale, eps)
                if rows:
                    grids[spec.label, eps_label(eps)] = stack_rows([rows[i] for i in sorted(rows)])
        return keys, sums, counts, grids

    def _attack_subset(self, model: nn.Module, device: torch.device, crop_border: int, scale: int, want_grids: bool):
        keys = self.metric_keys()
        index = {k: i for i, k in enumerate(keys)}
        sums = torch.zeros(len(keys), dtype=torch.float64)
        counts = torch.zeros(len(keys), dtype=torch.float64)
        grids: dict[tuple[str, str], torch.Tensor] = {}
        shapes = [lr.shape for lr, _ in self._subset]
        for spec in self.specs:
            for eps in self.eps:
                runner = AttackRunner(spec, model, eps, seed=self.seed, autocast=self.autocast,
                                      crop_border=crop_border, y_channel=self.y_channel, batch_size=self.batch_size)
                usable = [i for i, (lr, _) in enumerate(self._subset) if runner.accepts(lr)]
                if not usable:
                    continue
                runner.fit([self._subset[i] for i in usable])
                shown = set(usable[: self.num_grid_images]) if want_grids else set()
                rows: dict[int, list[torch.Tensor]] = {}
                for idx in shape_batches(shapes, usable, self.batch_size):
                    lr = torch.stack([self._subset[i][0] for i in idx]).to(device)
                    hr = torch.stack([self._subset[i][1] for i in idx]).to(device)
                    adv, metrics = runner.run(lr, hr)
                    for name, values in metrics.items():
                        key = index[f"attack/{spec.label}/{eps_label(eps)}/{name}"]
                        sums[key] += values.sum()
                        counts[key] += values.numel()
                    for j, i in enumerate(idx):
                        if i in shown:
                            sr, sr_adv = predict(model, lr[j : j + 1])[0], predict(model, adv[j : j + 1])[0]
                            rows[i] = attack_row(lr[j], adv[j], sr, sr_adv, scale, eps)
                if rows:
                    grids[spec.label, eps_label(eps)] = stack_rows([rows[i] for i in sorted(rows)])
        return keys, sums, counts, grids

    # ------------------------------------------------------------------ logging
    def _experiments(self, trainer: L.Trainer) -> list:
        return [lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_image")]

    def _log_visuals(self, trainer: L.Trainer, means: dict[str, float], grids: dict) -> None:
        step, epoch = trainer.global_step, trainer.current_epoch
        log_dir = getattr(self, "_log_dir", None)
        out_dir = Path(log_dir) / "attacks" if (self.save_png and log_dir) else None
        experiments = self._experiments(trainer)
        try:
            panels = {
                "SR PSNR, attacked vs clean output": self._series(means, "sr_psnr"),
                "PSNR, attacked output vs HR": self._series(means, "hr_psnr"),
            }
            fig = psnr_vs_eps_figure(panels, f"attacks at epoch {epoch} (step {step})")
            image = figure_to_tensor(fig)
            for exp in experiments:
                exp.add_image("attack/psnr_vs_eps", image, global_step=step)
            if out_dir is not None:
                save_figure(fig, out_dir / f"epoch{epoch:04d}_psnr_vs_eps.png")
            for (label, eps_key), grid in grids.items():
                for exp in experiments:
                    exp.add_image(f"attack_images/{label}/{eps_key}", grid, global_step=step)
                if out_dir is not None:
                    write_image(grid, out_dir / f"epoch{epoch:04d}_{label}_{eps_key}.png")
        except OSError as exc:  # a full disk must not kill a training run over a picture
            rank_zero_warn(f"AdversarialEvalCallback could not write its images: {exc}")

    def _series(self, means: dict[str, float], metric: str) -> dict[str, list[tuple[float, float]]]:
        series = {}
        for spec in self._active_specs():
            points = [(eps * 255, means[k]) for eps in self.eps
                      if (k := f"attack/{spec.label}/{eps_label(eps)}/{metric}") in means]
            if points:
                series[spec.label] = points
        return series


def _parse_blocks(attacks) -> tuple[list[AttackSpec] | None, list[RefSRAttackSpec] | None]:
    """The SR and the RefSR reading of the ``attacks`` block (``None`` where it cannot apply).

    A block naming a reference attack is RefSR only; a block of plain kinds serves both (on a
    RefSR model those perturb the LR input); one with partial/universal/targeted attacks is SR only.
    """
    where = "AdversarialEvalCallback.attacks"
    if attacks is None:
        return parse_attacks(DEFAULT_ATTACKS, where), parse_refsr_attacks(DEFAULT_REFSR_ATTACKS, where)
    kinds = {ref_attack_kind(label, params) for label, params in attacks.items()} if isinstance(attacks, Mapping) else set()
    if kinds & set(REF_ATTACKS):
        return None, parse_refsr_attacks(attacks, where)
    specs = parse_attacks(attacks, where)
    plain = all(spec.kind in plain_kinds() for spec in specs)
    return specs, parse_refsr_attacks(attacks, where) if plain else None


def _refsr_row(model: nn.Module, spec: RefSRAttackSpec, lr: torch.Tensor, ref: torch.Tensor, adv: torch.Tensor,
               scale: int, eps: float) -> list[torch.Tensor]:
    """A grid row of one image: the perturbed input (the reference at its size, or the LR enlarged), clean and attacked SR."""
    sr = refsr_predict(model, lr, ref)[0]
    if spec.side == "ref":
        return attack_row(ref[0], adv[0], sr, refsr_predict(model, lr, adv)[0], 1, eps)
    return attack_row(lr[0], adv[0], sr, refsr_predict(model, adv, ref)[0], scale, eps)
