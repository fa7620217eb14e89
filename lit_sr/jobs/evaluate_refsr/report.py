"""The robustness report's RefSR mode: attacks on the reference (and their contrasts) stratified by similarity level.

RefSR-Adv's Table IV reports the damage per CUFED5 similarity level (1 most similar ... 5 least):
the more similar the reference, the more the network copies from it and the larger the drop.
:func:`run_refsr_report` measures that table for one RefSR model on the test sets of a RefSR data
module (every image's ``level`` comes with its batch), with, per level:

* every configured attack (:mod:`lit_sr.attacks.refsr_spec`): RefSR-Adv and the query-only
  Square Attack on the reference (its query budget in the table), and PGD on the LR input (the
  single-image attack on the same model, same budget);
* uniform noise of the same eps on the reference (the random baseline);
* optionally one or more configurations of the similarity-gated defense
  (:mod:`lit_sr.defenses.refsr`) against the naive and the adaptive RefSR-Adv, with their clean cost.

Written atomically into ``out``: ``refsr_results.csv`` / ``.json`` (one row per level x row x eps,
the mean of every metric), ``refsr_summary.md`` (the table by level) and
``plots/refsr_by_level.png`` (SR PSNR vs clean output against the level, one line per row).
The command line is ``lit-sr evaluate-refsr --config configs/evaluate_refsr/quick.yaml``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from tqdm.auto import tqdm

from lit_sr.attacks.refsr_adv import uniform_noise
from lit_sr.attacks.refsr_spec import RefSRAttackRunner, parse_refsr_attacks, refsr_predict
from lit_sr.attacks.spec import eps_text, parse_eps_list
from lit_sr.defenses.refsr import SimilarityGatedTTSR, evaluate_refsr_defense
from lit_sr.errors import ConfigError
from lit_sr.io import atomic_write
from lit_sr.jobs.evaluate.config import ModelSpec
from lit_sr.jobs.evaluate.runner import build_model
from lit_sr.jobs.evaluate.writers import write_json
from lit_sr.metrics import psnr, ssim
from lit_sr.plots import save_figure
from lit_sr.runtime import AUTOCAST_CHOICES, Autocast, resolve_device
from lit_sr.tables import fmt, markdown_lines, write_csv
from lit_sr.validation import check_int

DEFAULT_REFSR_ATTACKS = {
    "refsr_adv": {"steps": 50},
    "ref_square": {"n_queries": 1000},
    "lr_pgd": {"attack": "pgd", "steps": 50},
}
NOISE_ROW = "ref_noise"
RESULT_FIELDS = (
    "level", "row", "kind", "eps", "eps_255", "n_images", "queries", "sr_psnr", "sr_ssim", "hr_psnr", "hr_ssim",
    "clean_hr_psnr", "ref_psnr", "lr_psnr", "undefended_sr_psnr", "naive_sr_psnr", "adaptive_sr_psnr",
    "worst_sr_psnr", "defended_clean_hr_psnr", "worst_hr_psnr", "gate_open",
)  # fmt: skip


@dataclass
class RefSRReportConfig:
    """A RefSR report (validated on construction; a bad value raises ``ConfigError`` naming its key).

    Args:
        model: the RefSR network (:class:`~lit_sr.jobs.evaluate.config.ModelSpec`; ``arch: ttsr``).
        data: a RefSR data module with ``setup``, ``test_dataloader`` (one loader per test set)
            and batches ``{"lr", "ref", "hr", "level"}`` (``datamodules.refsr``'s modules).
        attacks: label -> parameters of :func:`lit_sr.attacks.refsr_spec.parse_refsr_attacks`
            (default RefSR-Adv 50 steps, Square on the reference 1000 queries, PGD on the LR 50 steps).
        eps: budgets on the [0, 1] scale, numbers or strings like ``"8/255"``.
        noise: add the uniform-noise row (same eps, on the reference).
        defenses: label -> constructor arguments of :class:`~lit_sr.defenses.refsr.SimilarityGatedTTSR`
            (``threshold``, ``temperature``, ``purify``, ``hard`` ...), or ``None`` for no defense
            rows. Each is attacked with RefSR-Adv of ``defense_steps`` steps, naive and adaptive.
        defense_steps: PGD steps of the defense's attacks (default: the ``refsr_adv`` entry's).
        max_images: the first N images of each test set; ``None``: all.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:<n>``.
        seed: seed of the attacks and the noise.
        y_channel: SR-side metrics on BT.601 Y.
        crop_border: SR-side border crop; ``None`` means the model's scale.
        autocast: ``"none"`` or ``"bf16"`` for the forward passes.
        out: output folder.
    """

    model: ModelSpec
    data: LightningDataModule
    attacks: dict[str, dict[str, Any] | None] = field(default_factory=lambda: dict(DEFAULT_REFSR_ATTACKS))
    eps: list[float | str] = field(default_factory=lambda: ["8/255"])
    noise: bool = True
    defenses: dict[str, dict[str, Any]] | None = None
    defense_steps: int | None = None
    max_images: int | None = None
    device: str = "auto"
    seed: int = 0
    y_channel: bool = True
    crop_border: int | None = None
    autocast: Autocast = "none"
    out: str = "runs/refsr_report"
    source: str = field(default="<dict>", init=False)

    def __post_init__(self) -> None:
        self.specs = parse_refsr_attacks(self.attacks, "attacks")
        self.eps = parse_eps_list(self.eps)
        if self.autocast not in AUTOCAST_CHOICES:
            raise ConfigError(f"autocast: expected one of {list(AUTOCAST_CHOICES)}, got {self.autocast!r}")
        for name in ("max_images", "crop_border", "defense_steps"):
            if getattr(self, name) is not None:
                setattr(self, name, _int(getattr(self, name), name, 1 if name != "crop_border" else 0))
        self.seed = _int(self.seed, "seed", 0)
        for member in ("setup", "test_dataloader"):
            if not callable(getattr(self.data, member, None)):
                raise ConfigError(f"data: {type(self.data).__name__} has no {member}(); expected a RefSR data module "
                                  "(datamodules.refsr.EmbeddedRefPairsDataModule, CUFEDDataModule)")
        if self.defenses is not None:
            if not isinstance(self.defenses, Mapping) or not self.defenses:
                raise ConfigError("defenses: expected a mapping label -> SimilarityGatedTTSR arguments, or null")
            taken = {s.label for s in self.specs} | {"clean", NOISE_ROW}
            for label in self.defenses:
                if label in taken:
                    raise ConfigError(f"defenses.{label}: the label is already a row of the report ({sorted(taken)})")
            self.defenses = {label: dict(kw or {}) for label, kw in self.defenses.items()}
            if self.defense_steps is None:
                steps = [s.kwargs.get("steps", 50) for s in self.specs if s.kind == "refsr_adv"]
                self.defense_steps = steps[0] if steps else 50


def _int(value, where: str, minimum: int) -> int:
    try:
        return check_int(value, where, minimum)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


class _Means:
    """Running per-(level, row, eps) lists of per-image values, averaged at the end."""

    def __init__(self) -> None:
        self.values: dict[tuple[int, str, float], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, levels: torch.Tensor, row: str, eps: float, metrics: Mapping[str, torch.Tensor]) -> None:
        for name, values in metrics.items():
            for level, value in zip(levels.tolist(), values.tolist()):
                self.values[int(level), row, eps][name].append(float(value))

    def rows(self, kinds: Mapping[str, str], queries: Mapping[str, int]) -> list[dict]:
        out = []
        for (level, row, eps), metrics in sorted(self.values.items(), key=lambda kv: (kv[0][0], kv[0][2])):
            n = max(len(v) for v in metrics.values())
            means = {k: sum(v) / len(v) for k, v in metrics.items()}
            out.append({"level": level, "row": row, "kind": kinds[row], "eps": eps, "eps_255": round(eps * 255, 4),
                        "n_images": n, "queries": queries.get(row), **means})
        return out


def _batches(cfg: RefSRReportConfig) -> Iterable[dict]:
    cfg.data.setup("test")
    loaders = cfg.data.test_dataloader()
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        seen = 0
        for batch in loader:
            if cfg.max_images is not None and seen >= cfg.max_images:
                break
            for key in ("lr", "ref", "hr", "level"):
                if key not in batch:
                    raise ValueError(f"data: test batches need {key!r} (RefSR batches {{lr, ref, hr, level}}), got "
                                     f"{sorted(batch)}")
            yield batch
            seen += batch["lr"].shape[0]


def run_refsr_report(cfg: RefSRReportConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run the RefSR report of ``cfg`` and write its files; return the rows, meta and written paths."""
    started = time.perf_counter()
    out = Path(out_dir if out_dir is not None else cfg.out)
    if cfg.model.weights is not None and not Path(cfg.model.weights).is_file():
        raise FileNotFoundError(f"model.weights: file not found: {cfg.model.weights} (pass --model.weights PATH)")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, device, "model")
    scale = cfg.model.scale or 4
    crop_border = scale if cfg.crop_border is None else cfg.crop_border
    defenses = {}
    for label, kwargs in (cfg.defenses or {}).items():
        try:
            defenses[label] = SimilarityGatedTTSR(model, **kwargs).to(device)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"defenses.{label}: {exc}") from None
    means = _Means()
    kw = {"crop_border": crop_border, "y_channel": cfg.y_channel}
    for index, batch in enumerate(tqdm(_batches(cfg), desc="refsr report", unit="batch", disable=not progress)):
        lr, ref, hr = (batch[k].to(device).float() for k in ("lr", "ref", "hr"))
        levels = torch.as_tensor(batch["level"]).view(-1)
        seed = cfg.seed + index
        clean = refsr_predict(model, lr, ref, cfg.autocast)
        for eps in cfg.eps:
            means.add(levels, "clean", eps, {"hr_psnr": psnr(clean, hr, **kw).double().cpu(),
                                             "hr_ssim": ssim(clean, hr, **kw).double().cpu()})
            for spec in cfg.specs:
                runner = RefSRAttackRunner(spec, model, eps, seed=seed, autocast=cfg.autocast, **kw)
                means.add(levels, spec.label, eps, runner.run(lr, ref, hr)[1])
            if cfg.noise:
                noisy = uniform_noise(ref, eps, torch.Generator(device=device).manual_seed(seed))
                attacked = refsr_predict(model, lr, noisy, cfg.autocast)
                means.add(levels, NOISE_ROW, eps, {
                    "ref_psnr": psnr(noisy, ref).double().cpu(), "sr_psnr": psnr(attacked, clean, **kw).double().cpu(),
                    "sr_ssim": ssim(attacked, clean, **kw).double().cpu(), "hr_psnr": psnr(attacked, hr, **kw).double().cpu()})
            for label, defense in defenses.items():
                res = evaluate_refsr_defense(model, defense, lr, ref, hr, eps=eps, steps=cfg.defense_steps, seed=seed,
                                             autocast=cfg.autocast, **kw)
                means.add(levels, label, eps, res)
    kinds = {s.label: s.kind for s in cfg.specs} | {"clean": "none", NOISE_ROW: "uniform"} | dict.fromkeys(defenses, "defense")
    queries = {s.label: s.kwargs.get("n_queries", 1000) + 1 for s in cfg.specs if s.kind in ("ref_square", "square")}
    rows = means.rows(kinds, queries)
    meta = {"config": cfg.source, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": str(device), "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1),
            "metric_convention": f"{'Y (BT.601)' if cfg.y_channel else 'RGB'}, 8-bit, crop_border={crop_border}",
            "attacks": {s.label: {"kind": s.kind, **s.kwargs} for s in cfg.specs}, "defenses": cfg.defenses,
            "defense_steps": cfg.defense_steps}
    return {"rows": rows, "meta": meta, "files": write_refsr_report(out, rows, meta, cfg.eps)}


