"""Train the claims' models with the same budget, attack them, and gather per-image figures.

Training goes through :class:`~lit_sr.modules.refsr_module.RefSRModule` and a Lightning ``Trainer``
(the recipes' path), stopped after the same number of batches for every model; the full-loss
continuation of claim (b) counts its iterations the same way (one batch = one generator step and
its critic step), so the two continuations see the same batches in the same order.

Every figure is per image, on the Y channel with ``crop_border = scale``, as the RefSR report's:
``sr_psnr`` (attacked output vs the model's clean output: RefSR-Adv's damage), ``drop`` (the clean
output's PSNR vs HR minus the attacked one's: the paper's "PSNR drop") and ``ref_psnr`` (the
stealth of the reference, RGB).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
import torch
from torch import nn

from lit_sr.attacks.refsr_adv import RefSRAdv, RefSREnsemble, refsr_output, uniform_noise
from lit_sr.io import load_weights, save_weights
from lit_sr.jobs.refsr_claims.config import ClaimsConfig
from lit_sr.metrics import psnr
from lit_sr.modules.refsr_module import RefSRModule
from lit_sr.ops import imresize
from lit_sr.runtime import resolve_device

NOISE = "noise"
ENSEMBLE = "ensemble"


class StopAfterBatches(L.Callback):
    """End ``fit`` after ``batches`` training batches (whatever the epochs and the optimiser count)."""

    def __init__(self, batches: int):
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.seen += 1
        if self.seen >= self.batches:
            trainer.should_stop = True


def train(module: RefSRModule, data: L.LightningDataModule, steps: int, seed: int, device: torch.device,
          progress: bool) -> nn.Module:
    """``steps`` training batches of ``module`` on ``data`` (seeded data order); its network in eval mode."""
    L.seed_everything(seed, verbose=False)
    stop = StopAfterBatches(steps)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=-1,
                        logger=False, enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_model_summary=False, enable_progress_bar=progress, callbacks=[stop])
    trainer.fit(module, datamodule=data)
    if stop.seen < steps:
        raise RuntimeError(f"training stopped after {stop.seen} of {steps} batches")
    return module.net.to(device).eval()


def _module(cfg: ClaimsConfig, label: str, losses: str = "rec", **extra) -> RefSRModule:
    entry = cfg.models[label]
    kwargs = {**entry.module_kwargs, **extra}
    return RefSRModule(arch=entry.arch, arch_kwargs=entry.arch_kwargs, scale=cfg.scale, losses=losses, lr=cfg.lr,
                       export_weights=False, **kwargs)


def full_loss_kwargs(cfg: ClaimsConfig) -> dict:
    """The full-loss continuation's RefSRModule arguments (no warm-up; no perceptual term without VGG19)."""
    kwargs = {"warmup_epochs": 0, "tpl_weight": 0.0, **cfg.full_losses}
    if not cfg.perceptual:
        kwargs["perceptual_weight"] = 0.0
    return kwargs


def _trained(cfg: ClaimsConfig, label: str, out: Path, make, seconds: dict) -> nn.Module:
    """The network ``label``: read from ``cfg.weights_dir`` when given, else trained by ``make()`` and saved."""
    started = time.perf_counter()
    if cfg.weights_dir is not None:
        module = _module(cfg, label.rsplit("-", 1)[0] if label not in cfg.models else label)
        load_weights(module.net, Path(cfg.weights_dir) / f"{label}.pth", strict=True)
        net = module.net.eval()
    else:
        net = make()
        save_weights(net, out / "models" / f"{label}.pth")
    seconds[label] = time.perf_counter() - started
    return net


def train_models(cfg: ClaimsConfig, device: torch.device, out: Path, progress: bool) -> tuple[dict, dict, dict]:
    """Claim (a)'s models and claim (b)'s two continuations (each saved to ``out/models``, or read from
    ``cfg.weights_dir``); the seconds each took."""
    nets, seconds = {}, {}
    for label in cfg.models:
        def make(label=label):
            torch.manual_seed(cfg.seed)
            return train(_module(cfg, label), cfg.data, cfg.steps, cfg.seed, device, progress)

        nets[label] = _trained(cfg, label, out, make, seconds).to(device)
    variants = {}
    state = {k: v.detach().clone() for k, v in nets[cfg.loss_model].state_dict().items()}
    for name, losses, extra in (("rec", "rec", {}), ("full", "full", full_loss_kwargs(cfg))):
        def make(losses=losses, extra=extra):
            torch.manual_seed(cfg.seed + 1)
            module = _module(cfg, cfg.loss_model, losses, **extra)
            module.net.load_state_dict(state)
            return train(module, cfg.data, cfg.finetune_steps, cfg.seed + 1, device, progress)

        variants[name] = _trained(cfg, f"{cfg.loss_model}-{name}", out, make, seconds).to(device)
    return nets, variants, seconds


