"""Training throughput: a plain PyTorch loop against SRModule's training_step through a Lightning Trainer.

For each network at its standard x4 size (batch 16, 48x48 LR patches; SwinIR-M with img_size 48,
window 8) one run measures images/s of

  (a) a plain loop: forward, L1, backward, Adam (lr 1e-4, betas (0.9, 0.99)), fp32;
  (b) the same loop with bf16 autocast and channels-last weights and input;
  (e) with --bf16-plain: the loop with bf16 autocast alone (contiguous layout): b/e is what
      channels-last adds on top of bf16;
  (c) SRModule.training_step driven by a Lightning Trainer with the settings of (b)
      (precision "bf16-mixed", channels_last=True, no scheduler, no logger, no progress bar);
  (d) with --compile: (c) with compile=True (torch.compile of the network).

Every mode trains a fresh network from the same seed on the same device-resident random batch (no
data loading, so the comparison isolates the training step). Warm-up steps are excluded and CUDA
is synchronised around the timed steps. FLOPs of one training step (forward + backward) are
counted once per network with torch.utils.flop_counter.FlopCounterMode (convolutions and matrix
products; element-wise work is not counted) and turned into achieved TFLOP/s for every mode. "fp32" means PyTorch's defaults: on Ampere+ GPUs cuDNN may run fp32 convolutions in
TF32 (recorded in the JSON). Peak GPU memory per mode is recorded too.

    python benchmarks/train_throughput.py --device cuda --out train_throughput.json
    python benchmarks/train_throughput.py --device cuda --archs edsr_l --compile
    python benchmarks/train_throughput.py --device cpu --quick        # tiny networks, a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
import warnings
from dataclasses import dataclass

import lightning as L
import torch
from common import machine_name, synchronise
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from lit_sr.archs import arch_kwargs_with_scale, build_arch, count_parameters
from lit_sr.io import atomic_write
from lit_sr.modules import SRModule

SCALE = 4
SWINIR_M = dict(img_size=48, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6,
                mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")


@dataclass(frozen=True)
class Net:
    """A benchmarked network: registry name, standard arguments, and tiny ones for --quick."""

    arch: str
    kwargs: dict
    quick_kwargs: dict


NETS = {
    "edsr": Net("edsr", dict(num_feat=64, num_block=16, res_scale=1.0), dict(num_feat=8, num_block=1)),
    "edsr_l": Net("edsr", dict(num_feat=256, num_block=32, res_scale=0.1), dict(num_feat=16, num_block=2,
                                                                              res_scale=0.1)),
    "rcan": Net("rcan", dict(num_feat=64, num_group=10, num_block=20, squeeze_factor=16),
                dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4)),
    "rrdbnet": Net("rrdbnet", dict(num_feat=64, num_block=23, num_grow_ch=32),
                   dict(num_feat=8, num_block=1, num_grow_ch=4)),
    "swinir": Net("swinir", SWINIR_M, dict(SWINIR_M, img_size=16, window_size=4, depths=[2], embed_dim=12,
                                           num_heads=[2])),
    "carn": Net("carn", dict(num_feat=64), dict(num_feat=8)),
}
MODES = {
    "a": "plain fp32",
    "b": "plain bf16+CL",
    "c": "Lightning bf16+CL",
    "d": "Lightning bf16+CL+compile",
    "e": "plain bf16",
}


# ------------------------------------------------------------------------------------------------ helpers
def build_net(spec: Net, kwargs: dict, device: torch.device | str) -> torch.nn.Module:
    torch.manual_seed(0)  # every mode starts from the same weights
    return build_arch(spec.arch, **arch_kwargs_with_scale(spec.arch, kwargs, SCALE)).to(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def count_step_flops(spec: Net, kwargs: dict, lr: torch.Tensor, hr: torch.Tensor) -> int:
    """FLOPs of one forward + backward of the L1 loss, counted on the meta device (no compute);
    falls back to the real device for a network whose forward does not run on meta tensors."""
    for device in ("meta", lr.device):
        try:
            net = build_net(spec, kwargs, device)
            with FlopCounterMode(display=False) as counter:
                sr = net(lr.to(device))
                F.l1_loss(sr, hr.to(device)).backward()
            return int(counter.get_total_flops())
        except (NotImplementedError, RuntimeError):
            if device != "meta":
                raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------ (a), (b)
def plain_loop(net: torch.nn.Module, lr: torch.Tensor, hr: torch.Tensor, steps: int, warmup: int,
               fast: bool, channels_last: bool | None = None) -> float:
    """Seconds for ``steps`` training steps after ``warmup`` (fast: bf16 autocast, with channels-last
    unless ``channels_last`` says otherwise)."""
    device = lr.device
    cl = fast if channels_last is None else channels_last
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))

    def step() -> None:
        x = lr.contiguous(memory_format=torch.channels_last) if cl else lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            sr = net(x)
            loss = F.l1_loss(sr.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ (c), (d)
class SameBatch(Dataset):
    """The same device-resident batch ``length`` times (``DataLoader(batch_size=None)``)."""

    def __init__(self, lr: torch.Tensor, hr: torch.Tensor, length: int):
        self.batch = {"lr": lr, "hr": hr, "index": torch.arange(lr.shape[0], device=lr.device), "path": ["bench"]}
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batch


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of batch ``warmup + steps - 1``."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.last, self.device = warmup, warmup + steps - 1, device
        self.start = self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            synchronise(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.last:
            synchronise(self.device)
            self.end = time.perf_counter()


def lightning_loop(spec: Net, kwargs: dict, lr: torch.Tensor, hr: torch.Tensor, steps: int, warmup: int,
                   compile: bool) -> float:
    """Seconds for ``steps`` SRModule training steps in a Trainer (bf16-mixed, channels-last)."""
    device = lr.device
    torch.manual_seed(0)
    module = SRModule(arch=spec.arch, arch_kwargs=kwargs, scale=SCALE, loss="l1", lr=1e-4, betas=(0.9, 0.99),
                      scheduler="none", channels_last=True, compile=compile, export_weights=False)
    timer = StepTimer(warmup, steps, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed", max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer],
    )
    loader = DataLoader(SameBatch(lr, hr, warmup + steps), batch_size=None, shuffle=False, num_workers=0)
    trainer.fit(module, loader)
    return timer.end - timer.start


# ------------------------------------------------------------------------------------------------ driver
def run_mode(mode: str, spec: Net, kwargs: dict, lr, hr, args) -> tuple[float | None, float | None, str | None]:
    """(images/s, peak GiB, error) of one mode."""
    device = lr.device
    free_memory(device)
    try:
        if mode in ("a", "b", "e"):
            seconds = plain_loop(build_net(spec, kwargs, device), lr, hr, args.steps, args.warmup,
                                 fast=mode in ("b", "e"), channels_last=mode == "b")
        else:
            seconds = lightning_loop(spec, kwargs, lr, hr, args.steps, args.warmup, compile=mode == "d")
    except torch.OutOfMemoryError:
        return None, peak_memory_gib(device), "out of memory"
    return args.steps * lr.shape[0] / seconds, peak_memory_gib(device), None


def benchmark(args) -> dict:
    device = torch.device(args.device)
    modes = ["a"] + (["e"] if args.bf16_plain else []) + ["b", "c"] + (["d"] if args.compile else [])
    rows = []
    jobs = [(name, mode) for name in args.archs for mode in modes]
    bar = tqdm(jobs, desc="train throughput", unit="run")
    results: dict[str, dict] = {}
    for name, mode in bar:
        bar.set_postfix_str(f"{name} ({mode}) {MODES[mode]}")
        spec = NETS[name]
        kwargs = spec.quick_kwargs if args.quick else spec.kwargs
        if name not in results:
            g = torch.Generator(device="cpu").manual_seed(0)
            lr = torch.rand(args.batch, 3, args.lr_size, args.lr_size, generator=g).to(device)
            hr = torch.rand(args.batch, 3, args.lr_size * SCALE, args.lr_size * SCALE, generator=g).to(device)
            net = build_net(spec, kwargs, "cpu")
            results[name] = {"arch": name, "registry": spec.arch, "kwargs": kwargs, "params": count_parameters(net),
                             "flops_per_step": count_step_flops(spec, kwargs, lr, hr), "img_s": {},
                             "peak_mem_gib": {}, "errors": {}, "_data": (lr, hr)}
            del net
        row = results[name]
        img_s, mem, error = run_mode(mode, spec, kwargs, *row["_data"], args)
        row["img_s"][mode], row["peak_mem_gib"][mode] = img_s, mem
        if error:
            row["errors"][mode] = error
    for row in results.values():
        del row["_data"]
        steps_per_img = row["flops_per_step"] / args.batch
        row["tflops"] = {m: (v * steps_per_img / 1e12 if v else None) for m, v in row["img_s"].items()}
        a, b, c = (row["img_s"].get(m) for m in "abc")
        row["ratios"] = {"c/a": c / a if a and c else None, "c/b": c / b if b and c else None}
        if "e" in row["img_s"]:
            e = row["img_s"]["e"]
            row["ratios"]["b/e"] = b / e if b and e else None
        if "d" in row["img_s"]:
            d = row["img_s"]["d"]
            row["ratios"].update({"d/a": d / a if a and d else None, "d/c": d / c if c and d else None})
        rows.append(row)
    return {
        "benchmark": "train_throughput",
        "device": str(device),
        "machine": machine_name(device),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "batch": args.batch,
        "lr_size": args.lr_size,
        "scale": SCALE,
        "steps": args.steps,
        "warmup": args.warmup,
        "quick": args.quick,
        "compile": args.compile,
        "bf16_plain": args.bf16_plain,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        # PyTorch's defaults: "fp32" convolutions may run in TF32 on Ampere+ GPUs; fp32 matmuls do not.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "rows": rows,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict) -> None:
    plain = report.get("bf16_plain", False)
    modes = ["a"] + (["e"] if plain else []) + ["b", "c"] + (["d"] if report["compile"] else [])
    print(f"\ntraining throughput, x{report['scale']}, batch {report['batch']}, LR {report['lr_size']}px, "
          f"{report['steps']} timed steps after {report['warmup']}, {report['device']} ({report['machine']})")
    print("  " + "   ".join(f"({m}) {MODES[m]}" for m in modes))
    header = ["arch", "params", "GFLOP/step", *(f"({m}) img/s" for m in modes), "c/a", "c/b"]
    header += ["d/a"] if report["compile"] else []
    header += ["b/e (CL)"] if plain else []
    header += [f"({m}) TFLOP/s" for m in modes]
    lines = [header]
    for row in report["rows"]:
        line = [row["arch"], f"{row['params'] / 1e6:.2f}M", f"{row['flops_per_step'] / 1e9:.1f}"]
        line += [fmt(row["img_s"].get(m), ".1f") for m in modes]
        line += [fmt(row["ratios"]["c/a"], ".2f"), fmt(row["ratios"]["c/b"], ".3f")]
        line += [fmt(row["ratios"].get("d/a"), ".2f")] if report["compile"] else []
        line += [fmt(row["ratios"].get("b/e"), ".2f")] if plain else []
        line += [fmt(row["tflops"].get(m), ".3g") for m in modes]
        lines.append(line)
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    for k, line in enumerate(lines):
        print("  ".join(str(c).rjust(w) for c, w in zip(line, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for row in report["rows"]:
        for mode, error in row["errors"].items():
            print(f"{row['arch']} ({mode}): {error}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", nargs="+", default=list(NETS), choices=list(NETS), help="networks to run")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 50; 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 2 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 16; 2 with --quick)")
    p.add_argument("--lr-size", type=int, default=None, help="LR patch side (default 48; 16 with --quick)")
    p.add_argument("--compile", action="store_true", help="add mode (d): SRModule with compile=True")
    p.add_argument("--bf16-plain", action="store_true", help="add mode (e): plain bf16 without channels-last")
    p.add_argument("--quick", action="store_true", help="tiny networks and sizes: a CPU smoke run")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (5 if quick else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 10)
    args.batch = args.batch or (2 if quick else 16)
    args.lr_size = args.lr_size or (16 if quick else 48)
    for name in ("steps", "batch", "lr_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup >= 1: the first step compiles and must not be timed")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # BasicSR's setting; applies to every mode alike.
    torch.backends.cudnn.benchmark = True
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    report = benchmark(args)
    print_table(report)
    if args.out:
        with atomic_write(args.out) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
