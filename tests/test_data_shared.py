"""The shared uint8 image store, uint8 cropping, device augmentation and the loader defaults."""

import multiprocessing as mp
import os
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import seed_everything

from datamodules import DataError, HRFolderDataModule, SRPairDataset
from datamodules.datasets import folder_records
from datamodules.sr import default_num_workers
from lit_sr.data import augment_batch
from lit_sr.io import write_image


def make_folder(path, sizes, seed=0):
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    return [write_image(torch.rand(3, h, w), path / f"{i + 1:04d}.png") for i, (h, w) in enumerate(sizes)]


def one_epoch(tmp_path, cache_images):
    dm = HRFolderDataModule(train_hr=str(tmp_path / "hr"), val_hr=str(tmp_path / "hr"), scale=2, patch_size=16,
                            batch_size=4, num_workers=2, repeat=3, cache_images=cache_images,
                            cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    seed_everything(7, workers=True)
    return dm, [b for b in dm.train_dataloader()]


def test_shared_cache_gives_the_same_samples_as_the_plain_loader(tmp_path):
    make_folder(tmp_path / "hr", [(40, 48), (64, 36), (50, 50), (33, 47)])
    _, plain = one_epoch(tmp_path, cache_images=False)
    dm, cached = one_epoch(tmp_path, cache_images=True)
    store = dm.train_dataset.store
    assert store is not None and store.data_path.parent == tmp_path / "cache"
    # uint8, not float32: HR (mod-cropped) + LR bytes of the four images, once
    expected = sum(3 * (h - h % 2) * (w - w % 2) * (1 + 1 / 4) for h, w in [(40, 48), (64, 36), (50, 50), (33, 47)])
    assert store.nbytes == expected
    assert len(plain) == len(cached) == 3
    for a, b in zip(plain, cached):
        assert a["path"] == b["path"]
        torch.testing.assert_close(a["lr"], b["lr"], rtol=0, atol=0)
        torch.testing.assert_close(a["hr"], b["hr"], rtol=0, atol=0)
    # a second data module over the same files reuses the store file instead of decoding again
    before = store.data_path.stat().st_mtime_ns
    dm2, _ = one_epoch(tmp_path, cache_images=True)
    assert dm2.train_dataset.store.data_path == store.data_path and store.data_path.stat().st_mtime_ns == before


def _mapping_kb(path):
    """Rss and Pss (kB) of this process's mappings of ``path`` (from /proc/self/smaps)."""
    rss = pss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                inside = fields[-1] == str(path)
            elif inside and fields[0] == "Rss:":
                rss += int(fields[1])
            elif inside and fields[0] == "Pss:":
                pss += int(fields[1])
    return rss, pss


def _touch_every_image_and_measure(dataset, barrier, queue):
    torch.set_num_threads(1)  # as DataLoader workers do: a forked child must not reuse the parent's OpenMP pool
    total = 0
    for i in range(len(dataset.records)):
        lr, hr = dataset.load_pixels(i)
        total += int(lr.sum()) + int(hr.sum())  # reads every pixel of the store
    barrier.wait()  # both workers hold the pages now
    queue.put((*_mapping_kb(dataset.store.data_path), total))
    barrier.wait()  # stay alive until both have measured


def test_a_second_worker_does_not_add_a_second_copy(tmp_path):
    make_folder(tmp_path / "hr", [(256, 256)] * 4)
    ds = SRPairDataset(folder_records(tmp_path / "hr"), scale=4, patch_size=32)
    store = ds.build_store(tmp_path / "cache", progress=False)
    size_kb = store.nbytes / 1024
    ctx = mp.get_context("fork")  # how DataLoader workers start on Linux
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_touch_every_image_and_measure, args=(ds, barrier, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert all(w.exitcode == 0 for w in workers)
    (rss_a, pss_a, sum_a), (rss_b, pss_b, sum_b) = results
    assert sum_a == sum_b > 0
    # each worker's RSS counts the whole store (RSS counts shared pages in every process) ...
    assert rss_a >= 0.95 * size_kb and rss_b >= 0.95 * size_kb
    # ... but the proportional set size adds up to one copy: the two workers share the pages
    assert 0.9 * size_kb <= pss_a + pss_b <= 1.1 * size_kb + 8
    assert pss_a <= 0.6 * size_kb + 4 and pss_b <= 0.6 * size_kb + 4


def _build_concurrently(dataset, directory, barrier, queue):
    torch.set_num_threads(1)
    barrier.wait()  # both start building at once, as DDP ranks do
    store = dataset.build_store(directory, progress=False)
    queue.put((store.built, store.data_path.stat().st_ino))


def test_ranks_starting_together_build_the_store_once_and_share_one_file(tmp_path):
    make_folder(tmp_path / "hr", [(64, 64)] * 3)
    ds = SRPairDataset(folder_records(tmp_path / "hr"), scale=2)
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    ranks = [ctx.Process(target=_build_concurrently, args=(ds, tmp_path / "cache", barrier, queue)) for _ in range(2)]
    for r in ranks:
        r.start()
    results = [queue.get(timeout=120) for _ in ranks]
    for r in ranks:
        r.join(timeout=60)
    assert sorted(built for built, _ in results) == [False, True]  # one decoded, the other waited and reused
    assert results[0][1] == results[1][1]  # the same file (inode): one copy in the page cache


def test_store_records_bad_files_and_crops_uint8(tmp_path):
    files = make_folder(tmp_path / "hr", [(32, 32), (32, 32), (8, 8)])
    files[0].write_bytes(files[0].read_bytes()[:100])
    records = folder_records(tmp_path / "hr")
    with pytest.raises(OSError, match="0001.png"):
        SRPairDataset(records, scale=2, patch_size=16).build_store(tmp_path / "c1", progress=False)
    ds = SRPairDataset(records, scale=2, patch_size=16, skip_bad_files=True)
    ds.build_store(tmp_path / "c2", progress=False)
    lr, hr = ds.load_pixels(1)
    assert lr.dtype == hr.dtype == torch.uint8 and hr.shape == (3, 32, 32)
    with pytest.warns(UserWarning, match="0001.png"):
        s = ds[0]
    assert s["path"].endswith("0002.png") and s["hr"].dtype == torch.float32 and s["hr"].shape == (3, 16, 16)
    # an image smaller than the patch names its file path, not only its stem
    with pytest.raises(DataError, match=f"image {files[2]} is too small"):
        SRPairDataset(records[2:], scale=2, patch_size=16)[0]


def test_device_augmentation_is_one_of_the_eight_symmetries_applied_to_both():
    torch.manual_seed(0)
    lr = torch.rand(64, 3, 4, 4)
    hr = torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")  # HR that encodes its LR
    out_lr, out_hr = augment_batch(lr, hr, generator=torch.Generator().manual_seed(1))
    again = augment_batch(lr, hr, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out_lr, again[0]) and torch.equal(out_hr, again[1])  # seeded
    torch.testing.assert_close(torch.nn.functional.interpolate(out_lr, scale_factor=2, mode="nearest"), out_hr)
    seen = set()
    for x, y in zip(lr, out_lr):
        for k in range(8):
            z = x.flip(-1) if k & 1 else x
            z = z.flip(-2) if k & 2 else z
            z = z.transpose(-1, -2) if k & 4 else z
            if torch.equal(z, y):
                seen.add(k)
                break
        else:
            raise AssertionError("an augmented sample is not a flip/rotation of its input")
    assert len(seen) == 8  # all eight symmetries occur in 64 samples
    with pytest.raises(ValueError, match="square"):
        augment_batch(torch.rand(2, 3, 4, 6), torch.rand(2, 3, 8, 12))


def test_data_module_augments_training_batches_on_the_device_only(tmp_path):
    make_folder(tmp_path / "hr", [(32, 32)])
    dm = HRFolderDataModule(train_hr=str(tmp_path / "hr"), val_hr=str(tmp_path / "hr"), scale=2, patch_size=16,
                            augment_on="device", num_workers=0)
    dm.setup("fit")
    assert dm.train_dataset.augment is False  # the workers leave it to the device
    torch.manual_seed(0)
    batch = {"lr": torch.rand(32, 3, 8, 8), "hr": torch.rand(32, 3, 16, 16)}
    dm.trainer = SimpleNamespace(training=False, num_devices=1)
    assert dm.on_after_batch_transfer(batch, 0) is batch  # validation: untouched
    dm.trainer = SimpleNamespace(training=True, num_devices=1)
    out = dm.on_after_batch_transfer(batch, 0)
    assert not torch.equal(out["lr"], batch["lr"]) and out["lr"].shape == batch["lr"].shape
    with pytest.raises(ValueError, match="augment_on"):
        HRFolderDataModule(train_hr="a", val_hr="b", augment_on="gpu")


def test_default_workers_follow_the_machine():
    cores = len(os.sched_getaffinity(0))
    assert default_num_workers() == max(1, min(8, cores))
    assert default_num_workers(devices=cores) == 1
    dm = HRFolderDataModule(train_hr="a", val_hr="b")
    assert dm.num_workers == default_num_workers()
    assert HRFolderDataModule(train_hr="a", val_hr="b", num_workers=0).num_workers == 0


def test_trainer_runs_the_device_augmentation_on_training_batches(tmp_path, monkeypatch):
    import lightning as L

    import datamodules.sr as sr
    from lit_sr.modules import SRModule

    calls = []

    def counting(lr, hr, **kwargs):
        calls.append(tuple(lr.shape))
        return augment_batch(lr, hr, **kwargs)

    monkeypatch.setattr(sr, "augment_batch", counting)
    make_folder(tmp_path / "hr", [(32, 32), (32, 32)])
    dm = HRFolderDataModule(train_hr=str(tmp_path / "hr"), val_hr=str(tmp_path / "hr"), scale=2, patch_size=16,
                            batch_size=2, num_workers=0, repeat=2, augment_on="device")
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, scheduler="none",
                      export_weights=False)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, val_check_interval=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert calls == [(2, 3, 8, 8), (2, 3, 8, 8)]  # both training batches, not the validation batch


def test_flips_folded_into_the_float_conversion_equal_augment_pair():
    import random

    from datamodules.datasets import augment_draws, augment_pair
    from lit_sr.data import to_float

    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (40, 30, 3), dtype=torch.uint8).permute(2, 0, 1)[:, 3:19, 5:21]  # a crop view
    seen = set()
    for seed in range(24):
        draws = augment_draws(random.Random(seed))
        seen.add(tuple(draws.values()))
        expected, _ = augment_pair(pixels.float() / 255, pixels.float() / 255, random.Random(seed))
        got = to_float(pixels, **draws)
        assert got.is_contiguous() and torch.equal(got, expected)
    assert len(seen) == 8


def test_poisoned_data_module_runs_its_base_device_augmentation(tmp_path):
    from datamodules.poisoned import PoisonedSRDataModule

    make_folder(tmp_path / "hr", [(32, 32)])
    base = HRFolderDataModule(train_hr=str(tmp_path / "hr"), val_hr=str(tmp_path / "hr"), scale=2, patch_size=16,
                              augment_on="device", num_workers=0)
    batch = {"lr": torch.rand(32, 3, 8, 8), "hr": torch.rand(32, 3, 16, 16)}
    poisoned = SimpleNamespace(base=base, trainer=SimpleNamespace(training=True, num_devices=1))
    out = PoisonedSRDataModule.on_after_batch_transfer(poisoned, batch, 0)
    assert not torch.equal(out["lr"], batch["lr"]) and out["lr"].shape == batch["lr"].shape
    poisoned.trainer = SimpleNamespace(training=False, num_devices=1)
    assert PoisonedSRDataModule.on_after_batch_transfer(poisoned, batch, 0) is batch
