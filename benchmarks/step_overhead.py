"""The fixed cost of a training step: a plain loop, lit-sr's Trainer, and the quickstart as ``lit-sr fit`` runs it.

In one process, on the same network (EDSR, ``--num-feat`` x ``--num-block``) and the same
device-resident batches, interleaved round by round so that a change of load hits every mode alike:

  plain         a plain PyTorch loop: forward, L1, backward, Adam (the naive baseline);
  plain_shown   the plain loop showing what the quickstart's Trainer shows, written the plain way:
                the same ``DataLoader`` of the batches, the cosine ``LambdaLR`` stepped every step,
                the divergence check (``math.isfinite(loss.item())``) every step, the loss and the
                learning rate written to TensorBoard (``SummaryWriter.add_scalar``) every
                ``log_every_n_steps`` (5, the recipe's) and a ``tqdm`` bar redrawn at most every
                0.1 s with the last logged loss; no checkpoints (the quickstart's write nothing
                during the timed steps);
  trainer       ``SRModule`` (as the quickstart configures it: L1, Adam, cosine schedule) in a bare
                Lightning ``Trainer``: no logger, progress bar or checkpoints;
  quickstart    the same module in the Trainer that ``lit-sr fit --config configs/train/quickstart.yaml``
                builds (``train.main(args, run=False)``, as the tests build it): the recipe's TensorBoard
                logger (``log_every_n_steps`` 5), ``LearningRateMonitor`` every step, best and last
                checkpoints (armed; with no validation nothing is written during the timed steps),
                ``SRImageLogger``, ``RunSummary``, the CLI's own callbacks (``StopOnNonFiniteLoss``,
                ``StopOnSigterm``, the saved config) and its progress bar
                (``lit_sr.training.progress_bar.TimedProgressBar``);
  quickstart_lightning_bar  the same with Lightning's default ``TQDMProgressBar`` (a redraw after
                every batch: the bar before TimedProgressBar), the ablation of that choice;
  quickstart_no_bar  the same without any progress bar (``--trainer.enable_progress_bar false``);
  quickstart_all_hooks  the quickstart with every empty per-batch hook of the callbacks and the module
                dispatched again (``lit_sr.training.batch_hooks.restore_batch_hooks``): the
                ablation of hiding them;
  quickstart_stock  the quickstart with Lightning's stock dispatch: every empty per-batch hook of the
                callbacks and of the module dispatched, Lightning's default ``PassThroughProfiler``
                and ``nn.Module.__setattr__`` recording the running hook's name (``StockSRModule``):
                the ablation of all three (``lit_sr.training.batch_hooks``, ``no_profiler``,
                ``hook_name``);
  quickstart_log50  the quickstart logging every 50 steps (Lightning's default) instead of the
                recipe's 5: how much of its cost is the logging interval;
  trainer_minimal  a minimal ``LightningModule`` (the same network, L1, Adam, the cosine
                ``LambdaLR``; no ``self.log``) in the bare Trainer: what the bare Trainer adds
                without any of ``SRModule``'s code, i.e. Lightning's own per-batch loop;
  trainer_lean  ``SRModule`` in the bare Trainer with ``lit-sr fit``'s dispatch (``NoProfiler``, the
                module's empty training hooks hidden): what is left of Lightning's loop under it;
  trainer_manual  ``SRModule`` with manual optimisation (a benchmark-only subclass:
                ``manual_backward``, ``step``, the scheduler's ``step``) in the bare Trainer: what
                the automatic loop's closure and hooks cost against the manual one.

A mode's time is the period from the start of step ``warmup`` to the start of step
``warmup + steps`` (the Trainer modes: ``on_train_batch_start``, the plain loop: the top of its
loop), so what runs once per fit (set-up, the last checkpoint) is outside it. Reported per mode:
the median over the rounds of milliseconds per step, wall and CPU (``time.process_time``: this
process's own CPU seconds, which other jobs on the machine inflate far less than wall time), and
the addition over the plain loop. The clock's own empty per-batch hooks are hidden from
Lightning's dispatcher in every Trainer mode (as ``lit-sr fit`` hides its callbacks' ones), so the
apparatus adds one hook call a step.

``--threads 1 2`` repeats the table per torch thread count; ``--busy N`` starts N CPU-bound
processes (a spinning Python loop each) for the whole run, a controlled "under load" next to
whatever else the machine runs (the load average is reported at start and end). ``--count-calls``
reports, instead of times, the Python function calls each mode makes per step (``cProfile``'s
count over ``2 * steps`` steps less that over ``steps``): deterministic, so a loaded machine
cannot blur it. ``TimedProgressBar`` redraws when 0.1 s has passed, so how many redraws a step
carries depends on the wall clock (and a profiler slows steps several-fold); the counts are
taken without its in-epoch redraws, and one redraw's calls are half of the difference between
``quickstart_lightning_bar`` (two redraws a step) and ``quickstart_no_bar``.
``--dispatch`` times one empty hook's dispatch to the quickstart's callbacks, every hook
dispatched against the empty ones hidden (``lit_sr.training.batch_hooks``), as the least of
many short repeats of this process's CPU time: what hiding one empty hook saves, in microseconds,
with the load's effect kept small. ``--components quickstart`` times the step's parts (the
callback dispatch, ``self.log``, the logger connector, TensorBoard, each per-step hook) with a
timer around each, the least of ``--rounds`` fits.

Run it from the repository root with ``PYTHONPATH=.`` (it imports ``train.py``, the entry point):

    PYTHONPATH=. python benchmarks/step_overhead.py                          # EDSR 16x2, batch 4, 32 px HR
    PYTHONPATH=. python benchmarks/step_overhead.py --threads 1 2 --busy 1   # threads, one competing process
    PYTHONPATH=. python benchmarks/step_overhead.py --profile quickstart     # where that mode's time goes
    PYTHONPATH=. python benchmarks/step_overhead.py --count-calls --steps 100  # Python calls per step
    PYTHONPATH=. python benchmarks/step_overhead.py --dispatch                  # one empty hook's dispatch
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import math
import multiprocessing
import os
import pstats
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from common import machine_name
from lightning.fabric.loggers.tensorboard import TensorBoardLogger
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger as PLTensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector
from peer_basicsr import SCALE, Batches, print_step_table, run_plain
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lit_sr.archs import build_arch
from lit_sr.io import atomic_write
from lit_sr.modules import SRModule
from lit_sr.modules.step_logs import step_logs_due
from lit_sr.training.batch_hooks import restore_batch_hooks, skip_noop_batch_hooks
from lit_sr.training.no_profiler import use_no_profiler
from lit_sr.training.progress_bar import TimedProgressBar
from lit_sr.training.stop_on_nonfinite import StopOnNonFiniteLoss
from train import main as train_cli  # the entry point's CLI builder: the Trainer `lit-sr fit` builds

MODES = ("plain", "plain_shown", "trainer", "quickstart", "quickstart_lightning_bar", "quickstart_no_bar", "quickstart_all_hooks",
         "quickstart_stock", "quickstart_log50", "trainer_minimal", "trainer_lean", "trainer_manual")
RECIPE = Path(__file__).resolve().parent.parent / "configs" / "train" / "quickstart.yaml"
# what each quickstart mode changes on the recipe's command line
QUICKSTART_ARGS = {
    "quickstart": [],
    "quickstart_lightning_bar": ["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"],
    "quickstart_no_bar": ["--trainer.enable_progress_bar", "false"],
    "quickstart_all_hooks": [],
    "quickstart_stock": [],
    "quickstart_log50": ["--trainer.log_every_n_steps", "50"],
}


class PeriodClock(L.Callback):
    """Wall and CPU seconds from the start of batch ``first`` to the start of batch ``last``."""

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.start = self.end = (0.0, 0.0)

    window: list[bool] | None = None  # a flag raised over the period (``--components``)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.first:
            self.start = (time.perf_counter(), time.process_time())
            if self.window is not None:
                self.window[0] = True
        elif batch_idx == self.last:
            self.end = (time.perf_counter(), time.process_time())
            if self.window is not None:
                self.window[0] = False


def quickstart_module(kwargs: dict) -> SRModule:
    """The quickstart's module (L1, Adam, lr 1e-3, cosine) on the benchmark's network."""
    torch.manual_seed(0)
    return SRModule(arch="edsr", arch_kwargs=kwargs, scale=SCALE, loss="l1", lr=1e-3, scheduler="cosine",
                    export_weights=False)


class ManualSRModule(SRModule):
    """``SRModule``'s step with manual optimisation: a prototype to time Lightning's automatic loop against.

    Benchmark only: it leaves out what the automatic loop gives ``SRModule`` (gradient clipping,
    accumulation, the ``on_before_optimizer_step`` hooks in the same places), which the product
    would have to re-implement before switching.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opt, sched = self.optimizers(), self.lr_schedulers()
        loss = self.pixel_loss(self(batch["lr"]).float(), batch["hr"])
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        sched.step()
        if step_logs_due(self):
            self.log("train/loss", loss, prog_bar=True, batch_size=batch["lr"].shape[0])
        return loss.detach()


