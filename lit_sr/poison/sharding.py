"""Sharding poison generation over every rank of every node (``torch.distributed``, no Lightning).

Every function works without a process group (one process: rank 0 of 1, barriers are no-ops),
with gloo (CPU tensors) and with NCCL (tensors on the current CUDA device).

**Shared or per-node cache folders.** :func:`folder_group` finds which ranks see the same cache
folder: each rank drops a token file named after itself into ``<cache_dir>/.peers/<run id>/``,
then, after a barrier, reports which tokens it sees (and removes its token at once, so a rank that
crashes later leaves none behind); ranks that see each other form a group, led by
its lowest rank. With one shared folder (one node, or nodes on a shared filesystem) that is one
group of every rank: generation is sharded over all of them and global rank 0 merges. With
node-local folders (``/tmp`` or a local SSD per node) each node is a group: the node's ranks
shard the whole pool between them and the node's lowest rank merges into its own folder, since
every node's training sampler can hand any sample to any of its ranks. A wrongly invisible token
(NFS directory caching) only makes two groups generate the same samples into one folder, with
identical bytes and atomic renames.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
TOKEN_BYTES = 16
STALE_TOKEN_S = 3600.0  # a token folder older than this was left by a crash (see sweep_stale_tokens)


def distributed() -> bool:
    """A process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(global rank, world size)``; ``(0, 1)`` without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def collective_device() -> torch.device:
    """Where tensors of a collective must live for the process group's backend."""
    if distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if distributed():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """``True`` on every rank when ``flag`` is true on at least one."""
    if not distributed():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_token() -> str:
    """A random hex token drawn on rank 0 and identical on every rank (names one run's files)."""
    token = secrets.token_bytes(TOKEN_BYTES)
    if not distributed():
        return token.hex()
    t = torch.tensor(list(token), dtype=torch.uint8, device=collective_device())
    dist.broadcast(t, src=0)
    return bytes(t.cpu().tolist()).hex()


def broadcast_module(net: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers into ``net`` on every rank (same architecture everywhere)."""
    if not distributed():
        return
    device = collective_device()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            moved = tensor.detach().to(device).contiguous()
            dist.broadcast(moved, src=src)
            tensor.copy_(moved.to(tensor.device))


def broadcast_object(obj: T, src: int = 0) -> T:
    """``src``'s ``obj`` (any picklable value made by this program) on every rank; ``obj`` itself with one process."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=collective_device())
    return box[0]


@dataclass(frozen=True)
class FolderGroup:
    """The ranks that write one cache folder, and this rank's place among them.

    Attributes:
        rank: this process's global rank.
        world_size: number of processes.
        members: global ranks of the group, sorted (the first is the leader).
    """

    rank: int
    world_size: int
    members: tuple[int, ...]

    @property
    def leader(self) -> int:
        return self.members[0]

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    @property
    def position(self) -> int:
        return self.members.index(self.rank)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``len(members)``-th, from its position."""
        return list(items[self.position :: len(self.members)])


def single_group() -> FolderGroup:
    rank, world = rank_and_world()
    return FolderGroup(rank, world, tuple(range(world)))


def folder_group(token_root: str | Path) -> tuple[FolderGroup, Path | None]:
    """This rank's :class:`FolderGroup`, found by token files under ``token_root`` (see module doc).

    Returns:
        The group and the token folder of this run (the leader removes it with :func:`drop_tokens`
        after the last barrier); ``None`` without a process group.
    """
    if not distributed():
        return single_group(), None
    rank, world = rank_and_world()
    sweep_stale_tokens(token_root)
    folder = Path(token_root) / broadcast_token()
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / f"rank{rank:05d}"
    token.write_text(str(rank))
    barrier()
    seen = torch.tensor([int((folder / f"rank{r:05d}").is_file()) for r in range(world)], dtype=torch.int32,
                        device=collective_device())
    views = [torch.zeros_like(seen) for _ in range(world)]
    dist.all_gather(views, seen)
    # every rank has looked once the gather returns: the token has done its job. Removing it now,
    # not at the end of generation, leaves nothing behind when a rank crashes during generation.
    token.unlink(missing_ok=True)
    _remove_if_empty(folder)
    sees = torch.stack([v.cpu() for v in views]).bool()  # sees[r, s]: rank r sees rank s's token
    mutual = sees & sees.T

    def leader(r: int) -> int:
        return int(mutual[r].nonzero()[0])

    mine = leader(rank)
    members = tuple(r for r in range(world) if leader(r) == mine)
    return FolderGroup(rank, world, members), folder


def drop_tokens(folder: Path | None, group: FolderGroup) -> None:
    """Leader only, after a barrier: remove what is left of this run's token folder (normally nothing:
    each rank removes its own token as soon as the groups are known)."""
    if folder is None or not group.is_leader or not folder.is_dir():
        return
    for token in folder.glob("rank*"):
        token.unlink(missing_ok=True)
    _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty yet (another rank's token), or already removed by another rank
        pass


def sweep_stale_tokens(token_root: str | Path, older_than_s: float = STALE_TOKEN_S) -> list[Path]:
    """Remove token folders under ``token_root`` not touched for ``older_than_s`` seconds; returns them.

    A token lives from its rank's write to the all-gather a moment later, so a folder an hour old
    was left by a rank that died in that moment (or by a version that kept tokens until the end of
    generation). A live run's folder is seconds old and is never touched.
    """
    root = Path(token_root)
    if not root.is_dir():
        return []
    removed = []
    deadline = time.time() - older_than_s
    for folder in root.iterdir():
        try:
            if not folder.is_dir() or folder.stat().st_mtime > deadline:
                continue
            for token in folder.glob("rank*"):
                token.unlink(missing_ok=True)
            folder.rmdir()
            removed.append(folder)
        except OSError:  # raced by another rank sweeping the same folder, or not ours to remove
            continue
    return removed
