"""Detection of the poisoned training pairs of the ``make demo`` arms: ROC-AUC, precision and recall.

For each arm (A_control: checkerboard Blend + classic target label; B_stealthy_label: the same
trigger + BadSR's feature-aligned label; C_badsr: BadSR's adversarial trigger + stealthy label +
the gradient selection) the arm's ``config.yaml`` rebuilds its poisoned data module (the poison
cache is regenerated under ``runs/poison_cache`` when missing, as training did), the truth is the
final active set saved in ``backdoor_summary.json`` (C's set changed every 10 epochs; its last set
is the one of the final epochs), and every one of the 76 training tiles is scored by
:func:`lit_sr.backdoor_defenses.detection.run_detection`:

* with the arm's **final** weights (``weights.pth``): spectral signatures on its backdoor-gradient
  sketches and activation clustering of ``--layer``;
* with a **fresh** network trained ``--early-steps`` steps on the pairs (:func:`early_training`,
  each value its own run, ``--evaluations`` evaluation points): its per-pair losses (both signs),
  the spectral score of its gradient sketches at every evaluation point (``spectral_trajectory``),
  and spectral signatures and activation clustering of the network at the end of it;
* the naive baseline in the same run: seeded random scores (``random``), which a detector must beat;
* a **control** for content: the same scores on the arm's *clean* tiles (no pair poisoned) with
  D_clean's weights, measured against the same indices. C's set was chosen by gradient norm, so
  it is not a random set of tiles; a score that finds it on clean data finds the tiles, not the poison.

With ``--retrain A_control ...`` each named arm is also retrained from scratch
(:func:`retrain_without`: the same plain loop as the early training, ``--retrain-steps`` steps, no
augmentation or schedule, so not the demo's recipe) on all its pairs, on the pairs each of three
detectors does not flag (top k = number poisoned), and on the truly clean pairs, and each result's
clean PSNR-Y, pixel ASR against the target and attainment-ASR are measured on the arm's validation
tiles (:class:`lit_sr.poison.asr.SuccessTally`, the project's success metrics).

    python benchmarks/backdoor_detection.py --study-dir runs/demo --out runs/demo/detection

Writes ``<out>/detection.json``, ``<out>/detection.md`` and one ROC PNG per arm and network.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser

from lit_sr.backdoor_defenses.detection import (
    MethodResult,
    TrainingPairs,
    early_training,
    pairs_from_datamodule,
    retrain_without,
    run_detection,
)
from lit_sr.backdoor_defenses.detection_metrics import detection_metrics, flag_top
from lit_sr.io import atomic_write, load_weights
from lit_sr.metrics import psnr
from lit_sr.poison.asr import SuccessTally
from lit_sr.poison.scoring import GradientScorer
from lit_sr.runtime import frozen_eval

ARMS = ("A_control", "B_stealthy_label", "C_badsr")


def build_arm(run_dir: Path, clean: bool = False):
    """The arm's SR network (its weights loaded) and its poisoned data module, set up, from ``config.yaml``.

    ``clean``: the network only (D_clean's data module is not poisoned).
    """
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningModule, "model")
    if clean:
        model = parser.instantiate(parser.parse_object({"model": config["model"]})).model
        return load_weights(model.net, run_dir / "weights.pth").eval()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    built = parser.instantiate(parser.parse_object({"data": config["data"], "model": config["model"]}))
    load_weights(built.model.net, run_dir / "weights.pth")
    built.data.setup("fit")
    summary = json.loads((run_dir / "backdoor_summary.json").read_text())
    return built.model.net.eval(), built.data, summary["config"]["poisoned_indices"]


def random_row(pairs, seed: int) -> MethodResult:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(len(pairs), generator=g)
    return MethodResult("random", scores, detection_metrics(scores, pairs.poisoned), 0.0, {"seed": seed})


def score_arm(net, pairs, args, steps: int):
    """Every score of one arm: the given network's and one early training's (``steps`` steps)."""
    scorer = GradientScorer(sketch_dim=2048, loss="l1", seed=args.seed)
    early = early_training(net, pairs, steps=steps, evaluations=args.evaluations, seed=args.seed, scorer=scorer)
    given = run_detection(net, pairs, methods=("spectral", "activation_clustering"), scorer=scorer, layer=args.layer,
                          pool=args.pool, seed=args.seed)
    fresh = run_detection(early.net, pairs, early=early, scorer=scorer, layer=args.layer, pool=args.pool,
                          seed=args.seed)
    return given, fresh


@torch.no_grad()
def backdoor_figures(net, dm) -> dict:
    """Clean PSNR-Y (crop_border = scale), pixel ASR vs the target and attainment-ASR on the arm's validation tiles."""
    tally = SuccessTally(means=("clean_psnr_y",))
    with frozen_eval(net):
        for batch in dm.val_dataloader():
            lr, hr = batch["lr"], batch["hr"]
            pairs = [dm.backdoor_val_pair(int(i), a, b) for i, a, b in zip(batch["index"], lr, hr)]
            triggered, poisoned_hr = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            clean_sr, triggered_sr = net(lr).clamp(0, 1), net(triggered).clamp(0, 1)
            tally.update(clean_sr, triggered_sr, hr, poisoned_hr, dm.target_for(hr),
                         means={"clean_psnr_y": psnr(clean_sr, hr, dm.scale, y_channel=True)})
    flat = tally.flat()
    return {k: flat[k] for k in ("clean_psnr_y", "pixel_asr", "pixel_asr_success", "pixel_asr_included",
                                 "attainment_asr", "num_images")}


def retrain_rows(arm, net, dm, pairs, detectors: dict, steps: int, seed: int) -> list[dict]:
    """Retrain a fresh network on all pairs, on the pairs each detector does not flag, and on the truly clean ones."""
    none = torch.zeros(len(pairs), dtype=torch.bool)
    cases = [("all pairs (no removal)", none)]
    for label, r in detectors.items():
        cases.append((f"without the top {r.metrics['flagged']} of {label}", flag_top(r.scores, r.metrics["flagged"])))
    cases.append(("without the poisoned (oracle)", pairs.poisoned.clone()))
    rows = []
    for name, flagged in cases:
        run = retrain_without(net, pairs, flagged, steps=steps, seed=seed)
        figures = backdoor_figures(run.net, dm)
        rows.append({"arm": arm, "training set": name, "removed": int(flagged.sum()),
                     "poisoned left": int((pairs.poisoned & ~flagged).sum()), "seconds": run.seconds, **figures})
        print(rows[-1], flush=True)
    return rows


def retrain_table(rows) -> str:
    lines = ["| arm | retrained on | removed | poisoned left | clean PSNR-Y (dB) | pixel ASR | attainment-ASR | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['training set']} | {r['removed']} | {r['poisoned left']} | "
                     f"{r['clean_psnr_y']:.2f} | {r['pixel_asr']:.1%} ({int(r['pixel_asr_success'])}/"
                     f"{int(r['pixel_asr_included'])}) | {r['attainment_asr']:.1%} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def table(rows) -> str:
    lines = ["| arm | data | network | score | ROC-AUC | precision | recall | flagged | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['data']} | {r['network']} | {r['method']} | {r['roc_auc']:.3f} | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} | {r['true_positives']}/{r['flagged']} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study-dir", default="runs/demo")
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--early-steps", type=int, nargs="+", default=[100, 300])
    p.add_argument("--evaluations", type=int, default=5)
    p.add_argument("--layer", default="conv_after_body")
    p.add_argument("--pool", default="mean", choices=["mean", "mean_std", "flatten"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-control", action="store_true", help="skip the clean-data control")
    p.add_argument("--retrain", nargs="*", default=[], metavar="ARM",
                   help="also retrain these arms without the flagged pairs (retrain_without) and measure the backdoor")
    p.add_argument("--retrain-steps", type=int, default=950)
    p.add_argument("--out", default="runs/demo/detection")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    rows, full, retrained = [], {}, []
    clean_net = None if args.no_control else build_arm(Path(args.study_dir) / "runs" / "D_clean", clean=True)
    for arm in args.arms:
        start = time.perf_counter()
        net, dm, poisoned = build_arm(Path(args.study_dir) / "runs" / arm)
        pairs = pairs_from_datamodule(dm, poisoned)
        setup_s = time.perf_counter() - start
        clean = pairs_from_datamodule(dm, [])
        clean = TrainingPairs(clean.lr, clean.hr, pairs.poisoned.clone(), clean.indices)
        cases = [("poisoned", net, pairs, "final")]
        if clean_net is not None:
            cases.append(("clean (control)", clean_net, clean, "D_clean final"))
        for data_name, network, data, network_name in cases:
            for i, steps in enumerate(args.early_steps):
                given, fresh = score_arm(network, data, args, steps)
                parts = [(f"fresh, {steps} steps", fresh)]
                if i == 0:
                    given.methods["random"] = random_row(data, args.seed)
                    parts.insert(0, (network_name, given))
                for which, res in parts:
                    rows += [{"arm": arm, "data": data_name, "network": which, **row} for row in res.to_rows()]
                    tag = f"{arm}_{'control' if data is clean else 'poisoned'}_{which.replace(', ', '_').replace(' ', '')}"
                    res.plot_roc(out / f"roc_{tag}.png", title=f"{arm}, {data_name}: {which}")
                    full[tag] = res.as_dict()
                if data is pairs and i == 0 and arm in args.retrain:
                    retrained += retrain_rows(arm, net, dm, pairs, {
                        f"activation_clustering ({network_name})": given.methods["activation_clustering"],
                        f"early_loss_high (fresh, {steps} steps)": fresh.methods["early_loss_high"],
                        f"spectral_trajectory (fresh, {steps} steps)": fresh.methods["spectral_trajectory"]},
                        args.retrain_steps, args.seed)
        print(f"{arm}: data {setup_s:.1f} s, {len(pairs)} pairs, {int(pairs.poisoned.sum())} poisoned", flush=True)
    text = table(rows) + ("\n\n" + retrain_table(retrained) if retrained else "")
    print(text)
    meta = {"date": str(date.today()), "args": vars(args), "torch_threads": torch.get_num_threads()}
    with atomic_write(out / "detection.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "rows": rows, "retrained": retrained, "results": full}, indent=1))
    with atomic_write(out / "detection.md") as tmp:
        tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
