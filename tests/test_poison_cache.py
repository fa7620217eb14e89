"""Poison cache under faults: read-only storage, a full disk, a corrupted sample, another substitute,
bad settings caught before any work.

Tiny tiles of the embedded photographs, tiny randomly initialised (or 3-step trained) EDSRs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.jobs.train.cli import main as train_main
from lit_sr.poison import cache as cache_module
from lit_sr.poison.cache import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def make_dm(tmp_path: Path, **kw) -> PoisonedSRDataModule:
    base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=48,
                                    val_tile=32, max_val_images=2, num_workers=0)
    args = dict(trigger={"name": "blend"}, poison_rate=0.2, target="coffee", cache_dir=str(tmp_path / "cache"),
                seed=0, generation_batch_size=4, generation_device="cpu")
    args.update(kw)
    return PoisonedSRDataModule(base, **args)


BADSR = dict(trigger={"name": "badsr", "steps": 2, "perceptual": "ssim"}, label="badsr", poisoned_hr_steps=2,
             candidate_rate=0.5,
             substitute={"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1}, "train_steps": 3,
                         "train_batch_size": 4})


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def set_writable(folder: Path, writable: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        os.chmod(p, mode | stat.S_IWUSR if writable else mode & ~bits)


def test_a_complete_cache_on_read_only_storage_is_read_without_writing(tmp_path, monkeypatch):
    first = make_dm(tmp_path)
    first.setup("fit")
    root = tmp_path / "cache"
    before = snapshot(root)

    def refuse(path, write):  # also holds for root, whom chmod does not stop
        raise PermissionError(errno.EROFS, f"read-only file system: {path}")

    set_writable(root, False)
    monkeypatch.setattr(cache_module, "write_named", refuse)
    try:
        reader = make_dm(tmp_path)
        reader.setup("fit")
        assert reader.generated_samples == 0
        assert snapshot(root) == before  # not one file created, removed or rewritten
        i = reader.candidate_indices[0]
        torch.testing.assert_close(reader.poisoned_pair(i)[0], first.poisoned_pair(i)[0])
        assert reader.backdoor_val_pair(0, *reader.base.val_dataset.load_pair(0))[0].shape[0] == 3

        # a broken sample on read-only storage is a named error, not a silent regeneration
        set_writable(root, True)
        victim = sorted(reader.cache.directory.glob("train_*.safetensors"))[0]
        victim.write_bytes(victim.read_bytes()[:-5])
        set_writable(root, False)
        with pytest.raises(PermissionError, match="read-only"):
            make_dm(tmp_path).setup("fit")
    finally:
        set_writable(root, True)


def test_a_full_disk_during_generation_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as info:
        make_dm(tmp_path).setup("fit")
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "No space left on device" in message
    assert re.search(r"cache/[0-9a-f]{16}/train_\d{6}\.safetensors", message), message  # the sample's own file


def test_samples_are_keyed_by_the_substitute_actually_used(tmp_path):
    dm = make_dm(tmp_path, **BADSR)
    dm.setup("fit")
    folder = dm.cache.directory
    old_sha = dm.substitute_sha256
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extra"]["substitute_sha256"] == old_sha == sha256_file(folder / "substitute.safetensors")
    assert {e["substitute_sha256"] for e in manifest["samples"].values()} == {old_sha}

    # another launch trained another substitute into this folder (another thread count: other weights)
    from lit_sr.poison.substitute import save_substitute

    other = dm.substitute_spec.build(dm.scale, seed=1)
    new_sha = save_substitute(other, folder / "substitute.safetensors")
    manifest["extra"]["substitute_sha256"] = new_sha
    (folder / "manifest.json").write_text(json.dumps(manifest))

    again = make_dm(tmp_path, **BADSR)
    with pytest.warns(RuntimeWarning, match="substitute_sha256"):
        again.setup("fit")
    assert again.substitute_sha256 == new_sha != old_sha
    assert again.generated_samples == len(again.candidate_indices) + len(again.val_dataset)  # none mixed in
    entries = json.loads((folder / "manifest.json").read_text())["samples"]
    assert {e["substitute_sha256"] for e in entries.values()} == {new_sha}


@pytest.mark.parametrize("trigger, message", [
    ({"name": "badsr", "stepz": 5, "perceptual": "ssim"}, "trigger.stepz is not a setting"),
    ({"name": "badsr", "steps": -5, "perceptual": "ssim"}, r"trigger\.steps must be in \[1"),
])
def test_a_bad_trigger_setting_fails_before_any_work(tmp_path, trigger, message):
    kw = dict(BADSR, trigger=trigger)
    with pytest.raises(ValueError, match=message):
        make_dm(tmp_path, **kw)
    assert not (tmp_path / "cache").exists()


def test_a_misspelt_yaml_trigger_key_fails_at_parse_time_leaving_no_cache(tmp_path, monkeypatch, capsys):
    # (a bad value, steps: -5, fails in the same constructor as the dict case above, at instantiation)
    recipe = (ROOT / "configs" / "train" / "badsr_quickstart.yaml").read_text()
    assert "        steps: 100" in recipe
    config = tmp_path / "bad.yaml"
    config.write_text(recipe.replace("        steps: 100", "        stepz: 100"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:  # `lit-sr fit`, in-process: the parser's exit
        train_main(["fit", "--config", str(config), "--data.init_args.cache_dir", str(tmp_path / "cache"),
                    "--trainer.logger", "false"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code != 0 and "Option 'stepz' is not accepted" in stderr, stderr[-2000:]
    assert not (tmp_path / "cache").exists()  # no substitute trained, no folder made


def test_candidate_batches_read_only_the_centre_patch_and_equal_whole_reads(tmp_path, monkeypatch):
    from datamodules.poisoned_train import centre_crop_pair
    from lit_sr.poison.cache import to_float

    dm = make_dm(tmp_path, candidate_rate=0.5)
    dm.setup("fit")
    dm._pairs.keep_in_memory = False  # as with large images (no cache_images): every pair read from its file
    dm._pairs._memory.clear()
    s, lp = dm.base.scale, dm.base.patch_size // dm.base.scale
    expected = {}
    for i in dm.candidate_indices:
        whole = dm.cache.read(f"train_{i:06d}")
        expected[i] = centre_crop_pair(to_float(whole["lr"]), to_float(whole["hr"]), lp, s, i)

    def no_whole_reads(key):
        raise AssertionError(f"candidate_batches read the whole sample {key}")

    monkeypatch.setattr(dm.cache, "read", no_whole_reads)
    seen = []
    for batch in dm.candidate_batches(3):
        for lr, hr, i in zip(batch["lr"], batch["hr"], batch["index"].tolist()):
            assert lr.shape[-2:] == (lp, lp) and hr.shape[-2:] == (lp * s, lp * s)
            assert torch.equal(lr, expected[i][0]) and torch.equal(hr, expected[i][1])
            seen.append(i)
    assert sorted(seen) == sorted(dm.candidate_indices)
    key = f"train_{seen[0]:06d}"
    _, h, w = dm.cache.shapes(key)["lr"]
    with pytest.raises(ValueError, match=re.escape(str(dm.cache.directory))):
        dm.cache.read_region(key, {"lr": (0, 0, h + 1, w)})