class StockSRModule(SRModule):
    """``SRModule`` recording the running hook's name through ``nn.Module.__setattr__`` (``quickstart_stock``)."""

    __setattr__ = torch.nn.Module.__setattr__


class MinimalModule(L.LightningModule):
    """The least ``LightningModule`` that trains like the quickstart's: network, L1, Adam, a per-step ``LambdaLR``."""

    def __init__(self, kwargs: dict, total: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = build_arch("edsr", upscale=SCALE, **kwargs)
        self.total = total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return F.l1_loss(self.net(batch["lr"]), batch["hr"])

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        half_cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))  # noqa: E731
        cosine = torch.optim.lr_scheduler.LambdaLR(opt, half_cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def bench_module(mode: str, kwargs: dict, total: int) -> L.LightningModule:
    """The module a Trainer mode trains."""
    if mode == "trainer_minimal":
        return MinimalModule(kwargs, total)
    if mode == "quickstart_stock":
        torch.manual_seed(0)
        return StockSRModule(arch="edsr", arch_kwargs=kwargs, scale=SCALE, loss="l1", lr=1e-3, scheduler="cosine",
                             export_weights=False)
    if mode == "trainer_manual":
        torch.manual_seed(0)
        return ManualSRModule(arch="edsr", arch_kwargs=kwargs, scale=SCALE, loss="l1", lr=1e-3, scheduler="cosine",
                              export_weights=False)
    return quickstart_module(kwargs)


def quickstart_trainer(work: Path, total: int, threads: int, extra: list[str]) -> L.Trainer:
    """The Trainer ``lit-sr fit --config configs/train/quickstart.yaml`` builds, for ``total`` steps, logging to ``work``."""
    cli = train_cli(["--config", str(RECIPE), "--threads", str(threads), "--trainer.max_steps", str(total),
                     "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
                     "--trainer.enable_model_summary", "false",
                     "--trainer.logger.init_args.save_dir", str(work), *extra], run=False)
    return cli.trainer


def run_plain_shown(kwargs: dict, batches, steps: int, warmup: int, work: Path,
                    log_every: int = 5) -> tuple[float, float]:
    """The ``plain_shown`` mode: a plain loop with the quickstart's logging, bar and checks (module docstring)."""
    torch.manual_seed(0)
    net = build_arch("edsr", upscale=SCALE, **kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    total = warmup + steps + 1
    half_cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, half_cosine)
    writer = SummaryWriter(str(work / "plain_shown"))
    wall = cpu = 0.0
    with tqdm(total=total, mininterval=0.1, leave=False) as bar:
        for i, batch in enumerate(DataLoader(Batches(batches, total), batch_size=None)):
            if i == warmup:
                wall, cpu = time.perf_counter(), time.process_time()
            elif i == total - 1:  # as the Trainer modes' clock: to the start of the last step
                break
            loss = F.l1_loss(net(batch["lr"]), batch["hr"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss is {value} at step {i}")
            if (i + 1) % log_every == 0:
                writer.add_scalar("train/loss", value, i)
                writer.add_scalar("lr", schedule.get_last_lr()[0], i)
                bar.set_postfix(loss=f"{value:.3g}", refresh=False)
            bar.update()
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    writer.close()
    return elapsed


def run_trainer(mode: str, kwargs: dict, batches, steps: int, warmup: int, work: Path,
                threads: int, clocked_redraws: bool = True, window: list[bool] | None = None) -> tuple[float, float]:
    """One fit of ``mode``; ``clocked_redraws=False`` stops ``TimedProgressBar``'s time-driven redraws (call counts).

    ``window``, when given, holds one flag that is true from the start of batch ``warmup`` to the
    start of the last batch: the timed steps, set-up and the fit's end left out.
    """
    total = warmup + steps + 1  # the clock stops at the start of the last one
    clock = PeriodClock(warmup, warmup + steps)
    skip_noop_batch_hooks([clock])  # the apparatus: one hook call a step, in every mode alike
    if mode.startswith("trainer"):
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=total, limit_val_batches=0,
                            num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False, default_root_dir=work)
    else:
        trainer = quickstart_trainer(work, total, threads, QUICKSTART_ARGS[mode])
        if mode in ("quickstart_all_hooks", "quickstart_stock"):
            restore_batch_hooks(trainer.callbacks)
        if mode == "quickstart_stock":
            trainer.profiler = PassThroughProfiler()
        if not clocked_redraws:  # their number follows the wall clock, which a profiler and the load stretch
            for callback in trainer.callbacks:
                if isinstance(callback, TimedProgressBar):
                    callback.min_interval = float("inf")
    trainer.callbacks.insert(0, clock)  # first of the callbacks: its batch start is the step's start
    if window is not None:
        clock.window = window
    module = bench_module(mode, kwargs, total)
    if mode == "trainer_lean" or mode.startswith("quickstart") and mode not in ("quickstart_all_hooks",
                                                                                 "quickstart_stock"):
        skip_noop_batch_hooks([module])  # as `lit-sr fit` does once it has built the module
    if mode == "trainer_lean":
        use_no_profiler(trainer)
    trainer.fit(module, DataLoader(Batches(batches, total), batch_size=None))
    return clock.end[0] - clock.start[0], clock.end[1] - clock.start[1]


def dispatch_rows(kwargs: dict, batches, work: Path, threads: int, calls: int = 200, repeats: int = 200) -> list[dict]:
    """Microseconds to dispatch ``on_before_backward`` (empty in every callback) to the quickstart's callbacks.

    After a two-step fit (so the Trainer holds the module, as during training), Lightning's
    ``_call_callback_hooks`` is timed ``calls`` times in a row, ``repeats`` times, with every hook
    dispatched and with the empty ones hidden; the least repeat is the figure least touched by other
    jobs. The difference over the callbacks is the time one hidden empty dispatch saves.
    """
    trainer = quickstart_trainer(work, 2, threads, [])
    trainer.fit(quickstart_module(kwargs), DataLoader(Batches(batches, 2), batch_size=None))
    loss = torch.zeros(())
    rows = []
    for state in ("all dispatched", "empty ones hidden"):
        (restore_batch_hooks if state == "all dispatched" else skip_noop_batch_hooks)(trainer.callbacks)
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(calls):
                call._call_callback_hooks(trainer, "on_before_backward", loss)
            best = min(best, time.process_time() - start)
        rows.append({"state": state, "callbacks": len(trainer.callbacks), "us_per_dispatch": 1e6 * best / calls})
    rows.append({"state": "saved per hidden callback hook", "callbacks": 1,
                 "us_per_dispatch": (rows[0]["us_per_dispatch"] - rows[1]["us_per_dispatch"]) / len(trainer.callbacks)})
    return rows


def component_targets() -> dict[str, tuple[object, str]]:
    """The per-step parts of a quickstart step that ``--components`` times: label -> (owner, attribute)."""
    return {
        "callback hook dispatch (Lightning; the bodies below included)": (call, "_call_callback_hooks"),
        "LightningModule.log (Lightning; SRModule's loss on the logger's steps)": (L.LightningModule, "log"),
        "logger connector: update_train_step_metrics (Lightning)": (_LoggerConnector, "update_train_step_metrics"),
        "logger connector: on_batch_end (Lightning)": (_LoggerConnector, "on_batch_end"),
        "TensorBoardLogger.log_metrics (Lightning)": (TensorBoardLogger, "log_metrics"),
        "TensorBoardLogger.save (Lightning: flushes the event file after each logged step)": (
            PLTensorBoardLogger, "save"),
        "LearningRateMonitor.on_train_batch_start (Lightning)": (LearningRateMonitor, "on_train_batch_start"),
        "ModelCheckpoint.on_train_batch_end (Lightning)": (ModelCheckpoint, "on_train_batch_end"),
        "TimedProgressBar.on_train_batch_end (lit-sr)": (TimedProgressBar, "on_train_batch_end"),
        "StopOnNonFiniteLoss.on_train_batch_end (lit-sr)": (StopOnNonFiniteLoss, "on_train_batch_end"),
    }


def component_rows(mode: str, kwargs: dict, batches, steps: int, warmup: int, rounds: int, work: Path,
                   threads: int) -> list[dict]:
    """CPU microseconds per step in each of :func:`component_targets` during ``mode``'s fits.

    Each target is wrapped in a timer (two ``process_time`` reads, ~1 us each: the one figure
    for a hook is its body plus that) that counts over the timed steps only (the fit's set-up and
    end, with its last checkpoint, left out); the least total over ``rounds`` fits counts, since
    other jobs only ever add CPU time. Nested targets (a hook inside the dispatch) count in both.
    """
    totals: dict[str, list[tuple[int, float]]] = {}
    originals = {label: (owner, name, getattr(owner, name)) for label, (owner, name) in component_targets().items()}

    window = [False]  # raised by the clock over the timed steps only

    def timed(label: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            if not window[0]:
                return fn(*a, **k)
            start = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                counts[label][0] += 1
                counts[label][1] += time.process_time() - start
        return wrapper

    counts = {label: [0, 0.0] for label in originals}
    try:
        for label, (owner, name, fn) in originals.items():
            setattr(owner, name, timed(label, fn))
        run_trainer(mode, kwargs, batches, 2, 0, work, threads)  # first-use work out of the way
        for _ in range(rounds):
            counts = {label: [0, 0.0] for label in originals}
            _, cpu = run_trainer(mode, kwargs, batches, steps, warmup, work, threads, window=window)
            for label, (n, t) in counts.items():
                totals.setdefault(label, []).append((n, t))
            totals.setdefault("whole step (the benchmark's clock)", []).append((steps, cpu))
    finally:
        for owner, name, fn in originals.values():
            setattr(owner, name, fn)
    rows = []
    for label, runs in totals.items():
        n, t = min(runs, key=lambda r: r[1])
        if n:
            rows.append({"part": label, "calls_per_step": n / steps, "cpu_us_per_call": 1e6 * t / n,
                         "cpu_us_per_step": 1e6 * t / steps})
    return rows


def spin() -> None:
    """A CPU-bound process: the competing job of ``--busy``."""
    while True:
        pass


def calls_per_step(run: Callable[[int], object], steps: int) -> float:
    """Python function calls per step: the calls of a ``2 * steps`` run less those of a ``steps`` run, over ``steps``.

    Deterministic, so other jobs on the machine cannot skew it; a short run first puts first-use
    imports and caches out of the way.
    """
    run(2)
    counts = []
    for n in (steps, 2 * steps):
        profiler = cProfile.Profile()
        profiler.runcall(run, n)
        counts.append(pstats.Stats(profiler).total_calls)
    return (counts[1] - counts[0]) / steps


def step_rows(args, work: Path) -> list[dict]:
    kwargs = dict(num_feat=args.num_feat, num_block=args.num_block)
    g = torch.Generator().manual_seed(0)
    lr_side = args.patch // SCALE
    batches = [(torch.rand(args.batch, 3, lr_side, lr_side, generator=g),
                torch.rand(args.batch, 3, args.patch, args.patch, generator=g)) for _ in range(4)]

    def runner(mode: str, threads: int) -> Callable[[], tuple[float, float]]:
        if mode == "plain":
            return lambda: run_plain(kwargs, batches, args.steps, args.warmup)
        if mode == "plain_shown":
            return lambda: run_plain_shown(kwargs, batches, args.steps, args.warmup, work)
        return lambda: run_trainer(mode, kwargs, batches, args.steps, args.warmup, work, threads)

    if args.count_calls:  # load-independent: what each mode makes Python do per step
        torch.set_num_threads(args.threads[0])
        return [{"threads": args.threads[0], "mode": mode, "python_calls_per_step": calls_per_step(
            lambda steps, m=mode: (run_plain(kwargs, batches, steps, 0) if m == "plain" else
                                   run_plain_shown(kwargs, batches, steps, 0, work) if m == "plain_shown" else
                                   run_trainer(m, kwargs, batches, steps, 0, work, args.threads[0],
                                               clocked_redraws=False)), args.steps)}
                for mode in args.modes]
    if args.dispatch:
        torch.set_num_threads(args.threads[0])
        return dispatch_rows(kwargs, batches, work, args.threads[0])
    if args.components:
        torch.set_num_threads(args.threads[0])
        return component_rows(args.components, kwargs, batches, args.steps, args.warmup, args.rounds, work,
                              args.threads[0])
    if args.profile:  # CPU time, so other jobs on the machine do not skew it
        torch.set_num_threads(args.threads[0])
        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(runner(args.profile, args.threads[0]))
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(r"lightning|callbacks|lit_sr|tqdm", 50)
        return []
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in args.modes}
        for round_ in range(args.rounds):
            for mode in args.modes:
                times[mode].append(runner(mode, threads)())
            print(f"  threads {threads} round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{m} {1e3 * times[m][-1][0] / args.steps:.2f} ms ({1e3 * times[m][-1][1] / args.steps:.2f} CPU)"
                for m in args.modes), flush=True)
        ms = {m: (1e3 * statistics.median(t[0] for t in times[m]) / args.steps,
                  1e3 * statistics.median(t[1] for t in times[m]) / args.steps) for m in args.modes}
        base = ms["plain"]
        for mode in args.modes:
            rows.append({"threads": threads, "mode": mode, "wall_ms": ms[mode][0], "cpu_ms": ms[mode][1],
                         "cpu_ms_min": 1e3 * min(t[1] for t in times[mode]) / args.steps,
                         "wall_over_plain": ms[mode][0] / base[0], "extra_wall_ms": ms[mode][0] - base[0],
                         "extra_cpu_ms": ms[mode][1] - base[1]})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-feat", type=int, default=16, help="EDSR width")
    p.add_argument("--num-block", type=int, default=2)
    p.add_argument("--patch", type=int, default=32, help="HR patch side (LR = patch / 4)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=200, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="plain is always added")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads: one table per count")
    p.add_argument("--busy", type=int, default=0, help="CPU-bound competing processes during the run")
    p.add_argument("--profile", choices=MODES, default=None,
                   help="instead of the tables: one run of this mode under cProfile (CPU time), by cumulative time")
    p.add_argument("--count-calls", action="store_true",
                   help="instead of timing: Python function calls per step of each mode (deterministic)")
    p.add_argument("--dispatch", action="store_true",
                   help="instead of the tables: the time of one empty hook's dispatch to the quickstart's callbacks, "
                        "all dispatched against hidden (the least of many short repeats)")
    p.add_argument("--components", choices=MODES[1:], default=None,
                   help="instead of the tables: CPU time of the step's parts (hooks, log calls, logger) in this mode")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("num_feat", "num_block", "batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.busy < 0:
        p.error(f"--warmup and --busy must be >= 0, got {args.warmup} and {args.busy}")
    if args.patch % SCALE or args.patch < SCALE:
        p.error(f"--patch must be a positive multiple of {SCALE}, got {args.patch}")
    if min(args.threads) < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    args.modes = ["plain", *(m for m in args.modes if m != "plain")]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="lit_sr_steps_"))
    busy = [multiprocessing.get_context("spawn").Process(target=spin, daemon=True) for _ in range(args.busy)]
    for process in busy:
        process.start()
    try:
        report = {"benchmark": "step_overhead", "machine": machine_name(torch.device("cpu")),
                  "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "torch": torch.__version__,
                  "lightning": L.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                  "args": vars(args)}
        print(f"EDSR {args.num_feat}x{args.num_block}, batch {args.batch}, HR patch {args.patch}, "
              f"{args.steps} steps x {args.rounds} rounds, {args.busy} busy processes", flush=True)
        report["step"] = step_rows(args, work)
        report["load_average_end"] = os.getloadavg()
    finally:
        for process in busy:
            process.terminate()
        shutil.rmtree(work, ignore_errors=True)
    if args.profile:
        return report
    if args.components:
        print("\n| part | calls a step | CPU us a call | CPU us a step |\n|---|---|---|---|")
        for r in report["step"]:
            print(f"| {r['part']} | {r['calls_per_step']:.2f} | {r['cpu_us_per_call']:.1f} | {r['cpu_us_per_step']:.1f} |")
    elif args.dispatch:
        print("\n| hook dispatch | callbacks | CPU us (least of the repeats) |\n|---|---|---|")
        for r in report["step"]:
            print(f"| {r['state']} | {r['callbacks']} | {r['us_per_dispatch']:.2f} |")
    elif args.count_calls:
        base = report["step"][0]["python_calls_per_step"]  # the plain loop: always the first mode
        print("\n| mode | Python calls per step | over the plain loop |\n|---|---|---|")
        for r in report["step"]:
            print(f"| {r['mode']} | {r['python_calls_per_step']:.0f} | {r['python_calls_per_step'] - base:+.0f} |")
    else:
        print_table(report)
    if args.out:
        with atomic_write(args.out, suffix=".tmp") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2, default=str))
    return report


