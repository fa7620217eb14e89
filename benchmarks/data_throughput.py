"""Data-loading throughput: raw 2K folders against prepared sub-images and the shared uint8 cache.

The script writes its own data set (seeded): ``--images`` synthetic 2040x1356 HR PNGs (a smooth
random field plus noise, so PNG sizes are photo-like) with their x4 LR partners made by MATLAB
bicubic, in DIV2K's layout. Then, with ``DIV2KDataModule(patch_size=192, batch_size=16)``, for
each loader worker count it measures training samples/s (in total and per worker) and the peak
proportional set size (PSS: shared pages divided among the processes that map them) of the main
process plus its workers, for

  raw           the HR/LR folders as they are: every sample decodes a whole 2K pair (the baseline);
  prepared_png  sub-images from ``lit-sr data prepare`` (480 px, step 240), PNG;
  prepared_npy  the same as raw uint8 ``.npy`` (memory-mapped: only the crop is read);
  shared_cache  ``cache_images=True``: the raw pairs decoded once into one memory-mapped uint8 file.

The ratio against ``raw`` is the figure. The poisoned path is measured the same way: a
:class:`datamodules.poisoned.PoisonCache` holding the 2K triggered/poisoned pairs (uint8, as
``quantize=True`` stores them), read per sample as ``PoisonedTrainDataset`` did (whole safetensors
read, float conversion, crop: the baseline) and does now (crop first: only the patch is read and
converted), compared with the clean ``prepared_npy`` loader with 0 workers, and as
``candidate_batches`` does (read, centre crop), plus its SHA-256 verification at setup.

``--train`` (on by default with ``--device cuda``, the default when CUDA is available) adds SRModule training throughput with the real
loader (prepared npy, ``augment_on="device"``, the machine's cores as workers) against the same
training on one device-resident batch: the loader keeps up when the ratio is ~1.

    python benchmarks/data_throughput.py --out data_throughput.json
    python benchmarks/data_throughput.py --quick                  # smaller, a smoke run
    python benchmarks/data_throughput.py --device cuda --archs edsr rrdbnet --workers 0 1 16   # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import machine_name, synchronise
from PIL import Image

from datamodules import DIV2KDataModule
from datamodules.poisoned import PoisonCache
from datamodules.poisoned_train import CachedPairs
from lit_sr.data import bicubic_lr, prepare_subimages
from lit_sr.io import atomic_write
from lit_sr.poison.cache import PartialManifest

SCALE = 4
MODES = ("raw", "prepared_png", "prepared_npy", "shared_cache")
EDSR_BASELINE = dict(num_feat=64, num_block=16, res_scale=1.0, img_range=255.0, rgb_mean=[0.4488, 0.4371, 0.4040])
RRDBNET = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32)
ARCHS = {"edsr": EDSR_BASELINE, "rrdbnet": RRDBNET}
QUICK_ARCHS = {"edsr": dict(num_feat=16, num_block=2), "rrdbnet": dict(num_feat=16, num_block=1, num_grow_ch=8)}


# ------------------------------------------------------------------------------------------------ data
def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 image: a smooth random colour field (bicubic-upsampled noise) plus grain."""
    coarse = rng.integers(0, 256, size=(max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    grain = rng.normal(0.0, 6.0, size=smooth.shape).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).round().astype(np.uint8)


def write_dataset(root: Path, count: int, height: int, width: int, seed: int) -> tuple[Path, Path]:
    """DIV2K layout under ``root``: ``HR/0001.png`` and ``LR_bicubic/X4/0001x4.png`` (MATLAB bicubic)."""
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{SCALE}"
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, count + 1):
        hr = synthetic_image(rng, height, width)
        lr = bicubic_lr(torch.from_numpy(hr).permute(2, 0, 1), SCALE).permute(1, 2, 0).numpy()
        Image.fromarray(hr).save(hr_dir / f"{i:04d}.png", compress_level=6)
        Image.fromarray(lr).save(lr_dir / f"{i:04d}x{SCALE}.png", compress_level=6)
    return hr_dir, lr_dir


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# ------------------------------------------------------------------------------------------------ memory
def pss_kib(pid: int) -> int:
    """Proportional set size of a process (kB), from /proc/<pid>/smaps_rollup; 0 when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (s), from /proc/<pid>/stat; a figure that load does not inflate."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def loader_pids(iterator) -> list[int]:
    return [os.getpid()] + [w.pid for w in getattr(iterator, "_workers", [])]


def loader_pss_mib(iterator) -> float:
    """PSS of this process plus the loader's worker processes (MiB): memory really used by the loading."""
    return sum(pss_kib(p) for p in loader_pids(iterator)) / 1024


