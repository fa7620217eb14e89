"""Running a robustness report: models, images, the attack / transfer / defense loops, and :func:`run_report`."""

from __future__ import annotations

import platform
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.archs import arch_kwargs_with_scale, build_arch, count_parameters
from lit_sr.attacks import Attack, transfer_matrix
from lit_sr.attacks.export import AdversarialSink
from lit_sr.attacks.spec import AttackRunner, AttackSpec, eps_label, shape_batches
from lit_sr.defenses import INPUT_DEFENSES, evaluate_defense
from lit_sr.errors import ConfigError
from lit_sr.io import list_images, load_weights
from lit_sr.jobs.evaluate.config import ModelSpec, ReportConfig
from lit_sr.jobs.evaluate.downstream import DownstreamModels
from lit_sr.jobs.evaluate.pairs import ImagePair, load_pairs
from lit_sr.jobs.evaluate.studies import run_robust_studies, write_robust_studies
from lit_sr.jobs.evaluate.writers import write_report
from lit_sr.runtime import Autocast, resolve_device


def check_paths(cfg: ReportConfig) -> None:
    """Raise ``FileNotFoundError`` naming the first missing data folder or weights file, before any compute."""
    for name, folder in cfg.datasets.items():
        try:
            list_images(folder)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"datasets.{name}: {exc}") from None
    for name, spec in cfg.models.items():
        if spec.weights is not None and not Path(spec.weights).is_file():
            raise FileNotFoundError(
                f"models.{name}.weights: file not found: {spec.weights} (model-zoo weights are never "
                f"downloaded; put the file there, change the path or pass --models.{name}.weights PATH)"
            )


def build_model(spec: ModelSpec, device: torch.device, name: str = "model") -> nn.Module:
    """Build a model of the report, load its weights and put it on ``device`` in eval mode.

    ``name`` is its key in ``models``, for the error messages.
    """
    scale = 4 if spec.scale is None else spec.scale
    try:
        net = build_arch(spec.arch, **arch_kwargs_with_scale(spec.arch, spec.arch_kwargs, scale))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"models.{name}: {exc}") from None
    if spec.weights is not None:
        load_weights(net, spec.weights, key=spec.weights_key, strict=spec.strict)
    elif count_parameters(net) and not spec.random_init:
        raise ConfigError(
            f"models.{name}.weights is required: {spec.arch} has {count_parameters(net):,} parameters and a "
            f"report on random weights measures nothing (pass --models.{name}.weights PATH, or set "
            "random_init: true to do it deliberately)"
        )
    return net.to(device).eval()


# --------------------------------------------------------------------------- running


