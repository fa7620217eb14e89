"""The report's robustness-index study: Choi et al.'s attack-agnostic index (Sec. 5.2) and their Fig. 10.

For every model and image: the index of :func:`lit_sr.attacks.robustness_index` (the maximum, over
``n_samples`` uniform perturbations in ``[-alpha, alpha]``, of the L1 norm of the input gradient
of ``||f(X) - f(X0)||_2``) and the SR PSNR under one configured attack. Written as
``robustness_index.csv`` (one row per model and image), the scatter
``plots/index_vs_psnr_<dataset>.png`` (one point per image, one colour per model) and a table of
per-model means with the Spearman rank correlation of index and PSNR over all points (the paper
finds a larger index goes with a lower PSNR). YAML::

    robustness_index: {alpha: 1/255, n_samples: 64, attack: ifgsm, eps: 8/255}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_sr.attacks import robustness_index
from lit_sr.attacks.registry import plain_kinds
from lit_sr.attacks.spec import AttackRunner, eps_text, parse_eps, shape_batches
from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.pairs import ImagePair
from lit_sr.jobs.evaluate.settings import ReportSettings
from lit_sr.plots import index_scatter_figure, save_figure
from lit_sr.tables import fmt, markdown_lines, write_csv
from lit_sr.validation import check_int

INDEX_FIELDS = ("model", "dataset", "image", "index", "sr_psnr", "attack", "eps_255", "alpha_255", "n_samples")


@dataclass
class IndexStudy:
    """Choi's robustness index per image and model, against the SR PSNR under one attack.

    Args:
        alpha: half-width of the uniform perturbations (a number or ``"1/255"``; the paper: 1/255).
        n_samples: perturbations per image (the paper: 1024; the index is a maximum, so fewer
            samples can only lower it).
        batch_size: rows (image copies) per forward pass.
        attack: label of a per-image attack (ifgsm, pgd, square) of the ``attacks`` block whose
            SR PSNR is the scatter's y axis; ``None``: the first such attack.
        eps: its budget; ``None``: the grid's eps closest to 8/255.
        dataset: a key of ``datasets``; ``None``: the first.
        models: the models to measure; ``None``: all.
    """

    alpha: float | str = "1/255"
    n_samples: int = 1024
    batch_size: int = 64
    attack: str | None = None
    eps: float | str | None = None
    dataset: str | None = None
    models: list[str] | None = None


def resolve_index_study(cfg: ReportSettings, study: IndexStudy | None) -> IndexStudy | None:
    """Validate ``robustness_index`` against the config and fill its defaults (errors name the key)."""
    if study is None:
        return None
    if not isinstance(study, IndexStudy):
        raise ConfigError(f"robustness_index: expected a mapping with alpha, n_samples, attack, eps, got {study!r}")
    kinds = {a.label: a.kind for a in cfg.attacks}
    plain = [a for a, k in kinds.items() if k in plain_kinds()]
    attack = (plain[0] if plain else None) if study.attack is None else study.attack
    if kinds.get(attack) not in plain_kinds():
        raise ConfigError(f"robustness_index.attack: {attack!r} is not a per-image attack label "
                          f"({list(plain_kinds())}) of the attacks block {list(kinds)}")
    eps = min(cfg.eps, key=lambda e: abs(e - 8 / 255)) if study.eps is None else parse_eps(study.eps, "robustness_index.eps")
    dataset = next(iter(cfg.datasets)) if study.dataset is None else study.dataset
    if dataset not in cfg.datasets:
        raise ConfigError(f"robustness_index.dataset: {dataset!r} is not one of the datasets {list(cfg.datasets)}")
    models = list(cfg.models) if study.models is None else list(study.models)
    for name in models:
        if name not in cfg.models:
            raise ConfigError(f"robustness_index.models: {name!r} is not one of the models {list(cfg.models)}")
    try:
        n_samples = check_int(study.n_samples, "robustness_index.n_samples", 1)
        batch_size = check_int(study.batch_size, "robustness_index.batch_size", 1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return IndexStudy(alpha=parse_eps(study.alpha, "robustness_index.alpha"), n_samples=n_samples,
                      batch_size=batch_size, attack=attack, eps=eps, dataset=dataset, models=models)


def run_index_study(cfg: ReportSettings, models: Mapping[str, nn.Module], pairs: Sequence[ImagePair],
                    device: torch.device, progress: bool = True) -> dict:
    """One row per model and image: the robustness index and the SR PSNR under the study's attack."""
    study = cfg.robustness_index
    spec = next(a for a in cfg.attacks if a.label == study.attack)
    rows = []
    for name in tqdm(study.models, desc="robustness index", disable=not progress):
        model, scale = models[name], cfg.models[name].scale
        crop_border = scale if cfg.crop_border is None else cfg.crop_border
        runner = AttackRunner(spec, model, study.eps, seed=cfg.seed, autocast=cfg.autocast,
                              crop_border=crop_border, y_channel=cfg.y_channel)
        for idx in shape_batches([p.lr.shape for p in pairs], range(len(pairs)), cfg.batch_size):
            lr = torch.stack([pairs[i].lr for i in idx]).to(device)
            hr = torch.stack([pairs[i].hr for i in idx]).to(device)
            index = robustness_index(model, lr, alpha=study.alpha, n_samples=study.n_samples,
                                     batch_size=study.batch_size, seed=cfg.seed).cpu()
            _, metrics = runner.run(lr, hr)
            for j, i in enumerate(idx):
                rows.append({"model": name, "dataset": study.dataset, "image": pairs[i].name,
                             "index": float(index[j]), "sr_psnr": float(metrics["sr_psnr"][j]),
                             "attack": study.attack, "eps_255": round(study.eps * 255, 4),
                             "alpha_255": round(study.alpha * 255, 4), "n_samples": study.n_samples})
    return {"dataset": study.dataset, "attack": study.attack, "eps": study.eps, "alpha": study.alpha,
            "n_samples": study.n_samples, "rows": rows, "spearman": spearman([r["index"] for r in rows],
                                                                              [r["sr_psnr"] for r in rows])}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 points or a constant side."""
    if len(x) < 3:
        return float("nan")

    def ranks(values: Sequence[float]) -> torch.Tensor:
        v = torch.tensor(values, dtype=torch.float64)
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # ties share their average rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = rx.norm() * ry.norm()
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def write_index_study(out: Path, result: dict) -> tuple[dict[str, str], str]:
    """``robustness_index.csv`` and the scatter plot under ``out``; the written files and the summary section."""
    files = {"index_csv": str(write_csv(out / "robustness_index.csv", result["rows"], INDEX_FIELDS))}
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    points = {m: [(r["index"], r["sr_psnr"]) for r in result["rows"] if r["model"] == m] for m in models}
    fig = index_scatter_figure(points, f"SR PSNR under {result['attack']} at {eps_text(result['eps'])} vs "
                                       f"robustness index on {result['dataset']}")
    name = f"index_vs_psnr_{result['dataset']}.png"
    files["index_plot"] = str(save_figure(fig, out / "plots" / name))
    lines = [f"## Robustness index (Choi et al. Sec. 5.2) on {result['dataset']}", "",
             f"Per image: max over {result['n_samples']} uniform perturbations in +-{result['alpha'] * 255:g}/255 of "
             "the L1 norm of the input gradient of ||f(X) - f(X0)||_2 (larger = more sensitive), and the SR PSNR "
             f"under {result['attack']} at {eps_text(result['eps'])}. Means over the images:", ""]
    table = []
    for m in models:
        idx = [r["index"] for r in result["rows"] if r["model"] == m]
        ps = [r["sr_psnr"] for r in result["rows"] if r["model"] == m]
        table.append([m, fmt(sum(idx) / len(idx), ".1f"), fmt(sum(ps) / len(ps)), str(len(idx))])
    lines += markdown_lines(["model", "robustness index", "SR PSNR (dB)", "images"], table)
    lines += ["", f"Spearman rank correlation of index and SR PSNR over all points: {fmt(result['spearman'])} "
                  "(the paper: negative, a larger index goes with a lower PSNR).", "",
              f"![SR PSNR vs robustness index](plots/{name})", ""]
    return files, "\n".join(lines)
