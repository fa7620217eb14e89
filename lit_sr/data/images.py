"""Pixels for the data pipeline: images decoded as uint8 and converted to float only after cropping.

A 2K image as float32 is 33 MB; as uint8 it is 8 MB and decodes without a conversion pass. The
loaders therefore keep images as ``uint8`` ``(3, H, W)`` tensors (often a channels-last *view* of
the decoder's ``(H, W, 3)`` array, no copy), cut the patch, and convert only the patch with
:func:`to_float`. 16-bit files stay float32 in [0, 1] (:func:`lit_sr.io.read_image`'s scaling).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lit_sr.io import ImageReadError, open_image, read_image
from lit_sr.ops import make_lr

NPY_SUFFIX = ".npy"
_EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La")


def read_pixels(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a ``(3, H, W)`` tensor: ``uint8`` for 8-bit files, float32 in [0, 1] otherwise.

    ``.npy`` files (the prepared sub-images' raw format, ``(H, W, 3)`` uint8) are memory-mapped:
    the pixels are read from disk only where a crop touches them. A missing, truncated or
    undecodable file raises :class:`lit_sr.io.ImageReadError` naming it.
    """
    path = Path(path)
    if path.suffix == NPY_SUFFIX:
        return _read_npy(path)
    from PIL import UnidentifiedImageError

    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        with open_image(path) as im:  # a decompression bomb is refused from its header
            if im.mode not in _EIGHT_BIT_MODES:
                return read_image(path)  # 16-bit / 32-bit: float, scaled as read_image does
            im.load()  # decode now so truncation is caught here, not later
            # a writable copy (np.asarray of a PIL image is read-only); small next to the decode
            arr = np.array(im if im.mode == "RGB" else im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1)


def _read_npy(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        # copy-on-write mapping: pages are shared with the OS cache and every other reader
        arr = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"cannot read image {path}: expected an (H, W, 3) uint8 array, got "
                             f"{arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).permute(2, 0, 1)


def write_npy(img_u8: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a ``(3, H, W)`` uint8 tensor as an ``(H, W, 3)`` ``.npy`` file (not atomic: give a temp path)."""
    np.save(path, np.ascontiguousarray(img_u8.permute(1, 2, 0).numpy()), allow_pickle=False)


def to_float(img: torch.Tensor, hflip: bool = False, vflip: bool = False, transpose: bool = False) -> torch.Tensor:
    """Pixels (uint8 or float) as a new contiguous float32 tensor in [0, 1], optionally flipped / transposed.

    On the CPU the flips and the transpose are strided numpy views folded into the one conversion
    pass (torch would copy for each), single-threaded: a patch is too small for torch's thread pool
    to pay off, and in a busy main process (``num_workers=0``) its OpenMP threads cost more than they
    give. The same float32 division as ``img.float() / 255``, so the values are bit-identical.
    """
    if img.device.type != "cpu":
        img = img.flip(-1) if hflip else img
        img = img.flip(-2) if vflip else img
        img = img.transpose(-1, -2) if transpose else img
        img = img.to(torch.float32, memory_format=torch.contiguous_format)
        return img.div_(255.0) if img.dtype == torch.uint8 else img
    arr = img.detach().numpy()
    arr = arr[..., ::-1] if hflip else arr
    arr = arr[..., ::-1, :] if vflip else arr
    arr = arr.swapaxes(-1, -2) if transpose else arr
    out = torch.empty(arr.shape, dtype=torch.float32)
    if arr.dtype == np.uint8:
        np.divide(arr, np.float32(255.0), out=out.numpy())
    else:
        np.copyto(out.numpy(), arr, casting="same_kind")
    return out


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] rounded to uint8 (what an 8-bit file would hold); uint8 passes through."""
    if img.dtype == torch.uint8:
        return img
    return (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def is_eight_bit(img: torch.Tensor) -> bool:
    """Whether the pixels are exactly 8-bit levels (uint8, or float values ``k / 255``)."""
    if img.dtype == torch.uint8:
        return True
    return bool(torch.equal(to_uint8(img).float() / 255.0, img.float()))


def bicubic_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR partner of an HR image: MATLAB bicubic ``imresize(hr, 1/scale)``, rounded to uint8.

    Rounding to 8 bits is what MATLAB does when it writes DIV2K's ``*_LR_bicubic`` files, so
    training on it matches training on those files. ``hr``'s sides must be multiples of the scale.
    """
    lr, _ = make_lr(to_float(hr), scale)  # the one LR rule of lit-sr (lit_sr.ops.make_lr)
    return to_uint8(lr)


def lr_partner(lr_dir: str | os.PathLike, hr: Path, scale: int) -> Path:
    """The LR file of HR image ``hr``: DIV2K / Flickr2K naming ``0001.png -> 0001x4.png``, or the same name.

    A missing partner raises :class:`FileNotFoundError` naming the files looked for.
    """
    lr_dir = Path(lr_dir)
    for candidate in (lr_dir / f"{hr.stem}x{scale}{hr.suffix}", lr_dir / hr.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no LR partner for {hr}: expected {lr_dir / f'{hr.stem}x{scale}{hr.suffix}'} (DIV2K naming) "
        f"or {lr_dir / hr.name}"
    )