def test_batches(cfg: ClaimsConfig) -> Iterator[dict]:
    """The test batches of every test set of ``cfg.test_data`` (its first ``max_images`` images each)."""
    cfg.test_data.setup("test")
    loaders = cfg.test_data.test_dataloader()
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        seen = 0
        for batch in loader:
            if cfg.max_images is not None and seen >= cfg.max_images:
                break
            missing = [k for k in ("lr", "ref", "hr") if k not in batch]
            if missing:
                raise ValueError(f"data: test batches need {missing} (RefSR batches {{lr, ref, hr}}), got {sorted(batch)}")
            yield batch
            seen += batch["lr"].shape[0]


class Figures:
    """Per-image values by (group, source, target, metric), in test order."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)

    def add(self, group: str, source: str, target: str, metric: str, values: torch.Tensor) -> None:
        self.values[group, source, target, metric].extend(values.double().cpu().tolist())

    def get(self, group: str, source: str, target: str, metric: str) -> torch.Tensor:
        return torch.tensor(self.values[group, source, target, metric], dtype=torch.float64)


def measure_batch(figures: Figures, groups: dict[str, dict[str, nn.Module]], ensemble: Iterable[str],
                  lr: torch.Tensor, ref: torch.Tensor, hr: torch.Tensor, cfg: ClaimsConfig, seed: int) -> None:
    """Attack one batch: each model's own RefSR-Adv, the ensemble's, noise; every source on every model of its group.

    ``groups``: ``"arch"`` (claims a and c: every source on every model) and ``"loss"`` (claim b:
    each model's own attack and noise).
    """
    kw = {"crop_border": cfg.scale, "y_channel": True}
    noise = uniform_noise(ref, cfg.eps, torch.Generator(device=ref.device).manual_seed(seed))
    for group, models in groups.items():
        clean = {label: refsr_output(m, lr, ref) for label, m in models.items()}
        sources = {NOISE: noise}
        for label, model in models.items():  # the attack runs the model frozen in eval mode and restores it
            sources[label] = RefSRAdv(model, cfg.eps, cfg.attack_steps, seed=seed)(lr, ref)
        if group == "arch":
            members = RefSREnsemble([models[label] for label in ensemble])
            sources[ENSEMBLE] = RefSRAdv(members, cfg.eps, cfg.attack_steps, seed=seed)(lr, ref)
        up = imresize(lr, scale=cfg.scale).clamp(0, 1)  # a reference with no detail beyond the LR's
        for target, model in models.items():
            hr_clean = psnr(clean[target], hr, **kw)
            figures.add(group, "clean", target, "hr_psnr", hr_clean)
            figures.add(group, "lr_up_ref", target, "sr_psnr", psnr(refsr_output(model, lr, up), clean[target], **kw))
            for source, adv in sources.items():
                if group == "loss" and source not in (NOISE, target):
                    continue
                out = refsr_output(model, lr, adv)
                figures.add(group, source, target, "sr_psnr", psnr(out, clean[target], **kw))
                figures.add(group, source, target, "drop", hr_clean - psnr(out, hr, **kw))
        for source, adv in sources.items():
            figures.add(group, source, "-", "ref_psnr", psnr(adv, ref))


def run_claims(cfg: ClaimsConfig, out: Path, progress: bool = True) -> tuple[Figures, dict]:
    """Train, attack and measure; the figures and the run's meta (seconds, device, images)."""
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    started, cpu_started = time.perf_counter(), time.process_time()
    nets, variants, seconds = train_models(cfg, device, out, progress)
    groups = {"arch": nets, "loss": {f"{cfg.loss_model}-{k}": v for k, v in variants.items()}}
    figures = Figures()
    levels: list[int] = []
    attack_started = time.perf_counter()
    for index, batch in enumerate(tqdm(list(test_batches(cfg)), desc="refsr claims", unit="batch", disable=not progress)):
        lr, ref, hr = (batch[k].to(device).float() for k in ("lr", "ref", "hr"))
        measure_batch(figures, groups, cfg.ensemble, lr, ref, hr, cfg, cfg.seed + index)
        levels += torch.as_tensor(batch.get("level", torch.zeros(lr.shape[0]))).view(-1).int().tolist()
    seconds["attacks"] = time.perf_counter() - attack_started
    seconds["total"] = time.perf_counter() - started
    meta = {"device": str(device), "torch": torch.__version__, "images": len(levels),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "threads": torch.get_num_threads(),
            "levels": sorted(set(levels)), "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "perceptual": cfg.perceptual, "full_losses": full_loss_kwargs(cfg)}
    return figures, meta
