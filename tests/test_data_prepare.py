"""The prepare step: sub-images tile each image, LR partners are MATLAB bicubic, resumable, named errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DIV2KDataModule
from lit_sr.__main__ import main as lit_sr_main
from lit_sr.data import (
    PreparedDataError,
    PreparedDataMismatchError,
    place_back,
    prepare_subimages,
    read_pixels,
    read_prepared,
    subimage_starts,
)
from lit_sr.io import ImageReadError, write_image
from lit_sr.jobs.data.cli import main as cli_main
from lit_sr.ops import imresize


def make_folder(path, sizes, seed=0):
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    return [write_image(torch.rand(3, h, w), path / f"{i + 1:04d}.png") for i, (h, w) in enumerate(sizes)]


def u8(path):
    return read_pixels(path).contiguous()


def test_basicsr_grid_rule():
    # BasicSR's extract_subimages: starts every `step` while a crop fits, then one flush with the edge
    assert subimage_starts(1356, 480, 240) == [0, 240, 480, 720, 876]
    assert subimage_starts(960, 480, 240) == [0, 240, 480]  # exact fit: no extra crop
    assert subimage_starts(1000, 480, 240, thresh_size=40) == [0, 240, 480]  # a 40 px strip is dropped
    assert subimage_starts(1000, 480, 240, thresh_size=39) == [0, 240, 480, 520]


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_subimages_tile_each_image_and_lr_is_matlab_bicubic(tmp_path, fmt):
    files = make_folder(tmp_path / "hr", [(70, 90), (64, 64)])  # 70 is not a multiple of 4: mod-cropped to 68
    report = prepare_subimages(tmp_path / "hr", tmp_path / "out", scale=4, crop_size=32, step=24, format=fmt,
                               progress=False)
    assert report.made == ["0001", "0002"] and report.skipped == []
    for f in files:
        hr = u8(f)
        hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
        # their union, placed back, equals the (mod-cropped) HR image: every pixel covered, none altered
        assert torch.equal(place_back(tmp_path / "out", f.stem, "hr"), hr)
        # the LR sub-images are crops of MATLAB bicubic of the whole HR, rounded to 8 bits
        bicubic = (imresize(hr.float() / 255, 1 / 4).clamp(0, 1) * 255).round().to(torch.uint8)
        assert torch.equal(place_back(tmp_path / "out", f.stem, "lr"), bicubic)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    part = manifest["images"][0]
    assert part["size"] == [68, 88] and len(part["sub_images"]) == 3 * 4  # rows 0,24,36; cols 0,24,48,56
    for sub in part["sub_images"]:
        hr_sub, lr_sub = u8(tmp_path / "out" / sub["hr"]), u8(tmp_path / "out" / sub["lr"])
        assert hr_sub.shape == (3, 32, 32) and lr_sub.shape == (3, 8, 8)
        t, left = sub["top"], sub["left"]
        assert torch.equal(lr_sub, bicubic_of(files[0])[:, t // 4 : t // 4 + 8, left // 4 : left // 4 + 8])
    pairs = read_prepared(tmp_path / "out", scale=4, verify=True)  # every SHA-256 matches
    assert len(pairs) == manifest["num_subimages"] == 12 + 9


def bicubic_of(path):
    hr = u8(path)
    hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
    return (imresize(hr.float() / 255, 1 / 4).clamp(0, 1) * 255).round().to(torch.uint8)


def test_lr_folder_partners_are_copied_crops(tmp_path):
    make_folder(tmp_path / "hr", [(64, 96)])
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    lr_file = write_image(torch.rand(3, 16, 24), lr_dir / "0001x4.png")
    prepare_subimages(tmp_path / "hr", tmp_path / "out", lr_dir=lr_dir, scale=4, crop_size=32, step=32,
                      progress=False)
    assert torch.equal(place_back(tmp_path / "out", "0001", "lr"), u8(lr_file))


def test_interrupted_prepare_resumes_without_redoing_finished_images(tmp_path, capsys):
    files = make_folder(tmp_path / "hr", [(64, 64), (64, 64), (64, 64)])
    good = files[2].read_bytes()
    files[2].write_bytes(good[:80])  # the third image is truncated: the run stops there, naming it
    with pytest.raises(ImageReadError, match="0003.png"):
        prepare_subimages(tmp_path / "hr", tmp_path / "out", scale=2, crop_size=32, step=16, progress=False)
    out = tmp_path / "out"
    assert not (out / "manifest.json").exists()  # not complete, so no reader accepts it
    with pytest.raises(PreparedDataMismatchError, match="not a finished prepared data set"):
        read_prepared(out)
    finished = sorted(p for p in out.rglob("*") if p.is_file() and "0003" not in p.name and p.name != "config.json")
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    assert len(finished) == 2 * (9 + 9) + 2  # two images x 9 sub-images x (HR, LR) + their part files
    (out / "hr" / ".0003_s001.png.tmpXYZ.png").write_bytes(b"left by a kill")  # a stale temporary file
    files[2].write_bytes(good)
    # the command line, as a user would resume it
    cmd = ["data", "prepare", "--hr_dir", str(tmp_path / "hr"), "--out_dir", str(out),
           "--scale", "2", "--crop_size", "32", "--step", "16", "--workers", "1", "--no-progress"]
    assert lit_sr_main(cmd) == 0
    assert "1 prepared now, 2 already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # nothing finished was written again
    assert not (out / "hr" / ".0003_s001.png.tmpXYZ.png").exists()
    assert len(read_prepared(out, scale=2)) == 27
    # the same command line in-process: other settings into the same folder are a named refusal with
    # exit code 2, not a traceback; verify re-checks every SHA-256
    assert cli_main([*cmd[1:-4], "24", "--workers", "1", "--no-progress"]) == 2
    assert "another configuration (step: 16 there vs 24 now)" in capsys.readouterr().err
    assert cli_main(["verify", "--directory", str(out)]) == 0
    assert "27 sub-image pairs, every SHA-256 matches" in capsys.readouterr().out


def test_mismatched_configuration_and_bad_inputs_are_named(tmp_path):
    make_folder(tmp_path / "hr", [(64, 64)])
    prepare_subimages(tmp_path / "hr", tmp_path / "out", scale=4, crop_size=32, step=16, progress=False)
    with pytest.raises(PreparedDataMismatchError, match="crop_size: 32 there vs 48 now"):
        prepare_subimages(tmp_path / "hr", tmp_path / "out", scale=4, crop_size=48, step=16, progress=False)
    report = prepare_subimages(tmp_path / "hr", tmp_path / "out", scale=4, crop_size=48, step=16, overwrite=True,
                               progress=False)
    assert report.made == ["0001"] and len(read_prepared(tmp_path / "out")) == 4
    with pytest.raises(PreparedDataMismatchError, match="prepared for x4.*trains at x2"):
        read_prepared(tmp_path / "out", scale=2)
    with pytest.raises(ValueError, match="step=18 must be a multiple of scale 4"):
        prepare_subimages(tmp_path / "hr", tmp_path / "o2", scale=4, crop_size=32, step=18, progress=False)
    small = tmp_path / "small"
    make_folder(small, [(40, 80)])
    with pytest.raises(PreparedDataError, match=r"0001.png is 40x80: smaller than crop_size 48x48"):
        prepare_subimages(small, tmp_path / "o3", scale=4, crop_size=48, step=24, progress=False)
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(deep / "0001.png")  # a 16-bit file
    with pytest.raises(PreparedDataError, match=r"deep/0001.png is not an 8-bit image"):
        prepare_subimages(deep, tmp_path / "o5", scale=4, crop_size=32, step=16, progress=False)
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    write_image(torch.rand(3, 20, 16), lr_dir / "0001x4.png")
    with pytest.raises(PreparedDataError, match=r"HR .*0001.png is 64x64, LR .*0001x4.png is 20x16"):
        prepare_subimages(tmp_path / "hr", tmp_path / "o4", lr_dir=lr_dir, scale=4, crop_size=32, step=16,
                          progress=False)
    # a changed sub-image is caught by its recorded size (every read) or SHA-256 (verify)
    sub = sorted((tmp_path / "out" / "hr").iterdir())[0]
    sub.write_bytes(sub.read_bytes()[:-5])
    with pytest.raises(PreparedDataMismatchError, match=f"{sub.name} is .* bytes"):
        read_prepared(tmp_path / "out")


def test_div2k_module_trains_on_the_prepared_folder(tmp_path):
    make_folder(tmp_path / "hr", [(64, 96)])
    prepare_subimages(tmp_path / "hr", tmp_path / "out", scale=4, crop_size=32, step=32, format="npy",
                      progress=False)
    dm = DIV2KDataModule(train_prepared=str(tmp_path / "out"), val_hr=str(tmp_path / "hr"), scale=4, patch_size=16,
                         batch_size=3, num_workers=0, augment=False)
    dm.setup("fit")
    assert len(dm.train_dataset.records) == 6 and dm.train_dataset.records[0].name == "0001_s001"
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (3, 3, 4, 4) and batch["hr"].shape == (3, 3, 16, 16) and batch["hr"].dtype == torch.float32
    # the patch is an aligned crop of its sub-image pair: LR = bicubic of the HR image at that place
    bicubic = bicubic_of(tmp_path / "hr" / "0001.png").float() / 255
    lr = batch["lr"][0]
    hits = [(t, x) for t in range(16 - 3) for x in range(24 - 3) if torch.equal(bicubic[:, t : t + 4, x : x + 4], lr)]
    assert hits
    # with the source folders named too (as the recipes do), they must be the ones it was prepared from
    named = DIV2KDataModule(train_prepared=str(tmp_path / "out"), train_hr=str(tmp_path / "hr"),
                            val_hr=str(tmp_path / "hr"), scale=4, patch_size=16, num_workers=0)
    assert len(named.train_records()) == 6
    wrong = DIV2KDataModule(train_prepared=str(tmp_path / "out"), train_hr=str(tmp_path / "hr"),
                            train_lr=str(tmp_path / "lr"), val_hr=str(tmp_path / "hr"), scale=4, patch_size=16)
    with pytest.raises(PreparedDataMismatchError, match=r"prepared from train_lr=None.*given train_lr=.*lr"):
        wrong.train_records()
    # several prepared folders (DF2K = DIV2K + Flickr2K) train together
    make_folder(tmp_path / "hr2", [(32, 64)], seed=1)
    prepare_subimages(tmp_path / "hr2", tmp_path / "out2", scale=4, crop_size=32, step=32, progress=False)
    both = DIV2KDataModule(train_prepared=[str(tmp_path / "out"), str(tmp_path / "out2")],
                           val_hr=str(tmp_path / "hr"), scale=4, patch_size=16, num_workers=0)
    assert len(both.train_records()) == 6 + 2
    with pytest.raises(ValueError, match="needs train_hr .* or train_prepared"):
        DIV2KDataModule(val_hr=str(tmp_path / "hr"))
