"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, which puts this
folder on the import path)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def synchronise(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or platform.machine()