# --------------------------------------------------------------------------- writers


def _cell(row: Mapping | None, key: str, digits: int = 2) -> str:
    return fmt(None if row is None else row.get(key), f".{digits}f")


def refsr_table(rows: list[dict], eps: float) -> list[str]:
    """The Markdown table by similarity level at one eps (the paper's Table IV pattern, with the contrasts)."""
    by = {(r["level"], r["row"]): r for r in rows if r["eps"] == eps}
    levels = sorted({level for level, _ in by})
    names = list(dict.fromkeys(r["row"] for r in rows))
    defense_rows = [name for name in names if by_kind(rows, name) == "defense"]
    attack_rows = [name for name in names if name != "clean" and name not in defense_rows]
    header = ["level", "clean PSNR vs HR"]
    for name in attack_rows:
        sample = next(r for r in rows if r["row"] == name)
        suffix = f", {sample['queries']} queries" if sample.get("queries") else ""
        header.append(f"{name} ({sample['kind']}{suffix})")
    for name in defense_rows:
        header += [f"{name}: clean PSNR vs HR", f"{name}: naive", f"{name}: adaptive"]
    table = []
    for level in levels:
        cells = [str(level), _cell(by.get((level, "clean")), "hr_psnr")]
        for name in attack_rows:
            r = by.get((level, name))
            stealth = "ref_psnr" if r is not None and "ref_psnr" in r else "lr_psnr"
            cells.append(f"{_cell(r, 'sr_psnr')} ({_cell(r, stealth, 1)})")
        for name in defense_rows:
            d = by.get((level, name))
            cells += [_cell(d, "defended_clean_hr_psnr"), _cell(d, "naive_sr_psnr"), _cell(d, "adaptive_sr_psnr")]
        table.append(cells)
    return markdown_lines(header, table)


