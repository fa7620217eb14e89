"""Filling the poison caches: sharded over ranks (:class:`CacheFiller`), batched by size, resumable.

:class:`CacheFiller` decides what is missing, gets the one substitute to every rank, has every
rank make its shard and merges the partial manifests. :func:`generate_samples` reads each clean pair once, buckets pairs of equal (LR, HR) shapes,
poisons them ``batch_size`` at a time with a :class:`lit_sr.poison.poisoner.Poisoner` and writes
each batch to the cache and to this rank's partial manifest before the next one starts, so an
interrupted rank loses at most the batch it was working on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_sr.io import load_weights
from lit_sr.poison import sharding
from lit_sr.poison.cache import (
    PARTS,
    PartialManifest,
    PoisonCache,
    rounded_stats,
    sha256_tensors,
    warn_regenerating,
)
from lit_sr.poison.poisoner import Poisoner
from lit_sr.poison.substitute import (
    SUBSTITUTE_FILE,
    SubstituteSpec,
    freeze,
    load_substitute,
    save_substitute,
    substitute_sha256,
    train_substitute,
)

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


# --------------------------------------------------------------------------- filling the caches, sharded


class CachePart:
    """One cache to fill: its samples (dataset indices), key prefix, label tensor name and loader.

    Args:
        cache: the cache.
        indices: dataset indices of its samples.
        prefix: key prefix (``"train_"``, ``"val_"``).
        label_name: name of the poisoned-HR tensor in the files (``"hr"``, ``"target"``).
        load_pair: ``index -> (clean lr, clean hr)``.
    """

    def __init__(self, cache: PoisonCache, indices: Sequence[int], prefix: str, label_name: str, load_pair: LoadPair):
        self.cache, self.indices, self.prefix = cache, list(indices), prefix
        self.label_name, self.load_pair = label_name, load_pair

    @property
    def keys(self) -> list[str]:
        return [sample_key(self.prefix, i) for i in self.indices]


class FillResult:
    """What :meth:`CacheFiller.run` leaves: the substitute used (or ``None``), its SHA-256, the
    poisoner, whether the cache was found complete (files already verified), samples made here."""

    def __init__(self, substitute: nn.Module | None, substitute_sha256: str | None, poisoner: Poisoner | None,
                 verified: bool, generated: int):
        self.substitute, self.substitute_sha256, self.poisoner = substitute, substitute_sha256, poisoner
        self.verified, self.generated = verified, generated


class CacheFiller:
    """Make whatever the caches lack, sharded over the ranks that share their folder.

    Called on every rank (a process group, if any, is initialised). The steps:

    1. every rank reads its manifests and checks its samples (only reads); when every rank finds
       everything listed, intact and made with the substitute at hand, nothing is written;
    2. otherwise the ranks find their folder group (:func:`lit_sr.poison.sharding.folder_group`);
       each group's leader clears a mismatched cache (``rebuild``), creates the folders and
       removes stale temporary files; barrier;
    3. the substitute (when there is one) comes from its weights file, or is trained once on
       global rank 0 (unless an intact one is stored in the cache) and broadcast; leaders store it;
    4. every rank poisons the missing samples of its shard, writing its partial manifest after
       every batch (broken cached samples are remade with a warning naming the file); barrier;
    5. leaders merge the partial manifests; barrier; every rank re-reads the manifests.

    Args:
        parts: the caches to fill (all in one cache folder tree; the first holds the substitute).
        make_poisoner: ``substitute or None -> Poisoner`` (called once the substitute is known).
        substitute: the substitute's settings, or ``None``.
        scale: SR scale (the substitute's scale argument).
        seed: seed of the substitute's initialisation and training.
        train_data: clean training pairs for the substitute's training.
        token_root: where the ranks drop their folder-group tokens (``<cache_dir>/.peers``).
        batch_size: samples per batched optimisation.
        device: where the substitute and the poisoner run.
        check_hash: compare cached files with their recorded SHA-256 when checking.
        on_written: called with the number of samples after every written batch.
    """

    def __init__(self, parts: Sequence[CachePart], make_poisoner: Callable[[nn.Module | None], Poisoner],
                 substitute: SubstituteSpec | None, scale: int, seed: int, train_data: Any, token_root: Path,
                 batch_size: int, device: torch.device, check_hash: bool = True,
                 on_written: Callable[[int], None] | None = None):
        self.parts, self.make_poisoner, self.spec = list(parts), make_poisoner, substitute
        self.scale, self.seed, self.train_data, self.token_root = scale, seed, train_data, Path(token_root)
        self.batch_size, self.device, self.check_hash = batch_size, device, check_hash
        self.on_written = on_written
        self.generated = 0

    @property
    def home(self) -> PoisonCache:
        """The cache whose folder holds the substitute and whose manifest records its SHA-256."""
        return self.parts[0].cache

    def run(self) -> FillResult:
        for part in self.parts:
            part.cache.load()  # a cache of another configuration raises here unless rebuild
        net, sha = self._substitute_on_disk()
        if not sharding.any_rank(not self._complete(net, sha)):
            return self._result(net, sha, verified=True)  # read-only storage works: nothing is written
        group, tokens = sharding.folder_group(self.token_root)
        if group.is_leader:
            for part in self.parts:
                part.cache.prepare()
        sharding.barrier()
        net, sha = self._shared_substitute(net, sha, group)
        result = self._result(net, sha, verified=False)
        for part in self.parts:
            part.cache.load()
            self._generate_shard(part, group, result.poisoner, sha)
        sharding.barrier()
        if group.is_leader:
            for part in self.parts:
                part.cache.merge_parts()
        sharding.barrier()
        sharding.drop_tokens(tokens, group)
        for part in self.parts:
            part.cache.load()
        result.generated = self.generated
        return result

    def _result(self, net: nn.Module | None, sha: str | None, verified: bool) -> FillResult:
        if net is not None:
            freeze(net, self.device)  # on the device once, here; nothing moves it later
        return FillResult(net, sha, self.make_poisoner(net), verified, self.generated)

    @staticmethod
    def expected(sha: str | None) -> dict[str, Any]:
        """The entry fields a usable sample must have (the substitute it was made with)."""
        return {} if sha is None else {"substitute_sha256": sha}

    def _complete(self, net: nn.Module | None, sha: str | None) -> bool:
        """Every sample listed in the manifests, intact, made with this substitute (only reads)."""
        if self.spec is not None and net is None:
            return False
        for part in self.parts:
            if part.cache.mismatch is not None or (part.cache.directory / PARTS).is_dir():
                return False
            if part.cache.check(part.keys, check_hash=self.check_hash, expect=self.expected(sha)):
                return False
        return True

    def _substitute_on_disk(self) -> tuple[nn.Module | None, str | None]:
        """The substitute from its weights file, or the one stored in the cache when it is intact."""
        if self.spec is None:
            return None, None
        net = self.spec.build(self.scale, self.seed)
        if self.spec.weights is not None:
            load_weights(net, self.spec.weights, key=self.spec.weights_key)
            return net, substitute_sha256(net)
        home = self.home
        recorded = home.extra.get("substitute_sha256") if home.mismatch is None else None
        if recorded and load_substitute(net, home.directory / SUBSTITUTE_FILE, recorded):
            return net, recorded
        return None, None

    def _shared_substitute(self, net, sha, group: sharding.FolderGroup) -> tuple[nn.Module | None, str | None]:
        """One substitute for every rank: read or trained on global rank 0, broadcast, stored per folder."""
        if self.spec is None:
            return None, None
        home = self.home
        if self.spec.trained_here:
            if net is None:
                net = self.spec.build(self.scale, self.seed)
                if group.rank == 0:
                    train_substitute(net, self.train_data, self.spec.train_steps, self.spec.train_lr,
                                     self.spec.train_batch_size, self.seed, self.device)
            net.to(sharding.collective_device())
            sharding.broadcast_module(net)  # rank 0's weights everywhere, whatever each rank had
            sha = substitute_sha256(net)
            stored = home.directory / SUBSTITUTE_FILE
            if group.is_leader and (home.extra.get("substitute_sha256") != sha or not stored.is_file()):
                home.extra["substitute_sha256"] = save_substitute(net, stored)
                home.write_manifest()
        elif group.is_leader and home.extra.get("substitute_sha256") != sha:
            home.extra["substitute_sha256"] = sha
            home.write_manifest()
        return net, sha

    def _generate_shard(self, part: CachePart, group: sharding.FolderGroup, poisoner: Poisoner,
                        sha: str | None) -> None:
        cache = part.cache
        known = {**cache.entries, **cache.partial_entries()}
        expect = self.expected(sha)
        pending, broken = [], {}
        for i in group.shard(part.indices):
            key = sample_key(part.prefix, i)
            if key not in known:
                pending.append(i)
                continue
            reason = cache.problem(key, known[key], check_hash=True, expect=expect)
            if reason is not None:
                broken[key] = reason
                pending.append(i)
        warn_regenerating(broken)
        if pending:
            generate_samples(cache, PartialManifest(cache, group.rank), poisoner, part.load_pair, pending,
                             part.prefix, part.label_name, self.batch_size, self.device, extra_info=expect,
                             desc=f"poisoning {part.prefix.rstrip('_')} samples (rank {group.rank})",
                             on_written=self._written)

    def _written(self, n: int) -> None:
        self.generated += n
        if self.on_written is not None:
            self.on_written(n)
