"""Poison generation sharded over ranks (2-process gloo on CPU): halves, merge, resume, node-local folders.

Each run is a pair of ranks forked from the test process (tests/forked_ranks.py) that run
tests/poison_shard_rank.py (a BadSR configuration: a tiny EDSR substitute trained in the run, its
adversarial trigger and feature-aligned labels); the single-process reference runs the same function
with ``world=1``, in a forked process too, once for the module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from forked_ranks import free_port, run_forked
from poison_shard_rank import KILLED, run_rank

pytestmark = pytest.mark.slow  # 2-process gloo runs of a whole BadSR generation: left out by make test-fast


def run_ranks(out: Path, caches: list[Path], exit_after: dict[int, int] | None = None) -> list[int]:
    """Run one forked rank per entry of ``caches`` (rank r uses ``caches[r]``); return their exit codes.

    A rank that fails fails the run with its traceback, unless ``exit_after`` kills a rank on purpose
    (then the codes are returned for the test to check)."""
    out.mkdir(parents=True, exist_ok=True)
    port, world, exit_after = free_port(), len(caches), exit_after or {}
    rank_args = [(out, cache, rank, world, port, exit_after.get(rank)) for rank, cache in enumerate(caches)]
    return run_forked(run_rank, rank_args, out, may_fail=bool(exit_after))


def reports(out: Path, world: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def digests(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The single-process cache of the configuration."""
    root = tmp_path_factory.mktemp("single")
    assert run_ranks(root / "out", [root / "cache"]) == [0]
    (report,) = reports(root / "out", 1)
    report["files"] = digests(Path(report["cache_dir"]))
    return report


def test_two_ranks_each_make_half_and_merge_into_the_single_process_cache(tmp_path, reference):
    total = len(reference["pool"]) + reference["num_val"]
    assert reference["generated_samples"] == total
    assert run_ranks(tmp_path / "out", [tmp_path / "cache"] * 2) == [0, 0]
    r0, r1 = reports(tmp_path / "out", 2)
    # every sample made once, about half by each rank (shards of the pool and of the validation set)
    assert r0["generated_samples"] + r1["generated_samples"] == total
    assert abs(r0["generated_samples"] - r1["generated_samples"]) <= 2
    # one substitute (trained on rank 0, broadcast) everywhere, the same as the single-process run's
    assert r0["substitute_sha256"] == r1["substitute_sha256"] == reference["substitute_sha256"]
    assert r0["poisoned_indices"] == r1["poisoned_indices"] == reference["poisoned_indices"]
    merged = Path(r0["cache_dir"])
    assert r1["cache_dir"] == str(merged) and merged.name == Path(reference["cache_dir"]).name
    # same files with the same bytes: samples, substitute, both manifests; no partial manifest left
    assert digests(merged) == reference["files"]
    assert not (merged / "parts").exists()
    assert not any((tmp_path / "cache" / ".peers").iterdir())  # the run's token folder is removed


def test_a_killed_rank_resumes_without_redoing_finished_samples(tmp_path, reference):
    cache = tmp_path / "cache"
    codes = run_ranks(tmp_path / "out1", [cache] * 2, exit_after={1: 4})
    assert codes[1] == KILLED and codes[0] != 0  # rank 1 died; rank 0 lost its peer at the barrier
    folder = cache / Path(reference["cache_dir"]).name
    parts = folder / "parts"
    half = json.loads((parts / "rank00001.json").read_text())["samples"]
    assert len(half) == 4  # rank 1 listed what it finished before dying
    finished = {e["file"]: (folder / e["file"]).stat().st_mtime_ns for e in half.values()}
    finished.update({e["file"]: (folder / e["file"]).stat().st_mtime_ns
                     for e in json.loads((parts / "rank00000.json").read_text())["samples"].values()})

    assert run_ranks(tmp_path / "out2", [cache] * 2) == [0, 0]
    r0, r1 = reports(tmp_path / "out2", 2)
    pool, num_val = reference["pool"], reference["num_val"]
    assert r0["generated_samples"] == 0  # rank 0 had finished its train shard before the kill
    # rank 1 made the rest of its shards: the pool's and the validation set's odd positions
    assert r1["generated_samples"] == len(pool[1::2]) - 4 + len(range(num_val)[1::2])
    for name, mtime in finished.items():  # nothing finished was written again
        assert (folder / name).stat().st_mtime_ns == mtime
    assert digests(folder) == reference["files"]


def test_node_local_cache_folders_are_each_filled_completely(tmp_path, reference):
    # two ranks that do not share a folder (as two nodes with local disks): each folder gets every sample
    caches = [tmp_path / "node0", tmp_path / "node1"]
    assert run_ranks(tmp_path / "out", caches) == [0, 0]
    r0, r1 = reports(tmp_path / "out", 2)
    total = len(reference["pool"]) + reference["num_val"]
    assert r0["generated_samples"] == r1["generated_samples"] == total
    assert r0["substitute_sha256"] == r1["substitute_sha256"] == reference["substitute_sha256"]
    for report in (r0, r1):
        assert digests(Path(report["cache_dir"])) == reference["files"]