def by_kind(rows: list[dict], name: str) -> str:
    """The kind of the report row ``name`` (``refsr_adv``, ``pgd``, ``uniform``, ``defense`` ...)."""
    return next(r["kind"] for r in rows if r["row"] == name)


def refsr_markdown(rows: list[dict], meta: Mapping, eps_list: list[float]) -> str:
    n = sorted({r["n_images"] for r in rows if r["row"] == "clean"})
    lines = ["# RefSR report: attacks on the reference by similarity level", "",
             f"Config `{meta['config']}`; {meta['date']}; device {meta['device']}; torch {meta['torch']}; "
             f"{meta['seconds']} s. Metrics on {meta['metric_convention']}; images per level: "
             f"{', '.join(map(str, n))}.", "",
             "Each attack cell is the **SR PSNR of the attacked output vs the clean output** (dB; lower = more "
             "damage) and, in brackets, the stealth PSNR of what it perturbed (reference or LR, RGB). Level 1 is "
             "the most similar reference, 5 the least."]
    for label, kwargs in (meta.get("defenses") or {}).items():
        lines += ["", f"{label}: `SimilarityGatedTTSR({', '.join(f'{k}={v}' for k, v in kwargs.items())})`."]
    if meta.get("defenses"):
        lines += ["", f"Defenses are attacked by RefSR-Adv ({meta['defense_steps']} steps) computed on the bare model "
                  "(naive) and through the defense (adaptive); SR PSNR vs the defended model's clean output; the "
                  "mean gate openness (`gate_open`) is in the CSV."]
    for eps in eps_list:
        lines += ["", f"## eps {eps_text(eps)}", "", *refsr_table(rows, eps)]
    lines += ["", "![SR PSNR by level](plots/refsr_by_level.png)", ""]
    return "\n".join(lines)


