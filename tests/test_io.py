"""Weights and image I/O: BasicSR format round trips, Lightning checkpoints, unsafe pickles refused,
hostile files (decompression bombs, wrong shapes, truncation) named, atomic writes under faults."""

import errno
import os
import struct
import zlib

import pytest
import torch

from lit_sr.archs import build_arch, count_parameters
from lit_sr.io import (
    ImageReadError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    WeightsReadError,
    atomic_write,
    current_umask,
    load_weights,
    read_image,
    read_state_dict,
    save_weights,
    write_image,
)


def tiny_edsr(seed: int = 0, scale: int = 2):
    torch.manual_seed(seed)  # randomly initialised network
    return build_arch("edsr", num_feat=8, num_block=2, upscale=scale).eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_output_shapes(scale):
    net = tiny_edsr(scale=scale)
    assert net(torch.rand(2, 3, 11, 13)).shape == (2, 3, 11 * scale, 13 * scale)
    assert build_arch("bicubic", upscale=scale)(torch.rand(1, 3, 11, 13)).shape == (1, 3, 11 * scale, 13 * scale)


def test_edsr_parameter_counts_and_basicsr_keys():
    assert count_parameters(build_arch("edsr", num_feat=64, num_block=16, upscale=4)) == 1_517_571
    big = build_arch("edsr", num_feat=256, num_block=32, upscale=4, res_scale=0.1)
    assert count_parameters(big) == 43_089_923
    keys = set(tiny_edsr(scale=4).state_dict())
    # BasicSR's names; the mean is a non-persistent buffer, so it is not in the checkpoint
    for k in ("conv_first.weight", "body.0.conv1.weight", "body.1.conv2.bias", "conv_after_body.weight",
              "upsample.0.weight", "upsample.2.weight", "conv_last.bias"):
        assert k in keys
    assert "mean" not in keys


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_round_trip_gives_same_outputs(tmp_path, suffix):
    src, dst = tiny_edsr(0), tiny_edsr(1)
    x = torch.rand(1, 3, 12, 12)
    assert not torch.allclose(src(x), dst(x))
    path = save_weights(src, tmp_path / f"w{suffix}")
    load_weights(dst, path)
    torch.testing.assert_close(dst(x), src(x))
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_basicsr_params_ema_preferred_and_module_prefix_stripped(tmp_path):
    net, ema = tiny_edsr(0), tiny_edsr(1)
    path = save_weights(net, tmp_path / "w.pth", ema_model=ema)
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == {"params", "params_ema"}
    target = tiny_edsr(2)
    load_weights(target, path)  # key=None -> params_ema
    torch.testing.assert_close(target.state_dict(), ema.state_dict())
    load_weights(target, path, key="params")
    torch.testing.assert_close(target.state_dict(), net.state_dict())
    # DataParallel-style file
    torch.save({"params": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "dp.pth")
    load_weights(target, tmp_path / "dp.pth")
    torch.testing.assert_close(target.state_dict(), net.state_dict())


def test_lightning_checkpoint_layout(tmp_path):
    net = tiny_edsr(0)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state["pixel_loss.dummy"] = torch.zeros(1)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    target = tiny_edsr(1)
    load_weights(target, tmp_path / "last.ckpt")
    torch.testing.assert_close(target.state_dict(), net.state_dict())


def test_strict_mismatch_names_file_and_keys(tmp_path):
    path = save_weights(tiny_edsr(0, scale=2), tmp_path / "x2.pth")
    with pytest.raises(RuntimeError, match="x2.pth"):
        load_weights(tiny_edsr(0, scale=4), path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(tiny_edsr(), tmp_path / "nope.pth")
    with pytest.raises(KeyError, match="params_ema"):
        read_state_dict(save_weights(tiny_edsr(), tmp_path / "plain.pth"), key="params_ema")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lit_sr_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = "/tmp/lit_sr_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pth"
    torch.save({"params": _Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        load_weights(tiny_edsr(), path)
    assert not os.path.exists(marker)


def test_image_round_trip_and_modes(tmp_path):
    from PIL import Image

    img = torch.rand(3, 10, 12)
    path = write_image(img, tmp_path / "a.png")
    back = read_image(path)
    assert back.shape == (3, 10, 12)
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "gray.png").shape == (3, 4, 5)
    rgba = read_image(tmp_path / "rgba.png")
    assert rgba.shape == (3, 4, 5) and abs(rgba[2, 0, 0].item() - 30 / 255) < 1e-6


def test_truncated_image_names_the_file(tmp_path):
    path = write_image(torch.rand(3, 64, 64), tmp_path / "t.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png"):
        read_image(path)
    with pytest.raises(ValueError, match="expected one of"):
        write_image(torch.rand(3, 4, 4), tmp_path / "x.txt")


# --------------------------------------------------------------------------- hostile files


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_png_is_refused_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb_900mp.png"
    bomb.write_bytes(_png_claiming(30_000, 30_000))  # 900 megapixels claimed by a 100-byte file
    with pytest.raises(ImageReadError, match="bomb_900mp.png") as err:
        read_image(bomb)
    assert str(bomb) in str(err.value) and "MAX_IMAGE_PIXELS" in str(err.value)


def test_decompression_bomb_limit_applies_to_real_images_too(tmp_path, monkeypatch):
    from PIL import Image

    path = write_image(torch.rand(3, 40, 40), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1,600 pixels > 2 x 500: PIL raises
    with pytest.raises(ImageReadError, match="big.png"):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert read_image(path).shape == (3, 40, 40)


def test_weights_of_other_shapes_name_the_file_and_load_nothing(tmp_path):
    path = save_weights(tiny_edsr(0), tmp_path / "edsr_f8.pth")
    torch.manual_seed(1)
    wider = build_arch("edsr", num_feat=16, num_block=2, upscale=2)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(WeightsMismatchError, match="edsr_f8.pth") as err:
            load_weights(wider, path, strict=strict)
        assert "conv_first.weight: file (8, 3, 3, 3) vs network (16, 3, 3, 3)" in str(err.value)
        assert "size mismatch" not in str(err.value)
    torch.testing.assert_close(wider.state_dict(), before)  # checked before anything was copied
    assert isinstance(err.value, RuntimeError)  # what load_state_dict raised before


def test_shape_mismatches_are_listed_in_the_networks_order_whatever_the_files_order(tmp_path):
    # A safetensors file gives its keys back in no fixed order; the message lists the first ten
    # mismatches, so it must not depend on that order (CI once missed conv_first.weight for it).
    from lit_sr.io import check_shapes

    narrow = tiny_edsr(0)
    torch.manual_seed(1)
    wider = build_arch("edsr", num_feat=16, num_block=2, upscale=2)
    state = wider.state_dict()
    messages = []
    for order in (list(state), list(reversed(state))):
        with pytest.raises(WeightsMismatchError) as err:
            check_shapes(narrow, {name: state[name] for name in order}, tmp_path / "w.safetensors")
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    listed = [part.split(":")[0].strip() for part in messages[0].split("other shapes: ")[1].split(";")]
    assert listed[0] == "conv_first.weight"
    assert listed[:10] == [name for name in narrow.state_dict() if name in listed[:10]]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_weights_name_the_file(tmp_path, suffix):
    path = save_weights(tiny_edsr(0), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsReadError, match=f"cut{suffix}"):
        load_weights(tiny_edsr(1), path)


# --------------------------------------------------------------------------- atomic writes under faults


@pytest.fixture
def umask():
    """Set the process umask for a test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_the_umask_allows(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask and current_umask() == mask  # reading it does not change it
    weights = save_weights(tiny_edsr(0), tmp_path / "weights.pth")
    image = write_image(torch.rand(3, 4, 4), tmp_path / "a.png")
    with atomic_write(tmp_path / "m.json") as tmp:
        tmp.write_text("{}")
    for path in (weights, image, tmp_path / "m.json"):
        assert os.stat(path).st_mode & 0o777 == mode, path


def test_a_full_disk_while_writing_names_the_target_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "weights.pth"
    target.write_bytes(b"old weights")

    def save_until_the_disk_is_full(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OSError, match="No space left on device") as err:
        save_weights(tiny_edsr(0), target)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert str(target) in str(err.value)
    assert target.read_bytes() == b"old weights"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pth"]  # no temporary file left


def test_atomic_write_keeps_the_callers_own_errors(tmp_path):
    def write_then_fail(message_error):
        with atomic_write(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"x")
            raise message_error

    with pytest.raises(ValueError, match="^bad value$"):
        write_then_fail(ValueError("bad value"))
    with pytest.raises(ImageReadError, match="^cannot read image src.png: broken$"):
        write_then_fail(ImageReadError("cannot read image src.png: broken"))  # not re-labelled as a write
    with pytest.raises(PermissionError, match="out.png"):  # an errno keeps its OSError subclass
        write_then_fail(PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_into_an_unwritable_place_names_the_target(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="a_file/sub/out.json"):
        with atomic_write(blocker / "sub" / "out.json") as tmp:
            tmp.write_text("{}")
