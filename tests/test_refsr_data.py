"""RefSR data: CUFED / CUFED5 / WR-SR layouts made by the tests, consistent crops, the embedded pairs."""

from __future__ import annotations

import pytest
import torch

from datamodules.datasets import DataError
from datamodules.refsr import (
    CUFEDDataModule,
    EmbeddedRefPairsDataModule,
    RefRecord,
    RefSRDataset,
    cufed5_records,
    graded_references,
    wrsr_records,
)
from lit_sr.io import write_image
from lit_sr.ops import imresize


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def make_cufed5(root, groups: int = 3):
    """A CUFED5-style folder: ``NNN_0.png`` (HR, odd sizes) and ``NNN_1..5.png`` references of other sizes."""
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for g in range(groups):
        for i in range(6):
            img = _image(50 + 4 * g + i, 62 + 2 * i, seed=10 * g + i)
            images[(g, i)] = img
            write_image(img, root / f"{g:03d}_{i}.png")
    return images


def test_cufed5_loader_reads_every_level_in_the_real_naming_scheme(tmp_path):
    root = tmp_path / "CUFED5"
    images = make_cufed5(root)
    dm = CUFEDDataModule(train_root=str(tmp_path / "unused"), cufed5_root=str(root), levels="all", num_workers=0)
    dm.setup("test")
    assert dm.test_set_names() == [f"cufed5_l{lv}" for lv in range(1, 6)]
    for level in range(1, 6):
        ds = dm.test_datasets[f"cufed5_l{level}"]
        assert len(ds) == 3
        for g in range(3):
            sample = ds[g]
            hr = images[(g, 0)]
            h, w = (hr.shape[-2] // 4) * 4, (hr.shape[-1] // 4) * 4  # mod-cropped to the scale
            assert sample["hr"].shape == (3, h, w) and sample["lr"].shape == (3, h // 4, w // 4)
            assert sample["level"] == level and sample["path"].endswith(f"{g:03d}_0.png")
            # the reference is the file of that level, whole, at its own size (8-bit round trip)
            assert torch.allclose(sample["ref"], images[(g, level)], atol=0.5 / 255 + 1e-6)
    selected = CUFEDDataModule(train_root="x", cufed5_root=str(root), levels=[2, 4])
    assert list(selected.test_sets()) == ["cufed5_l2", "cufed5_l4"]


def test_cufed5_errors_name_the_missing_or_unexpected_file(tmp_path):
    root = tmp_path / "CUFED5"
    make_cufed5(root, groups=2)
    (root / "001_3.png").unlink()
    assert len(cufed5_records(root, 2)) == 2
    with pytest.raises(FileNotFoundError, match="001_3.png"):
        cufed5_records(root, 3)
    write_image(_image(8, 8, 0), root / "stray.png")
    with pytest.raises(DataError, match="stray.png"):
        cufed5_records(root, 1)
    with pytest.raises(ValueError, match="similarity level"):
        cufed5_records(root, 6)
    with pytest.raises(ValueError, match="levels"):
        CUFEDDataModule(train_root="x", cufed5_root=str(root), levels=[0])


def test_cufed_training_pairs_and_too_small_reference_error(tmp_path):
    train = tmp_path / "train"
    for name, size in (("000000", 64), ("000001", 64)):
        write_image(_image(size, size, 1), train / "input" / f"{name}.png")
        write_image(_image(size, size, 2), train / "ref" / f"{name}.png")
    write_image(_image(20, 20, 3), train / "input" / "000002.png")
    write_image(_image(20, 20, 3), train / "ref" / "000002.png")
    root = tmp_path / "CUFED5"
    make_cufed5(root, groups=1)
    dm = CUFEDDataModule(train_root=str(train), cufed5_root=str(root), patch_size=32, batch_size=2, num_workers=0)
    dm.setup("fit")
    sample = dm.train_dataset[0]
    assert sample["hr"].shape == (3, 32, 32) and sample["lr"].shape == (3, 8, 8) and sample["ref"].shape == (3, 32, 32)
    with pytest.raises(DataError, match=r"000002\.png.*20x20.*32x32"):
        dm.train_dataset[2]
    (train / "ref" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="000001.png"):
        CUFEDDataModule(train_root=str(train), cufed5_root=str(root)).train_records()


def test_training_crops_keep_lr_hr_and_ref_consistent():
    torch.manual_seed(0)
    hr = _image(80, 96, 4)
    lr_full = (imresize(hr, 1 / 4).clamp(0, 1) * 255).round() / 255
    # the reference is the HR image itself: the same relative crop and the same flips must give the HR patch
    ds = RefSRDataset([RefRecord(name="x", hr_tensor=hr, ref_tensor=hr.clone())], scale=4, patch_size=32,
                      augment=True, repeat=50)
    undo = {"hflip": lambda x: x.flip(-1), "vflip": lambda x: x.flip(-2), "transpose": lambda x: x.transpose(-1, -2)}
    for i in range(50):
        s = ds[i]
        assert torch.equal(s["ref"], s["hr"])
        # the LR patch is the aligned crop of the whole image's LR (find it up to the flips)
        assert s["lr"].shape == (3, 8, 8) and s["hr"].shape == (3, 32, 32)
        windows = lr_full.unfold(1, 8, 1).unfold(2, 8, 1)  # (3, nh, nw, 8, 8)
        candidates = [s["lr"]]
        for op in undo.values():
            candidates += [op(c) for c in candidates]
        found = any(((windows - c[:, None, None]).abs().amax(dim=(0, 3, 4)) < 1e-6).any() for c in candidates)
        assert found


def test_wrsr_layout(tmp_path):
    root = tmp_path / "WR-SR"
    write_image(_image(40, 48, 5), root / "input" / "001.png")
    write_image(_image(60, 44, 6), root / "ref" / "001_ref.png")
    records = wrsr_records(root)
    assert [r.name for r in records] == ["001"] and records[0].ref_path.name == "001_ref.png"
    write_image(_image(40, 48, 7), root / "input" / "002.png")
    with pytest.raises(FileNotFoundError, match="002_ref.png"):
        wrsr_records(root)


def test_graded_references_levels(photos):
    photo = imresize(photos["astronaut"], 0.25).clamp(0, 1)
    photo = (photo * 255).round() / 255
    hr, refs = graded_references(photo, [photos["coffee"][:, :200, :200], photos["chelsea"][:, :200, :200]])
    assert set(refs) == {1, 2, 3, 4, 5}
    assert all(refs[k].shape == hr.shape for k in (1, 2, 3))  # same scene, same window size
    assert refs[4].shape == (3, 160, 160)  # another scene, at its own size
    # level 1 is the same scene shifted by 5% of each side: its overlap with the HR image is exact
    d = round(0.05 * photo.shape[-1])
    assert torch.allclose(refs[1][:, : -d, : -d], hr[:, d:, d:], atol=1e-6)
    # levels 4-5 are other scenes: further from the HR image than level 1
    h, w = hr.shape[-2:]
    mse = {k: (r[:, :h, :w] - hr[:, : r.shape[-2], : r.shape[-1]]).square().mean().item() for k, r in refs.items()}
    assert mse[1] < mse[4] and mse[1] < mse[5]


def test_embedded_module_serves_every_level_and_the_stereo_pair():
    dm = EmbeddedRefPairsDataModule(max_side=96, patch_size=32, batch_size=4, repeat=1)
    dm.setup("fit")
    names = [r.name for r in dm.train_dataset.records]
    assert "motorcycle_left_stereo" in names and "motorcycle_right_stereo" in names
    assert dm.val_set_names() == [f"embedded_l{lv}" for lv in range(1, 6)]
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (4, 3, 8, 8) and batch["ref"].shape == (4, 3, 32, 32)
    for level in range(1, 6):
        ds = dm.val_datasets[f"embedded_l{level}"]
        assert len(ds) == 2 and all(ds[i]["level"] == level for i in range(2))
