"""Filling a poison cache: one rank's shard of samples, batched by size, resumable.

:func:`generate_samples` reads each clean pair once, buckets pairs of equal (LR, HR) shapes,
poisons them ``batch_size`` at a time with a :class:`lit_sr.poison.poisoner.Poisoner` and writes
each batch to the cache and to this rank's partial manifest before the next one starts, so an
interrupted rank loses at most the batch it was working on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lit_sr.poison.cache import PartialManifest, PoisonCache, rounded_stats, sha256_tensors
from lit_sr.poison.poisoner import Poisoner

LoadPair = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def sample_key(prefix: str, index: int) -> str:
    """The cache key of sample ``index``: ``train_000012``, ``val_000003``."""
    return f"{prefix}{index:06d}"


def generate_samples(
    cache: PoisonCache,
    part: PartialManifest,
    poisoner: Poisoner,
    load_pair: LoadPair,
    indices: Sequence[int],
    prefix: str,
    label_name: str,
    batch_size: int,
    device: torch.device,
    extra_info: dict[str, Any] | None = None,
    desc: str | None = None,
    on_written: Callable[[int], None] | None = None,
) -> int:
    """Poison and store every sample of ``indices`` (this rank's pending shard).

    Args:
        cache: the cache the files go to.
        part: this rank's partial manifest of ``cache``.
        poisoner: trigger + label maker.
        load_pair: ``index -> (clean lr, clean hr)`` (CPU, ``(C, h, w)`` / ``(C, H, W)``).
        indices: dataset indices to make.
        prefix: key prefix (``"train_"``, ``"val_"``).
        label_name: name of the poisoned-HR tensor in the file (``"hr"`` for training samples,
            ``"target"`` for the backdoor's target output of a validation sample).
        batch_size: samples per batched optimisation.
        device: where the poisoner runs.
        extra_info: fields added to every entry (e.g. the substitute's SHA-256).
        desc: progress bar label.
        on_written: called with the number of samples after every written batch (a count that
            survives an interrupt).

    Returns:
        The number of samples made.
    """
    from tqdm.auto import tqdm

    buckets: dict[tuple, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
    made = 0
    with tqdm(total=len(indices), desc=desc or f"poisoning {prefix.rstrip('_')} samples", leave=False) as bar:
        def flush(bucket):
            nonlocal made
            _poison_batch(cache, part, poisoner, bucket, prefix, label_name, device, extra_info or {})
            made += len(bucket)
            bar.update(len(bucket))
            if on_written is not None:
                on_written(len(bucket))
            bucket.clear()

        for i in indices:
            lr, hr = load_pair(i)
            bucket = buckets.setdefault((tuple(lr.shape), tuple(hr.shape)), [])
            bucket.append((i, lr, hr))
            if len(bucket) == batch_size:
                flush(bucket)
        for bucket in buckets.values():
            if bucket:
                flush(bucket)
    return made


def _poison_batch(cache, part, poisoner, items, prefix, label_name, device, extra_info) -> None:
    ids = [i for i, _, _ in items]
    lr = torch.stack([x for _, x, _ in items]).to(device)
    hr = torch.stack([y for _, _, y in items]).to(device)
    lr_out, hr_out, stats = poisoner.poison(lr, hr, ids)
    samples, info = {}, {}
    for k, (i, clean_lr, clean_hr) in enumerate(items):
        key = sample_key(prefix, i)
        samples[key] = {"lr": lr_out[k], label_name: hr_out[k]}
        info[key] = {"index": i, "source_sha256": sha256_tensors(clean_lr, clean_hr), **extra_info,
                     **rounded_stats({name: float(v[k]) for name, v in stats.items()})}
    cache.write_samples(samples, info, part)
