"""A standing peer comparison with BasicSR: the training step and the training data, side by side.

Part 1, the step. In one process, on the same network (EDSR, lit-sr's port, whose state dict loads
strictly into BasicSR's ``EDSR``) and the same device-resident batches, interleaved round by round
so that a change of load hits every mode alike:

  plain       a plain PyTorch loop: forward, L1, backward, Adam (the naive baseline);
  basicsr     BasicSR's ``SRModel``, driven as ``basicsr/train.py`` drives it every iteration:
              ``update_learning_rate``, ``feed_data``, ``optimize_parameters`` (skipped when
              ``basicsr`` is not importable: the benchmark is optional, not a dependency);
  trainer     lit-sr's ``SRModule`` in a Lightning ``Trainer``, nothing else (no logger, progress
              bar or checkpoints);
  trainer_log_every_step  the same with ``self.log`` called on every step, as before
              :mod:`lit_sr.modules.step_logs` (the ablation of that change);
  quickstart  the same with what ``configs/train/quickstart.yaml`` adds: TensorBoard logger
              (``log_every_n_steps`` 5), progress bar, ``LearningRateMonitor`` every step, best and
              last checkpoints (armed, not written: no validation), ``SRImageLogger``, ``RunSummary``,
              cosine schedule.

Reported per mode: median milliseconds per step over the rounds, wall and CPU (``time.process_time``:
the process's own CPU seconds, which other jobs on the machine inflate far less than wall time), and
the addition over the plain loop.

Part 2, the data (``--data``). Synthetic DIV2K-layout pairs (``data_throughput.write_dataset``) and
their 480 px sub-images (``lit_sr.data.prepare_subimages``, PNG and ``npy``), read with 0 workers
(the loading process's own CPU time is the figure) at the same patch size by BasicSR's
``PairedImageDataset`` (raw 2K pairs, and the PNG sub-images) and lit-sr's ``DIV2KDataModule``
(raw, prepared PNG, prepared npy).

BasicSR 1.4.2 imports ``torchvision.transforms.functional_tensor``, a module torchvision removed
in 0.17; its one function BasicSR uses (``rgb_to_grayscale``) is in
``torchvision.transforms.functional``, so :func:`import_basicsr` registers that module under the
old name before importing BasicSR (the documented shim; nothing else is patched). Install BasicSR
without touching the project's environment, e.g.
``pip install --target /tmp/basicsr --no-deps --no-build-isolation basicsr==1.4.2 addict
opencv-python-headless lmdb yapf`` and ``PYTHONPATH=/tmp/basicsr:$PWD``.

    python benchmarks/peer_basicsr.py --out peer.json               # the step, quickstart-sized EDSR
    python benchmarks/peer_basicsr.py --data --threads 1 2          # also the data, at 1 and 2 threads
    python benchmarks/peer_basicsr.py --profile quickstart          # where that mode's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from common import machine_name
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from callbacks import LastCheckpoint, RunSummary, SRImageLogger
from lit_sr.archs import build_arch
from lit_sr.io import atomic_write
from lit_sr.modules import SRModule, sr_module
from lit_sr.modules.step_logs import step_logs_due

SCALE = 4
MODES = ("plain", "basicsr", "trainer", "trainer_log_every_step", "quickstart")


def import_basicsr():
    """``basicsr`` with the ``functional_tensor`` shim for current torchvision, or ``None`` when not installed."""
    import torchvision.transforms.functional as tv_functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    try:
        import basicsr
    except ImportError:
        return None
    return basicsr


# ------------------------------------------------------------------------------------------------ part 1
class Batches(Dataset):
    """``length`` draws from a fixed list of device-resident batches (lit-sr's batch dict)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        lr, hr = self.batches[i % len(self.batches)]
        return {"lr": lr, "hr": hr, "index": torch.arange(lr.shape[0]), "path": ["bench"] * lr.shape[0]}


class StepClock(L.Callback):
    """Wall and CPU seconds from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = (time.perf_counter(), time.process_time())


def run_plain(kwargs: dict, batches, steps: int, warmup: int) -> tuple[float, float]:
    torch.manual_seed(0)
    net = build_arch("edsr", upscale=SCALE, **kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
    for i in range(warmup + steps):
        if i == warmup:
            wall, cpu = time.perf_counter(), time.process_time()
        lr, hr = batches[i % len(batches)]
        loss = F.l1_loss(net(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def basicsr_model(kwargs: dict, work: Path):
    """BasicSR's ``SRModel`` on CPU with lit-sr's EDSR weights (loaded strictly: the same network)."""
    from basicsr.models.sr_model import SRModel

    logging.getLogger("basicsr").setLevel(logging.ERROR)
    opt = {
        "name": "peer", "model_type": "SRModel", "num_gpu": 0, "is_train": True, "dist": False, "rank": 0,
        "world_size": 1, "scale": SCALE,
        "network_g": {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "upscale": SCALE, **kwargs},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None, "models": str(work)},
        "train": {"ema_decay": 0, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
                  "optim_g": {"type": "Adam", "lr": 1e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
                  "scheduler": {"type": "MultiStepLR", "milestones": [10**9], "gamma": 0.5}},
    }
    model = SRModel(opt)
    torch.manual_seed(0)
    model.net_g.load_state_dict(build_arch("edsr", upscale=SCALE, **kwargs).state_dict(), strict=True)
    return model


def run_basicsr(kwargs: dict, batches, steps: int, warmup: int, work: Path) -> tuple[float, float]:
    model = basicsr_model(kwargs, work)
    for i in range(warmup + steps):
        if i == warmup:
            wall, cpu = time.perf_counter(), time.process_time()
        lr, hr = batches[i % len(batches)]
        model.update_learning_rate(i + 1, warmup_iter=-1)  # what basicsr/train.py does every iteration
        model.feed_data({"lq": lr, "gt": hr})
        model.optimize_parameters(i + 1)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_trainer(kwargs: dict, batches, steps: int, warmup: int, work: Path, quickstart: bool,
                log_every_step: bool = False) -> tuple[float, float]:
    if log_every_step:  # the step before lit_sr.modules.step_logs: self.log on every step
        sr_module.step_logs_due = lambda module: True
    try:
        return _run_trainer(kwargs, batches, steps, warmup, work, quickstart)
    finally:
        sr_module.step_logs_due = step_logs_due


def _run_trainer(kwargs: dict, batches, steps: int, warmup: int, work: Path, quickstart: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs=kwargs, scale=SCALE, loss="l1", lr=1e-4, betas=(0.9, 0.99),
                      scheduler="cosine" if quickstart else "none", export_weights=False)
    clock = StepClock(warmup)
    callbacks: list[L.Callback] = [clock]
    if quickstart:
        callbacks += [LearningRateMonitor(logging_interval="step"),
                      ModelCheckpoint(dirpath=work / "ckpt", monitor="val/psnr_y", mode="max", save_top_k=1,
                                      filename="best"),
                      LastCheckpoint(dirpath=str(work / "ckpt")), SRImageLogger(num_images=2), RunSummary()]
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=TensorBoardLogger(work, name="quickstart", default_hp_metric=False) if quickstart else False,
        enable_progress_bar=quickstart, enable_checkpointing=quickstart, enable_model_summary=False,
        log_every_n_steps=5, callbacks=callbacks, default_root_dir=work)
    trainer.fit(module, DataLoader(Batches(batches, warmup + steps), batch_size=None))
    return clock.end[0] - clock.start[0], clock.end[1] - clock.start[1]


def step_rows(args, work: Path, have_basicsr: bool) -> list[dict]:
    kwargs = dict(num_feat=args.num_feat, num_block=args.num_block)
    g = torch.Generator().manual_seed(0)
    lr_side = args.patch // SCALE
    batches = [(torch.rand(args.batch, 3, lr_side, lr_side, generator=g),
                torch.rand(args.batch, 3, args.patch, args.patch, generator=g)) for _ in range(4)]
    runners: dict[str, Callable[[], tuple[float, float]]] = {
        "plain": lambda: run_plain(kwargs, batches, args.steps, args.warmup),
        "basicsr": lambda: run_basicsr(kwargs, batches, args.steps, args.warmup, work),
        "trainer": lambda: run_trainer(kwargs, batches, args.steps, args.warmup, work, quickstart=False),
        "trainer_log_every_step": lambda: run_trainer(kwargs, batches, args.steps, args.warmup, work,
                                                      quickstart=False, log_every_step=True),
        "quickstart": lambda: run_trainer(kwargs, batches, args.steps, args.warmup, work, quickstart=True),
    }
    if args.profile:  # where a mode's step time goes: CPU time, so other jobs on the machine do not skew it
        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(runners[args.profile])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
        return []
    modes = [m for m in MODES if m != "basicsr" or have_basicsr]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for round_ in range(args.rounds):
            for mode in modes:
                times[mode].append(runners[mode]())
            print(f"  threads {threads} round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{m} {1e3 * times[m][-1][0] / args.steps:.2f} ms ({1e3 * times[m][-1][1] / args.steps:.2f} CPU)" for m in modes),
                flush=True)
        ms = {m: (1e3 * statistics.median(t[0] for t in times[m]) / args.steps,
                  1e3 * statistics.median(t[1] for t in times[m]) / args.steps) for m in modes}
        for mode in modes:
            rows.append({"threads": threads, "mode": mode, "wall_ms": ms[mode][0], "cpu_ms": ms[mode][1],
                         "wall_over_plain": ms[mode][0] / ms["plain"][0],
                         "extra_wall_ms": ms[mode][0] - ms["plain"][0], "extra_cpu_ms": ms[mode][1] - ms["plain"][1]})
    return rows


# ------------------------------------------------------------------------------------------------ part 2
def time_dataset(get: Callable[[int], object], length: int, samples: int) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) of ``samples`` reads after two untimed ones."""
    for i in range(2):
        get(i % length)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(samples):
        get(i % length)
    return samples / (time.perf_counter() - wall), samples / max(time.process_time() - cpu, 1e-9)


def data_rows(args, work: Path, have_basicsr: bool) -> list[dict]:
    from data_throughput import write_dataset  # the same synthetic 2K pairs as benchmarks/data_throughput.py

    from datamodules import DIV2KDataModule
    from lit_sr.data import prepare_subimages

    hr_dir, lr_dir = write_dataset(work / "raw", args.images, 1356, 2040, seed=0)
    prepared = {fmt: work / f"prepared_{fmt}" for fmt in ("png", "npy")}
    for fmt, out in prepared.items():
        prepare_subimages(hr_dir, out, lr_dir=lr_dir, scale=SCALE, format=fmt, workers=1, progress=False)
    sub_lr = next(p for p in prepared["png"].rglob("*") if p.is_dir() and p.name not in ("hr",) and
                  any(p.glob("*.png")) and p != prepared["png"] / "hr")
    readers: dict[str, tuple[Callable[[int], object], int]] = {}
    common = dict(val_hr=str(hr_dir), scale=SCALE, patch_size=args.patch, batch_size=1, num_workers=0, repeat=1)
    for name, extra in (("lit-sr raw", dict(train_hr=str(hr_dir), train_lr=str(lr_dir))),
                        ("lit-sr prepared png", dict(train_prepared=str(prepared["png"]))),
                        ("lit-sr prepared npy", dict(train_prepared=str(prepared["npy"])))):
        dm = DIV2KDataModule(**common, **extra)
        dm.setup("fit")
        readers[name] = (dm.train_dataset.__getitem__, len(dm.train_dataset))
    if have_basicsr:
        from basicsr.data.paired_image_dataset import PairedImageDataset

        for name, gt, lq, tmpl in (("basicsr raw", hr_dir, lr_dir, "{}x4"),
                                   ("basicsr sub-images png", prepared["png"] / "hr", sub_lr, "{}")):
            ds = PairedImageDataset({"dataroot_gt": str(gt), "dataroot_lq": str(lq), "io_backend": {"type": "disk"},
                                     "filename_tmpl": tmpl, "gt_size": args.patch, "use_hflip": True, "use_rot": True,
                                     "scale": SCALE, "phase": "train"})
            readers[name] = (ds.__getitem__, len(ds))
    torch.set_num_threads(1)  # a loader worker's view
    rows = []
    for name, (get, length) in readers.items():
        rate, per_cpu = time_dataset(get, length, args.samples)
        rows.append({"reader": name, "samples_per_s": rate, "samples_per_cpu_s": per_cpu})
        print(f"  {name}: {rate:.1f} samples/s, {per_cpu:.1f} per CPU-second", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-feat", type=int, default=32, help="EDSR width (32 x 4 blocks: the quickstart's)")
    p.add_argument("--num-block", type=int, default=4)
    p.add_argument("--patch", type=int, default=96, help="HR patch side (LR = patch / 4)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads: one table per count")
    p.add_argument("--data", action="store_true", help="also part 2: BasicSR's PairedImageDataset vs lit-sr's loaders")
    p.add_argument("--images", type=int, default=4, help="synthetic 2K pairs of part 2")
    p.add_argument("--samples", type=int, default=64, help="timed reads per reader in part 2")
    p.add_argument("--profile", choices=MODES, default=None,
                   help="instead of the tables: one run of this mode under cProfile (CPU time), top 40 by own time")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("num_feat", "num_block", "batch", "steps", "rounds", "images", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.patch % SCALE or args.patch < SCALE:
        p.error(f"--patch must be a positive multiple of {SCALE}, got {args.patch}")
    if min(args.threads) < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    basicsr = import_basicsr()
    if basicsr is None:
        print("basicsr is not importable: its rows are skipped (see the module docstring to install it)")
    work = Path(tempfile.mkdtemp(prefix="lit_sr_peer_"))
    try:
        report = {"benchmark": "peer_basicsr", "machine": machine_name(torch.device("cpu")),
                  "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "torch": torch.__version__,
                  "lightning": L.__version__, "basicsr": getattr(basicsr, "__version__", None),
                  "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "args": vars(args)}
        print(f"step: EDSR {args.num_feat}x{args.num_block}, batch {args.batch}, HR patch {args.patch}, "
              f"{args.steps} steps x {args.rounds} rounds", flush=True)
        report["step"] = step_rows(args, work, basicsr is not None)
        if args.profile:
            return report
        if args.data:
            print(f"data: {args.images} synthetic 2K pairs, patch {args.patch}, 0 workers, 1 thread", flush=True)
            report["data"] = data_rows(args, work, basicsr is not None)
        report["load_average_end"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_tables(report)
    if args.out:
        with atomic_write(args.out, suffix=".tmp") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2, default=str))
    return report


def print_step_table(rows: list[dict]) -> None:
    """The step rows as a markdown table: ms per step, wall and CPU, and the additions over the plain loop."""
    print("| threads | mode | ms/step (wall) | ms/step (CPU) | wall vs plain | + wall ms | + CPU ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['mode']} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | {r['wall_over_plain']:.2f}x | "
              f"{r['extra_wall_ms']:+.2f} | {r['extra_cpu_ms']:+.2f} |")


def print_tables(report: dict) -> None:
    print(f"\n{report['machine']}, load average {report['load_average'][0]:.1f} -> "
          f"{report['load_average_end'][0]:.1f}; basicsr {report['basicsr']}")
    print_step_table(report["step"])
    if "data" in report:
        base = next(r for r in report["data"] if r["reader"] == "lit-sr raw")
        print("\n| reader | samples/s | samples per CPU-second | per CPU-second vs lit-sr raw |")
        print("|---|---|---|---|")
        for r in report["data"]:
            print(f"| {r['reader']} | {r['samples_per_s']:.1f} | {r['samples_per_cpu_s']:.1f} | "
                  f"{r['samples_per_cpu_s'] / base['samples_per_cpu_s']:.2f}x |")


if __name__ == "__main__":
    main()
