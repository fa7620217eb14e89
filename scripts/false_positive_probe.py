"""The clean model's false-positive level under a trigger, for candidate targets and labels.

Arm D of the demo (a clean model) has learnt no backdoor, so whatever attainment or ASR it
reaches under a trigger is the trigger's own push, the level a backdoored arm must beat. This
script evaluates a trained clean model (``--clean``) with the demo's tiles under each candidate
(target image x label kind) and prints D's attainment, attainment-ASR and pixel ASR, so that the
demo's target can be chosen where that level is low (issue 23, item 1).

    python scripts/false_positive_probe.py --clean runs/demo/runs/D_clean/weights.pth \
        --substitute runs/demo/runs/S_substitute/weights.pth --targets configs/train/demo_target_grey.png coffee ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from callbacks.backdoor_eval import evaluate_backdoor_on_datamodule
from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.archs import build_arch
from lit_sr.io import load_weights
from lit_sr.poison import SIG, Blend
from lit_sr.poison.substitute import SubstituteSpec


def probe(clean: str, substitute: str, targets: list[str], labels: list[str], cache_dir: str,
          trigger: str = "blend_checkerboard") -> list[dict]:
    net = load_weights(build_arch("edsr", num_feat=16, num_block=2, upscale=2), clean).eval()
    triggers = {"blend_checkerboard": lambda: Blend(alpha=0.2, pattern="checkerboard", pattern_size=16,
                                                    resize_mode="nearest"),
                "sig": lambda: SIG()}
    rows = []
    for target in targets:
        for label in labels:
            base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=16, repeat=4, max_side=128,
                                            train_tile=32, val_tile=32)
            dm = PoisonedSRDataModule(base, trigger=triggers[trigger](), poison_rate=0.2, label=label, target=target,
                                      eps=0.05, poisoned_hr_steps=100, cache_dir=cache_dir, seed=0,
                                      substitute=SubstituteSpec(arch="edsr", arch_kwargs={"num_feat": 16, "num_block": 2},
                                                                weights=substitute))
            dm.setup("fit")
            with torch.no_grad():
                m = evaluate_backdoor_on_datamodule(lambda x: net(x).clamp(0, 1), dm, torch.device("cpu"), scale=2)
            rows.append({"target": target, "label": label, "trigger": trigger,
                         "attainment_mean": m["attainment_mean"], "attainment_asr": m["attainment_asr"],
                         "asr_pixel": m["asr_pixel"], "n": m["num_images"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", required=True)
    p.add_argument("--substitute", required=True)
    p.add_argument("--targets", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", default=["target", "badsr"])
    p.add_argument("--trigger", default="blend_checkerboard", choices=["blend_checkerboard", "sig"])
    p.add_argument("--cache-dir", default="runs/poison_cache")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = probe(a.clean, a.substitute, a.targets, a.labels, a.cache_dir, a.trigger)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