# ------------------------------------------------------------------------------------------------ loaders
def data_module(mode: str, paths: dict[str, Path], workers: int, args, cache_dir: Path, **extra) -> DIV2KDataModule:
    common = dict(val_hr=str(paths["hr"]), scale=SCALE, patch_size=args.patch, batch_size=args.batch,
                  num_workers=workers, repeat=10_000, **extra)
    if mode == "raw":
        return DIV2KDataModule(train_hr=str(paths["hr"]), train_lr=str(paths["lr"]), **common)
    if mode == "shared_cache":
        return DIV2KDataModule(train_hr=str(paths["hr"]), train_lr=str(paths["lr"]), cache_images=True,
                               cache_dir=str(cache_dir), **common)
    return DIV2KDataModule(train_prepared=str(paths[mode]), **common)


def time_loader(dm: DIV2KDataModule, batches: int, warmup: int) -> tuple[float, float, float]:
    """(samples/s, samples per CPU-second of the loading processes, peak PSS MiB) over ``batches``
    training batches after ``warmup`` untimed ones."""
    loader = dm.train_dataloader()
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    peak = loader_pss_mib(iterator)
    samples = 0
    cpu_start = cpu_seconds(loader_pids(iterator))
    start = time.perf_counter()
    for k in range(batches):
        samples += next(iterator)["lr"].shape[0]
        if k % 4 == 0:
            peak = max(peak, loader_pss_mib(iterator))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(loader_pids(iterator)) - cpu_start
    peak = max(peak, loader_pss_mib(iterator))
    del iterator
    return samples / elapsed, samples / max(cpu, 1e-9), peak


