"""SR data modules: protocol (crops, alignment, mod-crop) and every bad-input case."""

import pytest
import torch

from datamodules import (
    DataError,
    DIV2KDataModule,
    EmbeddedPhotosDataModule,
    HRFolderDataModule,
    SRPairDataset,
)
from datamodules.datasets import folder_records
from lit_sr.io import ImageReadError, write_image
from lit_sr.ops import imresize


def make_folder(path, sizes, seed=0):
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    return [write_image(torch.rand(3, h, w), path / f"{i + 1:04d}.png") for i, (h, w) in enumerate(sizes)]


def test_hr_folder_protocol(tmp_path):
    make_folder(tmp_path / "hr", [(50, 63), (64, 64)])
    ds = SRPairDataset(folder_records(tmp_path / "hr"), scale=4, patch_size=32, augment=True)
    s = ds[0]
    assert s["lr"].shape == (3, 8, 8) and s["hr"].shape == (3, 32, 32)
    assert set(s) == {"lr", "hr", "index", "path"} and s["path"].endswith("0001.png")
    lr, hr = ds.load_pair(0)
    assert hr.shape == (3, 48, 60)  # mod-crop to the scale
    expected = ((imresize(hr, 1 / 4).clamp(0, 1) * 255).round() / 255)
    torch.testing.assert_close(lr, expected)


def test_crops_are_aligned_and_seeded(tmp_path):
    make_folder(tmp_path / "hr", [(64, 64)])
    ds = SRPairDataset(folder_records(tmp_path / "hr"), scale=2, patch_size=16, augment=True, cache=True)
    full_lr, full_hr = ds.load_pair(0)
    torch.manual_seed(3)
    a = ds[0]
    torch.manual_seed(3)
    torch.testing.assert_close(ds[0]["lr"], a["lr"])  # same generator state -> same crop
    assert not torch.equal(ds[0]["lr"], a["lr"])  # the next draw (the next epoch) crops elsewhere
    # the LR patch is exactly the bicubic LR of the HR patch region (up to the flips applied to both)
    ds_plain = SRPairDataset(folder_records(tmp_path / "hr"), scale=2, patch_size=16)
    s = ds_plain[0]
    found = False
    for top in range(0, 25):
        for left in range(0, 25):
            if torch.equal(full_lr[:, top : top + 8, left : left + 8], s["lr"]):
                torch.testing.assert_close(full_hr[:, 2 * top : 2 * top + 16, 2 * left : 2 * left + 16], s["hr"])
                found = True
    assert found


def test_div2k_pairs(tmp_path):
    hr_dir, lr_dir = tmp_path / "DIV2K_train_HR", tmp_path / "DIV2K_train_LR_bicubic" / "X4"
    make_folder(hr_dir, [(64, 64)])
    lr_dir.mkdir(parents=True)
    write_image(torch.rand(3, 16, 16), lr_dir / "0001x4.png")
    dm = DIV2KDataModule(train_hr=str(hr_dir), train_lr=str(lr_dir), val_hr=str(hr_dir), val_lr=str(lr_dir),
                         scale=4, patch_size=32, batch_size=1, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (1, 3, 8, 8) and batch["hr"].shape == (1, 3, 32, 32)


def test_pair_with_wrong_scale_names_both_files_and_sizes(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    make_folder(hr_dir, [(64, 64)])
    lr_dir.mkdir()
    write_image(torch.rand(3, 20, 16), lr_dir / "0001x4.png")
    ds = SRPairDataset(folder_records(hr_dir, lr_dir, 4), scale=4)
    with pytest.raises(DataError, match=r"0001\.png.*64x64.*0001x4\.png.*20x16.*expected HR 80x64"):
        ds[0]


def test_missing_lr_partner(tmp_path):
    make_folder(tmp_path / "hr", [(32, 32)])
    (tmp_path / "lr").mkdir()
    with pytest.raises(FileNotFoundError, match="0001x4.png"):
        folder_records(tmp_path / "hr", tmp_path / "lr", 4)


def test_image_smaller_than_patch(tmp_path):
    make_folder(tmp_path / "hr", [(40, 40)])
    ds = SRPairDataset(folder_records(tmp_path / "hr"), scale=4, patch_size=64)
    with pytest.raises(DataError, match=r"0001.*too small.*LR is 10x10.*at least LR 16x16"):
        ds[0]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no images"):
        folder_records(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing"):
        HRFolderDataModule(train_hr=str(tmp_path / "missing"), val_hr=str(tmp_path / "missing")).setup("fit")


def test_truncated_file_raises_or_is_skipped(tmp_path):
    files = make_folder(tmp_path / "hr", [(32, 32), (32, 32)])
    data = files[0].read_bytes()
    files[0].write_bytes(data[:100])
    records = folder_records(tmp_path / "hr")
    with pytest.raises(ImageReadError, match="0001.png"):
        SRPairDataset(records, scale=2)[0]
    ds = SRPairDataset(records, scale=2, skip_bad_files=True)
    with pytest.warns(UserWarning, match="0001.png"):
        s = ds[0]
    assert s["path"].endswith("0002.png")


def test_bad_parameters():
    with pytest.raises(ValueError, match="multiple"):
        EmbeddedPhotosDataModule(scale=3, patch_size=64)


def test_embedded_photos_split_and_loaders():
    dm = EmbeddedPhotosDataModule(scale=4, patch_size=32, batch_size=4, repeat=1, max_side=128, max_val_images=1)
    dm.setup("fit")
    assert len(dm.train_dataset.records) == 7 and len(dm.val_dataset.records) == 1
    names = {r.name for r in dm.train_dataset.records}
    assert "astronaut" not in names  # val photos never appear in train
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (4, 3, 8, 8) and 0 <= batch["lr"].min() and batch["hr"].max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert max(val["hr"].shape[-2:]) <= 128 and val["hr"].shape[-1] % 4 == 0


def test_tiles_are_samples_of_their_own():
    dm = EmbeddedPhotosDataModule(scale=4, patch_size=64, batch_size=4, repeat=1, max_side=128, train_tile=64,
                                  val_tile=64)
    dm.setup("fit")
    n_train = len(dm.train_dataset.records)
    assert n_train >= 7 * 2 and all(r.hr_tensor.shape == (3, 64, 64) for r in dm.train_dataset.records)
    assert dm.val_dataset[0]["hr"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="train_tile"):
        EmbeddedPhotosDataModule(scale=4, patch_size=64, train_tile=30)
