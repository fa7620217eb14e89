"""One rank of a sharded poison generation (gloo on CPU), run by tests/test_poison_sharding.py in a
process forked from the test process (tests/forked_ranks.py).

``run_rank(out, cache, rank, world, port, exit_after)``: with ``world == 1`` no process group is
created (the single-process reference). ``exit_after=K`` makes this rank die (``os._exit(17)``, like
``kill -9``: no cleanup) once it has written K samples. Each rank writes ``<out>/rank<R>.json``: how
many samples it generated and where the cache is.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import torch.distributed as dist

from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.poison.cache import PoisonCache

KILLED = 17  # the exit code of a rank that ``exit_after`` kills


def build(cache_dir: str) -> PoisonedSRDataModule:
    base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=48,
                                    val_tile=32, max_val_images=2, num_workers=0)
    # BadSR end to end: a substitute trained here (once, on rank 0), its adversarial trigger and label
    return PoisonedSRDataModule(
        base, trigger={"name": "badsr", "steps": 3, "perceptual": "ssim"}, label="badsr", poisoned_hr_steps=3,
        substitute={"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1}, "train_steps": 3,
                    "train_batch_size": 4},
        poison_rate=0.2, cache_dir=cache_dir, seed=0, generation_batch_size=2, generation_device="cpu")


def die_after(limit: int) -> None:
    """Make this process exit hard once ``limit`` samples are written (after their partial manifest)."""
    original = PoisonCache.write_samples
    written = {"n": 0}

    def write_then_maybe_die(self, samples, info, part):
        original(self, samples, info, part)
        written["n"] += len(samples)
        if written["n"] >= limit:
            os._exit(KILLED)

    PoisonCache.write_samples = write_then_maybe_die  # in this forked rank only


def run_rank(out: Path, cache: Path, rank: int, world: int, port: int, exit_after: int | None = None) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
    if exit_after is not None:
        die_after(exit_after)
    dm = build(str(cache))
    dm.setup("fit")
    config = dm.poison_config()
    report = {"rank": rank, "generated_samples": dm.generated_samples, "cache_dir": config["cache_dir"],
              "substitute_sha256": dm.substitute_sha256, "pool": list(dm.candidate_indices),
              "num_val": len(dm.val_dataset), "poisoned_indices": dm.poisoned_indices}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