def _batch(pairs: Sequence[ImagePair], idx: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lr = torch.stack([pairs[i].lr for i in idx]).to(device)
    hr = torch.stack([pairs[i].hr for i in idx]).to(device)
    return lr, hr


def evaluate_attack(
    model: nn.Module,
    pairs: Sequence[ImagePair],
    spec: AttackSpec,
    eps: float,
    *,
    device: torch.device,
    batch_size: int = 8,
    seed: int = 0,
    autocast: Autocast = "none",
    crop_border: int = 0,
    y_channel: bool = True,
    on_batch: Callable[[list[int], torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    keep: AdversarialSink | None = None,
) -> dict:
    """Mean metrics of one attack at one eps over a data set (one row of the report).

    ``on_batch(idx, lr, hr, adversarial lr)`` sees every attacked batch (the downstream columns);
    ``keep`` writes the adversarial images and their metrics (``save_adversarial``).

    The universal attack is fitted on every image wide enough for its crop, then applied to
    them; narrower images are skipped and counted in ``skipped``. All arguments as in
    :class:`AttackRunner`; ``pairs`` from :func:`load_pairs`.
    """
    start = time.perf_counter()
    runner = AttackRunner(spec, model, eps, seed=seed, autocast=autocast, crop_border=crop_border,
                          y_channel=y_channel, batch_size=batch_size)
    usable = [i for i, p in enumerate(pairs) if runner.accepts(p.lr)]
    values: dict[str, list[torch.Tensor]] = defaultdict(list)
    if usable:
        runner.fit([(pairs[i].lr, pairs[i].hr) for i in usable])
        for idx in shape_batches([p.lr.shape for p in pairs], usable, batch_size):
            lr, hr = _batch(pairs, idx, device)
            adv, metrics = runner.run(lr, hr)
            if on_batch is not None:
                on_batch(list(idx), lr, hr, adv)
            if keep is not None:
                names = {"path": [pairs[i].name for i in idx], "index": torch.tensor(list(idx))}
                keep.add(names, adv, lr, spec.label, eps, metrics)
            for key, value in metrics.items():
                values[key].append(value)
    row = {"attack": spec.label, "kind": spec.kind, "eps": eps, "eps_255": round(eps * 255, 4),
           "n_images": len(usable), "skipped": len(pairs) - len(usable)}
    for key in spec.metric_keys():
        row[key] = float(torch.cat(values[key]).mean()) if values.get(key) else float("nan")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def run_transfer(cfg: ReportConfig, models: Mapping[str, nn.Module], pairs: Sequence[ImagePair],
                 device: torch.device) -> dict:
    """The transferability matrix (:func:`lit_sr.attacks.transfer_matrix`) over a data set, image-weighted.

    ``transfer_matrix`` takes one batch of equal-size images, so it runs once per image size and
    the matrices are averaged with the number of images of each size as weights.
    """
    ts = cfg.transfer
    spec = next(a for a in cfg.attacks if a.label == ts.attack)
    pairs = list(pairs)[: ts.max_images]
    scale = next(iter(cfg.models.values())).scale
    crop_border = scale if cfg.crop_border is None else cfg.crop_border

    def factory(model: nn.Module) -> Attack:
        return AttackRunner(spec, model, ts.eps, seed=cfg.seed, autocast=cfg.autocast).attack

    sr_sum = hr_sum = None
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[tuple(p.lr.shape)].append(i)
    for idx in groups.values():
        lr, hr = _batch(pairs, idx, device)
        res = transfer_matrix(dict(models), lr, hr, attack_factory=factory, batch_size=cfg.batch_size,
                              crop_border=crop_border, y_channel=cfg.y_channel)
        weight = len(idx) / len(pairs)
        sr_sum = res["sr_psnr"] * weight if sr_sum is None else sr_sum + res["sr_psnr"] * weight
        hr_sum = res["hr_psnr"] * weight if hr_sum is None else hr_sum + res["hr_psnr"] * weight
    return {"dataset": ts.dataset, "attack": ts.attack, "eps": ts.eps, "eps_255": round(ts.eps * 255, 4),
            "n_images": len(pairs), "names": list(models), "sr_psnr": sr_sum.tolist(), "hr_psnr": hr_sum.tolist()}


def run_defense(model: nn.Module, pairs: Sequence[ImagePair], kind: str, params: dict, spec: AttackSpec, eps: float,
                *, device: torch.device, batch_size: int, seed: int, autocast: Autocast, crop_border: int,
                y_channel: bool) -> dict:
    """Mean naive / adaptive / worst-case metrics of one defense (:func:`lit_sr.defenses.evaluate_defense`)."""
    defense = INPUT_DEFENSES[kind](model, **params).to(device)

    def factory(target: nn.Module) -> Attack:
        return AttackRunner(spec, target, eps, seed=seed, autocast=autocast).attack

    values: dict[str, list[torch.Tensor]] = defaultdict(list)
    for idx in shape_batches([p.lr.shape for p in pairs], range(len(pairs)), batch_size):
        lr, hr = _batch(pairs, idx, device)
        res = evaluate_defense(model, defense, lr, factory, hr=hr, crop_border=crop_border, y_channel=y_channel)
        for key, value in res.items():
            values[key].append(value.double().cpu())
    return {key: float(torch.cat(v).mean()) for key, v in values.items()}


class _PairCache:
    """Each data set's image pairs, loaded once per scale."""

    def __init__(self, cfg: ReportConfig):
        self.cfg = cfg
        self._pairs: dict[tuple[str, int], list[ImagePair]] = {}

    def __call__(self, dataset: str, scale: int) -> list[ImagePair]:
        if (dataset, scale) not in self._pairs:
            cfg = self.cfg
            self._pairs[dataset, scale] = load_pairs(cfg.datasets[dataset], scale, cfg.max_images, cfg.crop_size)
        return self._pairs[dataset, scale]


def _crop_border(cfg: ReportConfig, scale: int) -> int:
    return scale if cfg.crop_border is None else cfg.crop_border


def _attack_rows(cfg: ReportConfig, models: Mapping[str, nn.Module], pairs_of: _PairCache, device: torch.device,
                 progress: bool, downstream: DownstreamModels | None = None, out: Path | None = None) -> list[dict]:
    rows = []
    total = len(models) * len(cfg.datasets) * len(cfg.attacks) * len(cfg.eps)
    with tqdm(total=total, desc="robustness", disable=not progress) as bar:
        for name, model in models.items():
            scale = cfg.models[name].scale
            for dataset in cfg.datasets:
                pairs = pairs_of(dataset, scale)
                for spec in cfg.attacks:
                    for eps in cfg.eps:
                        bar.set_postfix_str(f"{name} {dataset} {spec.label} {eps_label(eps)}")
                        tally = None if downstream is None else downstream.tally(model, dataset, pairs)
                        keep = (AdversarialSink(out / "adversarial" / name / dataset / spec.label / eps_label(eps))
                                if cfg.save_adversarial and out is not None else None)
                        row = evaluate_attack(model, pairs, spec, eps, device=device, batch_size=cfg.batch_size,
                                              seed=cfg.seed, autocast=cfg.autocast,
                                              crop_border=_crop_border(cfg, scale), y_channel=cfg.y_channel,
                                              on_batch=tally, keep=keep)
                        if keep is not None and keep.rows:
                            keep.close()
                        row.update(tally.row() if tally is not None else {})
                        if row["skipped"]:
                            warnings.warn(f"{spec.label} on {dataset}: {row['skipped']} image(s) narrower than the "
                                          f"universal crop were skipped", stacklevel=3)
                        rows.append({"model": name, "dataset": dataset, **row})
                        bar.update(1)
    return rows


def _defense_rows(cfg: ReportConfig, models: Mapping[str, nn.Module], pairs_of: _PairCache, device: torch.device,
                  progress: bool) -> list[dict]:
    study = cfg.defenses
    spec = next(a for a in cfg.attacks if a.label == study.attack)
    jobs = [(n, d, label, e) for n in models for d in study.datasets for label in study.methods for e in study.eps]
    rows = []
    for name, dataset, label, eps in tqdm(jobs, desc="defenses", disable=not progress):
        scale = cfg.models[name].scale
        params = dict(study.methods[label])
        kind = params.pop("defense")
        pairs = pairs_of(dataset, scale)
        res = run_defense(models[name], pairs, kind, params, spec, eps, device=device, batch_size=cfg.batch_size,
                          seed=cfg.seed, autocast=cfg.autocast, crop_border=_crop_border(cfg, scale),
                          y_channel=cfg.y_channel)
        rows.append({"model": name, "dataset": dataset, "defense": label, "kind": kind, "attack": study.attack,
                     "eps": eps, "eps_255": round(eps * 255, 4), "n_images": len(pairs), **res})
    return rows


def _meta(cfg: ReportConfig, device: torch.device, seconds: float) -> dict:
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "config": cfg.source,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "machine": machine,
        "torch": torch.__version__,
        "seconds": round(seconds, 1),
        "metric_convention": f"{'Y (BT.601)' if cfg.y_channel else 'RGB'}, 8-bit, crop_border="
                             f"{'scale' if cfg.crop_border is None else cfg.crop_border}",
    }


def run_report(cfg: ReportConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run the whole report of a config and write its files; return rows, transfer, defenses and file paths.

    Every data folder and weights file is checked before any compute (:func:`check_paths`).

    Args:
        cfg: a :class:`ReportConfig` (:func:`load_config`, :func:`parse_config`).
        out_dir: output folder (default ``cfg.out``).
        progress: show tqdm progress bars.
    """
    started = time.perf_counter()
    out = Path(out_dir if out_dir is not None else cfg.out)
    check_paths(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    models = {name: build_model(spec, device, name) for name, spec in cfg.models.items()}
    pairs_of = _PairCache(cfg)
    downstream = None if cfg.downstream is None else DownstreamModels(cfg.downstream, cfg.datasets, device)
    rows = _attack_rows(cfg, models, pairs_of, device, progress, downstream, out)
    transfer = None
    if cfg.transfer is not None:
        scale = next(iter(cfg.models.values())).scale
        transfer = run_transfer(cfg, models, pairs_of(cfg.transfer.dataset, scale), device)
    defense_rows = _defense_rows(cfg, models, pairs_of, device, progress) if cfg.defenses is not None else []
    studies = run_robust_studies(cfg, models, pairs_of, device, progress)
    meta = _meta(cfg, device, time.perf_counter() - started)
    files = write_report(out, cfg, rows, transfer, defense_rows, meta)
    files.update(write_robust_studies(out, studies, files["summary"], files["json"]))
    return {"rows": rows, "transfer": transfer, "defenses": defense_rows, "meta": meta, "files": files, **studies}