def loader_table(paths: dict[str, Path], args, work: Path) -> list[dict]:
    rows = []
    for mode in args.modes:
        for workers in args.workers:
            cache_dir = work / "image_cache"
            dm = data_module(mode, paths, workers, args, cache_dir)
            start = time.perf_counter()
            dm.setup("fit")  # shared_cache: decodes every pair once into the store (the "first pass")
            setup_s = time.perf_counter() - start
            rate, per_cpu_s, peak = time_loader(dm, args.batches, args.warmup)
            store = dm.train_dataset.store
            rows.append({"mode": mode, "workers": workers, "samples_per_s": rate,
                         "samples_per_s_per_worker": rate / max(1, workers), "samples_per_cpu_s": per_cpu_s,
                         "peak_pss_mib": peak,
                         "setup_s": setup_s, "store_mib": store.nbytes / 2**20 if store is not None else None,
                         "records": len(dm.train_dataset.records)})
            print(f"  {mode:13s} workers={workers}: {rate:8.1f} samples/s ({rate / max(1, workers):7.1f} per worker), "
                  f"{per_cpu_s:7.1f} per CPU-second, peak PSS {peak:7.0f} MiB, setup {setup_s:5.1f} s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ poison cache
def poison_cache_figures(paths: dict[str, Path], args, work: Path) -> dict:
    """Per-sample reads of a poison cache of whole 2K pairs, as the poisoned loader and scoring do."""
    dm = data_module("raw", paths, 0, args, work / "unused")
    dm.setup("fit")
    base = dm.train_dataset
    cache = PoisonCache(work / "poison_cache", {"benchmark": "data_throughput", "images": len(base.records)})
    cache.prepare()
    samples, info = {}, {}
    for i in range(len(base.records)):
        lr, hr = base.load_pixels(i)  # uint8, as quantize=True stores the triggered LR and poisoned HR
        samples[f"train_{i:06d}"] = {"lr": lr.contiguous(), "hr": hr.contiguous()}
        info[f"train_{i:06d}"] = {"index": i}
    cache.write_samples(samples, info, PartialManifest(cache, 0))
    cache.merge_parts()
    keys = sorted(samples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker's view (DataLoader workers run single-threaded)
    try:
        return _time_poison_reads(cache, keys, base, args)
    finally:
        torch.set_num_threads(threads)


def _time_poison_reads(cache: PoisonCache, keys: list[str], base, args) -> dict:
    start = time.perf_counter()
    cache.verify(keys)
    verify_s = time.perf_counter() - start
    pairs = CachedPairs(cache, keep_in_memory=False)
    n = len(keys)
    reads = max(args.batches, n)
    start = time.perf_counter()
    for k in range(reads):
        lr, hr = pairs(k % n)
        base.crop_and_augment(lr, hr, k % n)
    train_rate = reads / (time.perf_counter() - start)
    start = time.perf_counter()
    s, p = SCALE, args.patch
    for k in range(reads):
        lr, hr = pairs(k % n)
        top, left = (lr.shape[-2] - p // s) // 2, (lr.shape[-1] - p // s) // 2
        hr[:, top * s : top * s + p, left * s : left * s + p].contiguous()
    scoring_rate = reads / (time.perf_counter() - start)
    # what PoisonedTrainDataset does now: crop first (the box from the stored sizes, only the patch read)
    start = time.perf_counter()
    for k in range(reads):
        pairs.training_patch(k % n, base)
    crop_first_rate = reads / (time.perf_counter() - start)
    # what candidate_batches does now: only the centre patch is read from the file (safetensors slices)
    start = time.perf_counter()
    for k in range(reads):
        pairs.centre_crop(k % n, p // s, s)
    slice_rate = reads / (time.perf_counter() - start)
    mib = sum((cache.directory / cache.entries[k]["file"]).stat().st_size for k in keys) / 2**20
    out = {"samples": n, "cache_mib": mib, "verify_s": verify_s, "verify_mib_per_s": mib / verify_s,
           "train_samples_per_s_per_worker": train_rate, "crop_first_train_samples_per_s_per_worker": crop_first_rate,
           "scoring_samples_per_s_per_worker": scoring_rate,
           "centre_crop_read_samples_per_s_per_worker": slice_rate}
    print(f"  poison cache: {train_rate:.1f} training samples/s per worker whole-image, {crop_first_rate:.1f} "
          f"crop-first, {scoring_rate:.1f} scoring samples/s "
          f"per worker, centre-patch reads (candidate_batches) {slice_rate:.1f}/s, verify {mib / verify_s:.0f} MiB/s ({mib:.0f} MiB)",
          flush=True)
    return out


# ------------------------------------------------------------------------------------------------ training
def train_figures(paths: dict[str, Path], args, work: Path, device: torch.device) -> list[dict]:
    """SRModule steps/s with the real loader (prepared npy, device augmentation) vs a device-resident batch."""
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    from lit_sr.modules import SRModule

    class SameBatch(Dataset):
        def __init__(self, batch: dict, length: int):
            self.batch, self.length = batch, length

        def __len__(self) -> int:
            return self.length

        def __getitem__(self, i: int) -> dict:
            return self.batch

    class StepTimer(L.Callback):
        def __init__(self, warmup: int, steps: int):
            self.warmup, self.last, self.start, self.end = warmup, warmup + steps - 1, None, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            if batch_idx == self.warmup:
                synchronise(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            if batch_idx == self.last:
                synchronise(device)
                self.end = time.perf_counter()

    def run(arch: str, kwargs: dict, source) -> float:
        torch.manual_seed(0)
        module = SRModule(arch=arch, arch_kwargs=kwargs, scale=SCALE, loss="l1", lr=1e-4, betas=(0.9, 0.99),
                          scheduler="none", channels_last=device.type == "cuda", export_weights=False)
        timer = StepTimer(args.train_warmup, args.train_steps)
        trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                            precision="bf16-mixed" if device.type == "cuda" else "32-true",
                            max_steps=args.train_warmup + args.train_steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, callbacks=[timer])
        if isinstance(source, DIV2KDataModule):
            trainer.fit(module, datamodule=source)
        else:
            trainer.fit(module, source)
        return args.train_steps * args.batch / (timer.end - timer.start)

    rows = []
    for arch in args.archs:
        kwargs = (QUICK_ARCHS if args.quick else ARCHS)[arch]
        dm = data_module("prepared_npy", paths, args.train_workers, args, work / "unused", augment_on="device")
        loader_rate = run(arch, kwargs, dm)
        dm.setup("fit")
        batch = next(iter(DataLoader(dm.train_dataset, batch_size=args.batch, shuffle=True)))
        batch = {"lr": batch["lr"].to(device), "hr": batch["hr"].to(device), "index": batch["index"].to(device),
                 "path": batch["path"]}
        resident = DataLoader(SameBatch(batch, args.train_warmup + args.train_steps), batch_size=None)
        resident_rate = run(arch, kwargs, resident)
        rows.append({"arch": arch, "workers": args.train_workers, "loader_img_per_s": loader_rate,
                     "resident_img_per_s": resident_rate, "ratio": loader_rate / resident_rate})
        print(f"  train {arch}: real loader {loader_rate:.1f} img/s, resident batch {resident_rate:.1f} img/s, "
              f"ratio {loader_rate / resident_rate:.3f}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="synthetic HR images (default 12; 3 with --quick)")
    p.add_argument("--height", type=int, default=1356)
    p.add_argument("--width", type=int, default=2040)
    p.add_argument("--patch", type=int, default=192, help="HR patch (192 = 48 px LR at x4)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="loader worker counts to run (default: 0 1 and the core count; 0 1 with --quick)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--batches", type=int, default=None, help="timed batches per run (default 30; 6 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    p.add_argument("--prepare-workers", type=int, default=cores)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the --train mode (loading itself is measured on the CPU)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                   help="SRModule training with the real loader vs a device-resident batch (default: on with cuda)")
    p.add_argument("--archs", nargs="+", default=["edsr"], choices=list(ARCHS))
    p.add_argument("--train-workers", type=int, default=cores)
    p.add_argument("--train-steps", type=int, default=None, help="timed steps (default 100; 3 with --quick)")
    p.add_argument("--train-warmup", type=int, default=None, help="untimed steps (default 20; 2 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="where the synthetic data go (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="3 images, fewer batches: a smoke run")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.images = args.images or (3 if args.quick else 12)
    args.workers = args.workers or ([0, 1] if args.quick else sorted({0, 1, cores}))
    args.batches = args.batches or (6 if args.quick else 30)
    args.train_steps = args.train_steps or (3 if args.quick else 100)
    args.train_warmup = args.train_warmup or (2 if args.quick else 20)
    if args.train is None:
        args.train = args.device.startswith("cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (use --device cpu)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    device = torch.device(args.device)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lit_sr_data_bench_"))
    try:
        print(f"writing {args.images} synthetic {args.width}x{args.height} HR images + x{SCALE} LR to {work}",
              flush=True)
        start = time.perf_counter()
        hr_dir, lr_dir = write_dataset(work / "raw", args.images, args.height, args.width, args.seed)
        paths = {"hr": hr_dir, "lr": lr_dir}
        report = {"machine": machine_name(torch.device("cpu")), "cores": len(os.sched_getaffinity(0)),
                  "torch": torch.__version__, "args": {k: v for k, v in vars(args).items()},
                  "write_s": time.perf_counter() - start, "raw_mib": folder_mib(work / "raw"), "prepare": {}}
        for fmt in ("png", "npy"):
            if f"prepared_{fmt}" not in args.modes and not (fmt == "npy" and args.train):
                continue
            start = time.perf_counter()
            out = work / f"prepared_{fmt}"
            result = prepare_subimages(hr_dir, out, lr_dir=lr_dir, scale=SCALE, format=fmt,
                                       workers=args.prepare_workers, progress=False)
            paths[f"prepared_{fmt}"] = out
            report["prepare"][fmt] = {"seconds": time.perf_counter() - start, "subimages": result.num_subimages,
                                      "mib": folder_mib(out)}
            print(f"prepared {fmt}: {result.num_subimages} sub-images in {report['prepare'][fmt]['seconds']:.1f} s, "
                  f"{report['prepare'][fmt]['mib']:.0f} MiB (raw folders {report['raw_mib']:.0f} MiB)", flush=True)
        print(f"loaders (DIV2KDataModule, patch {args.patch}, batch {args.batch}):", flush=True)
        report["loaders"] = loader_table(paths, args, work)
        raw = {r["workers"]: r["samples_per_s"] for r in report["loaders"] if r["mode"] == "raw"}
        for row in report["loaders"]:
            row["speedup_vs_raw"] = row["samples_per_s"] / raw[row["workers"]] if row["workers"] in raw else None
        report["poison_cache"] = poison_cache_figures(paths, args, work)
        clean = [r for r in report["loaders"] if r["mode"] == "prepared_npy" and r["workers"] == 0]
        if clean:  # the goal: poisoned samples at >= 0.9x the clean prepared loader's (one process, same patch)
            report["poison_cache"]["crop_first_vs_prepared_npy"] = (
                report["poison_cache"]["crop_first_train_samples_per_s_per_worker"] / clean[0]["samples_per_s"])
            print(f"  poisoned crop-first / clean prepared npy (0 workers): "
                  f"{report['poison_cache']['crop_first_vs_prepared_npy']:.2f}x", flush=True)
        if args.train:
            report["train"] = train_figures(paths, args, work, device)
        else:
            report["train"] = f"skipped on {args.device} (pass --train to run it there anyway)"
            print(f"training throughput: skipped on {args.device} (--train runs it)", flush=True)
        print_table(report)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        with atomic_write(args.out, suffix=".tmp") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2, default=str))
    return report


def print_table(report: dict) -> None:
    print("\n| loader | workers | samples/s | per worker | per CPU-second | vs raw | peak PSS MiB | setup s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["loaders"]:
        ratio = f"{r['speedup_vs_raw']:.1f}x" if r["speedup_vs_raw"] is not None else "-"
        print(f"| {r['mode']} | {r['workers']} | {r['samples_per_s']:.1f} | {r['samples_per_s_per_worker']:.1f} | "
              f"{r['samples_per_cpu_s']:.1f} | "
              f"{ratio} | {r['peak_pss_mib']:.0f} | {r['setup_s']:.1f} |")


if __name__ == "__main__":
    main()