def refsr_figure(rows: list[dict], eps: float):
    """SR PSNR (attacked vs clean output) against the similarity level, one line per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["eps"] != eps or r["row"] == "clean":
            continue
        if r["kind"] == "defense":
            series[f"{r['row']} (defended, worst of naive and adaptive)"].append((r["level"], r["worst_sr_psnr"]))
        elif r.get("sr_psnr") is not None:
            series[r["row"]].append((r["level"], r["sr_psnr"]))
    for name, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("similarity level (1 = most similar reference)")
    ax.set_ylabel("SR PSNR, attacked vs clean output (dB)")
    ax.set_xticks(sorted({r["level"] for r in rows}))
    ax.set_title(f"attacks at eps {eps_text(eps)} (lower = more damage)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_refsr_report(out: Path, rows: list[dict], meta: Mapping, eps_list: list[float]) -> dict[str, str]:
    """Write ``refsr_results.csv``/``.json``, ``refsr_summary.md`` and ``plots/refsr_by_level.png`` into ``out``."""
    files = {"csv": write_csv(out / "refsr_results.csv", rows, RESULT_FIELDS),
             "json": write_json(out / "refsr_results.json", {"meta": meta, "rows": rows}),
             "plot": save_figure(refsr_figure(rows, eps_list[0]), out / "plots" / "refsr_by_level.png")}
    with atomic_write(out / "refsr_summary.md") as tmp:
        tmp.write_text(refsr_markdown(rows, meta, eps_list))
    files["summary"] = out / "refsr_summary.md"
    return {k: str(v) for k, v in files.items()}
