"""The claims' tables, plots and verdicts: ``claims.md``, ``claims.json``, ``claim_<x>.csv`` and
``plots/claim_<x>_*.png`` (one table and one plot per claim).

A verdict compares two per-image PSNR drops on the same images: the mean paired difference and its
paired bootstrap 95% interval (``bootstrap`` resamples of the images, seeded). "holds" when the
interval lies on the claimed side of 0 and the mean difference is at least ``min_effect`` dB,
"the opposite holds" in the mirror case, "negligible" when the interval excludes 0 but the mean is
smaller than ``min_effect``, "not resolved at this scale" when the interval contains 0, and "too
few images" below three images (an interval of one or two images means nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from lit_sr.attacks.spec import eps_text
from lit_sr.io import atomic_write
from lit_sr.jobs.evaluate.writers import write_json
from lit_sr.jobs.refsr_claims.config import ClaimsConfig
from lit_sr.jobs.refsr_claims.measure import ENSEMBLE, NOISE, Figures
from lit_sr.plots import grouped_bars_figure, save_figure, transfer_figure
from lit_sr.tables import markdown_lines, write_csv

ROW_FIELDS = ("claim", "model", "source", "n_images", "clean_hr_psnr", "lr_up_ref_sr_psnr", "sr_psnr", "drop",
              "drop_std", "ref_psnr")


def paired_interval(diff: torch.Tensor, resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean of ``diff`` and the percentile-bootstrap 95% interval of the mean (resampling images)."""
    n = diff.numel()
    index = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    means = diff[index].mean(dim=1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return float(diff.mean()), low, high


MIN_IMAGES = 3


def verdict(diff: torch.Tensor, resamples: int, seed: int, min_effect: float = 0.05) -> dict:
    """The verdict on "``diff`` > 0" (see the module docstring), with its figures."""
    mean, low, high = paired_interval(diff, resamples, seed)
    if diff.numel() < MIN_IMAGES:
        text = "too few images"
    elif low > 0 or high < 0:
        text = ("negligible" if abs(mean) < min_effect else "holds" if low > 0 else "the opposite holds")
    else:
        text = "not resolved at this scale"
    return {"mean": mean, "low": low, "high": high, "n": diff.numel(), "verdict": text}


def _row(figures: Figures, group: str, claim: str, model: str, source: str) -> dict:
    drop = figures.get(group, source, model, "drop")
    return {"claim": claim, "model": model, "source": source, "n_images": drop.numel(),
            "clean_hr_psnr": float(figures.get(group, "clean", model, "hr_psnr").mean()),
            "lr_up_ref_sr_psnr": float(figures.get(group, "lr_up_ref", model, "sr_psnr").mean()),
            "sr_psnr": float(figures.get(group, source, model, "sr_psnr").mean()), "drop": float(drop.mean()),
            "drop_std": float(drop.std()) if drop.numel() > 1 else 0.0,
            "ref_psnr": float(figures.get(group, source, "-", "ref_psnr").mean())}


def claim_rows(figures: Figures, cfg: ClaimsConfig) -> dict[str, list[dict]]:
    """Rows of the three claims: (a) own attack and noise per model, (b) per continuation, (c) source x target."""
    archs = list(cfg.models)
    losses = [f"{cfg.loss_model}-rec", f"{cfg.loss_model}-full"]
    return {
        "a": [_row(figures, "arch", "a", m, s) for m in archs for s in (m, NOISE)],
        "b": [_row(figures, "loss", "b", m, s) for m in losses for s in (m, NOISE)],
        "c": [_row(figures, "arch", "c", t, s) for s in [*cfg.ensemble, ENSEMBLE, NOISE] for t in cfg.ensemble],
    }


def claim_verdicts(figures: Figures, cfg: ClaimsConfig, full_reference: Sequence[str]) -> dict[str, list[dict]]:
    """Each claim's comparisons, as ``{"question", "mean", "low", "high", "n", "verdict"}``."""
    drop = lambda g, s, t: figures.get(g, s, t, "drop")  # noqa: E731
    a = []
    for big in full_reference:
        for other in cfg.models:
            if other not in full_reference:
                a.append({"question": f"{big} loses more PSNR to RefSR-Adv than {other}",
                          **verdict(drop("arch", big, big) - drop("arch", other, other), cfg.bootstrap, cfg.seed, cfg.min_effect)})
    for model in cfg.models:
        a.append({"question": f"RefSR-Adv beats same-eps noise on {model}",
                  **verdict(drop("arch", model, model) - drop("arch", NOISE, model), cfg.bootstrap, cfg.seed, cfg.min_effect)})
    rec, full = f"{cfg.loss_model}-rec", f"{cfg.loss_model}-full"
    b = [{"question": f"the full-loss {cfg.loss_model} loses more PSNR to RefSR-Adv than the rec-only one",
          **verdict(drop("loss", full, full) - drop("loss", rec, rec), cfg.bootstrap, cfg.seed, cfg.min_effect)}]
    c = []
    for target in cfg.ensemble:
        c.append({"question": f"the ensemble's reference beats same-eps noise on {target}",
                  **verdict(drop("arch", ENSEMBLE, target) - drop("arch", NOISE, target), cfg.bootstrap, cfg.seed, cfg.min_effect)})
        for source in cfg.ensemble:
            if source != target:
                c.append({"question": f"{source}'s reference transfers to {target} (beats same-eps noise)",
                          **verdict(drop("arch", source, target) - drop("arch", NOISE, target), cfg.bootstrap,
                                    cfg.seed, cfg.min_effect)})
    return {"a": a, "b": b, "c": c}


def _bars(rows: list[dict], title: str):
    """PSNR drop per model, its own RefSR-Adv next to same-eps noise (error bars: one standard deviation)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    pick = {(r["model"], r["source"] == NOISE): (r["drop"], r["drop_std"]) for r in rows}
    series = {"RefSR-Adv": [pick[m, False] for m in models], "noise": [pick[m, True] for m in models]}
    return grouped_bars_figure(models, series, "PSNR drop vs HR (dB, Y)", title)


def _table(rows: list[dict], with_source: bool) -> list[str]:
    head = ["model", *(["reference from"] if with_source else []), "clean PSNR vs HR", "SR PSNR, LR-up as ref",
            "SR PSNR vs clean", "PSNR drop (± sd)", "ref PSNR"]
    cells = ([r["model"], *(["RefSR-Adv" if r["source"] == r["model"] else r["source"]] if with_source else []),
              f"{r['clean_hr_psnr']:.2f}", f"{r['lr_up_ref_sr_psnr']:.2f}", f"{r['sr_psnr']:.2f}",
              f"{r['drop']:.2f} ± {r['drop_std']:.2f}", f"{r['ref_psnr']:.1f}"] for r in rows)
    return markdown_lines(head, cells)


def _matrix(rows: list[dict], cfg: ClaimsConfig, key: str) -> tuple[list[str], list[list[float]]]:
    sources = [*cfg.ensemble, ENSEMBLE, NOISE]
    by = {(r["source"], r["model"]): r[key] for r in rows}
    return sources, [[by[s, t] for t in cfg.ensemble] for s in sources]


def _verdict_lines(verdicts: list[dict]) -> list[str]:
    head = ["question", "mean difference of PSNR drops (dB)", "95% interval", "n", "verdict"]
    return markdown_lines(head, ([v["question"], f"{v['mean']:+.2f}", f"[{v['low']:+.2f}, {v['high']:+.2f}]",
                                  str(v["n"]), f"**{v['verdict']}**"] for v in verdicts))


def write_claims(out: Path, cfg: ClaimsConfig, figures: Figures, meta: Mapping, full_reference: Sequence[str]) -> dict:
    """Write every file of the claims into ``out``; return their paths."""
    rows, verdicts = claim_rows(figures, cfg), claim_verdicts(figures, cfg, full_reference)
    files = {f"csv_{k}": write_csv(out / f"claim_{k}.csv", v, ROW_FIELDS) for k, v in rows.items()}
    files["json"] = write_json(out / "claims.json", {"meta": dict(meta), "rows": rows, "verdicts": verdicts})
    eps = eps_text(cfg.eps)
    files["plot_a"] = save_figure(_bars(rows["a"], f"(a) architectures: RefSR-Adv vs noise, eps {eps}"),
                                  out / "plots" / "claim_a_architectures.png")
    files["plot_b"] = save_figure(_bars(rows["b"], f"(b) {cfg.loss_model}: rec-only vs full losses, eps {eps}"),
                                  out / "plots" / "claim_b_losses.png")
    sources, matrix = _matrix(rows["c"], cfg, "drop")
    files["plot_c"] = save_figure(
        transfer_figure(list(cfg.ensemble), matrix, f"(c) transfer: PSNR drop, eps {eps} (higher = more damage)",
                        sources=sources, value_label="PSNR drop vs HR (dB, Y)"), out / "plots" / "claim_c_transfer.png")
    with atomic_write(out / "claims.md") as tmp:
        tmp.write_text(claims_markdown(cfg, rows, verdicts, meta))
    files["summary"] = out / "claims.md"
    return {k: str(v) for k, v in files.items()}


def claims_markdown(cfg: ClaimsConfig, rows: Mapping[str, list[dict]], verdicts: Mapping[str, list[dict]],
                    meta: Mapping) -> str:
    eps = eps_text(cfg.eps)
    perceptual = ("with the perceptual term (VGG19 relu5_1)" if meta["perceptual"] else
                  "**without** the perceptual term (no VGG19 file given: a random VGG would measure nothing)")
    full = {k: v for k, v in meta["full_losses"].items() if k not in ("vgg_weights",)}
    sources, matrix = _matrix(rows["c"], cfg, "drop")
    lines = [
        "# RefSR-Adv's claims measured", "",
        f"Config `{cfg.source}`; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; device {meta['device']}; torch "
        f"{meta['torch']}; {meta['images']} test images (levels {meta['levels']}); wall seconds {meta['seconds']}; "
        f"process CPU seconds {meta['cpu_seconds']} ({meta['threads']} thread(s)).", "",
        f"Every model: {cfg.steps} training batches, L1, Adam lr {cfg.lr:g}, the same data order (seed {cfg.seed}). "
        f"Attacks: RefSR-Adv, eps {eps}, {cfg.attack_steps} PGD steps, random start; noise: uniform in [-eps, eps] "
        "on the reference. **PSNR drop** = PSNR(clean output, HR) - PSNR(attacked output, HR), Y channel, "
        f"crop {cfg.scale}; *SR PSNR vs clean* = attacked vs clean output; *SR PSNR, LR-up as ref* = the clean "
        "output against the output with the bicubic-upsampled LR as the reference (how much the model takes "
        "from its reference: lower = more). Verdicts: paired bootstrap 95% interval of the mean difference.", "",
        "## (a) Full-resolution reference (DATSR) vs downsampled reference (TTSR, MASA)", "",
        *_table(rows["a"], True), "", *_verdict_lines(verdicts["a"]), "",
        "![claim a](plots/claim_a_architectures.png)", "",
        f"## (b) {cfg.loss_model}: reconstruction-only vs full-loss checkpoint", "",
        f"Both continue the (a) {cfg.loss_model} for {cfg.finetune_steps} batches from the same weights on the same "
        f"batches: L1 only, or the full losses {perceptual}: `{full}`.", "",
        *_table(rows["b"], True), "", *_verdict_lines(verdicts["b"]), "",
        "![claim b](plots/claim_b_losses.png)", "",
        "## (c) One reference against all models, and transfer", "",
        f"Rows: whose RefSR-Adv reference is used (`{ENSEMBLE}`: one perturbation optimised against "
        f"{' + '.join(cfg.ensemble)} together, the sum of their squared output changes; `{NOISE}`: same-eps "
        "noise); columns: the attacked model; cells: mean PSNR drop (dB).", "",
        *markdown_lines(["reference from", *cfg.ensemble],
                        ([s, *(f"{v:.2f}" for v in vals)] for s, vals in zip(sources, matrix))), "",
        *_verdict_lines(verdicts["c"]), "", "![claim c](plots/claim_c_transfer.png)", "",
    ]
    return "\n".join(lines)