def print_table(report: dict) -> None:
    print(f"\n{report['machine']}, {report['args']['busy']} busy processes, load average "
          f"{report['load_average'][0]:.2f} -> {report['load_average_end'][0]:.2f}")
    print_step_table(report["step"])
    # Other jobs inflate even this process's CPU time (shared caches and cores), never deflate it:
    # the least over the rounds is the figure least touched by them.
    rows = report["step"]
    base = next(r for r in rows if r["mode"] == "plain")["cpu_ms_min"]
    print("\n| mode | least CPU ms/step over the rounds | + vs plain |\n|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['cpu_ms_min']:.2f} | {r['cpu_ms_min'] - base:+.2f} |")
    shown = next((r for r in rows if r["mode"] == "plain_shown"), None)
    if shown is not None:  # what a Trainer mode adds to a plain loop that shows the same things
        print("\n| mode | + wall ms vs plain_shown (medians) | + CPU ms (medians) | + least CPU ms |\n|---|---|---|---|")
        for r in rows:
            if r["mode"] not in ("plain", "plain_shown"):
                print(f"| {r['mode']} | {r['wall_ms'] - shown['wall_ms']:+.2f} | {r['cpu_ms'] - shown['cpu_ms']:+.2f} | "
                      f"{r['cpu_ms_min'] - shown['cpu_ms_min']:+.2f} |")


if __name__ == "__main__":
    main()
