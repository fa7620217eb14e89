"""Tensor operations with SR-community conventions.

:func:`imresize` reproduces MATLAB's ``imresize`` (bicubic, a = -0.5, antialiasing when
downscaling, symmetric boundary handling), the function that made the LR images of every SR
benchmark. It is written as two dense matrix products, so it is batched, runs on any device and is
differentiable.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def cubic_kernel(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel; ``a = -0.5`` is MATLAB's choice (PyTorch uses -0.75)."""
    absx = x.abs()
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = ((a + 2) * absx3 - (a + 3) * absx2 + 1) * (absx <= 1)
    far = (a * absx3 - 5 * a * absx2 + 8 * a * absx - 4 * a) * ((absx > 1) & (absx <= 2))
    return near + far


@lru_cache(maxsize=128)
def _resize_matrix_cpu(in_len: int, out_len: int, scale: float, antialiasing: bool) -> torch.Tensor:
    """(out_len, in_len) float64 weights of MATLAB's 1-D bicubic resize along one axis."""
    kernel_width = 4.0
    shrink = antialiasing and scale < 1
    if shrink:
        kernel_width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    # Output pixel x maps to input coordinate u (1-based, pixel centres), as MATLAB does.
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * cubic_kernel(distance * scale) if shrink else cubic_kernel(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric (mirror) boundary: MATLAB's aux = [1:in, in:-1:1] indexed modulo its length.
    aux = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    mirrored = aux[torch.remainder(indices.long() - 1, 2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, mirrored, weights)
    return matrix


def resize_matrix(
    in_len: int,
    out_len: int,
    scale: float,
    antialiasing: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The (out_len, in_len) matrix ``W`` with ``resized = W @ signal`` along one axis."""
    return _resize_matrix_cpu(in_len, out_len, float(scale), bool(antialiasing)).to(device=device, dtype=dtype)


def _output_size(size: int, scale: float) -> int:
    # MATLAB rounds the product up; the epsilon absorbs float error such as 0.3 * 10 = 3.0000000000000004.
    return int(math.ceil(size * scale - 1e-9))


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    antialiasing: bool = True,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """MATLAB-compatible bicubic resize of ``(N, C, H, W)`` or ``(C, H, W)`` tensors.

    Args:
        x: images; any float dtype and device (computed in float32 for half precision inputs).
        scale: resize factor (e.g. 1/4 to make x4 LR images). Output size is
            ``ceil(H * scale), ceil(W * scale)`` as in MATLAB.
        antialiasing: widen the kernel when downscaling, as MATLAB does by default.
        size: explicit output ``(H, W)`` instead of ``scale`` (the per-axis scale is then
            ``out / in``).

    Returns:
        The resized tensor, same rank, dtype and device as ``x``. Values are not clamped
        (bicubic overshoots slightly, exactly like MATLAB before its uint8 conversion).
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"imresize expects a (C,H,W) or (N,C,H,W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"imresize expects a floating point tensor, got {x.dtype}")
    if (scale is None) == (size is None):
        raise ValueError("imresize needs exactly one of `scale` or `size`")
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    in_h, in_w = x.shape[-2:]
    if size is not None:
        out_h, out_w = int(size[0]), int(size[1])
        scale_h, scale_w = out_h / in_h, out_w / in_w
    else:
        if scale <= 0:
            raise ValueError(f"imresize scale must be positive, got {scale}")
        scale_h = scale_w = float(scale)
        out_h, out_w = _output_size(in_h, scale_h), _output_size(in_w, scale_w)
    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    w_h = resize_matrix(in_h, out_h, scale_h, antialiasing, x.device, compute_dtype)
    w_w = resize_matrix(in_w, out_w, scale_w, antialiasing, x.device, compute_dtype)
    y = torch.matmul(w_h, torch.matmul(x.to(compute_dtype), w_w.T))
    y = y.to(x.dtype)
    return y.squeeze(0) if squeeze else y


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the trailing rows/columns so that H and W are multiples of ``scale`` (BasicSR's mod_crop)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels every ``stride`` pixels, the last one flush with the border."""
    if size <= tile:
        return [0]
    return sorted(set(range(0, size - tile, stride)) | {size - tile})


def tile_cores(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The part ``[begin, end)`` of the axis that each tile is responsible for.

    Neighbouring tiles share ``starts[i] + tile - starts[i + 1]`` pixels; the boundary between them
    is the middle of that shared strip, so every tile gives up at least half the overlap (rounded
    down) at each inner edge and nothing at the image border.
    """
    bounds = [0]
    for left, right in zip(starts, starts[1:]):
        bounds.append((right + left + tile) // 2)
    bounds.append(size)
    return list(zip(bounds, bounds[1:]))


def make_lr(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The SR benchmark protocol's LR image of an HR image: ``(lr, hr)`` with ``hr`` mod-cropped.

    The HR image is cropped to a multiple of ``scale`` (:func:`mod_crop`), shrunk by MATLAB
    bicubic (:func:`imresize`), clamped to [0, 1] and rounded to 8 bits, because MATLAB writes LR
    images as uint8 files: a model sees what a benchmark's LR PNG would hold. Works on ``(C, H, W)``
    or ``(N, C, H, W)``.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"make_lr: scale must be an integer >= 1, got {scale!r}")
    if min(hr.shape[-2:]) < scale:
        raise ValueError(f"make_lr: an image of {tuple(hr.shape[-2:])} is smaller than the scale {scale}")
    hr = mod_crop(hr, scale)
    lr = imresize(hr, 1 / scale).clamp(0, 1)
    return (lr * 255).round() / 255, hr


def tiled_forward(
    fn,
    x: torch.Tensor,
    scale: int,
    tile: int | None = None,
    overlap: int = 16,
    tile_batch: int = 8,
) -> torch.Tensor:
    """Super-resolve ``x`` in overlapping tiles of ``tile`` LR pixels to bound memory on large images.

    Tiles are cut on a regular grid with stride ``tile - overlap`` (the last one flush with the
    border) and run through ``fn`` in batches of ``tile_batch``. Stitching crops, it does not
    average: each output pixel is taken from exactly one tile, the one whose *core* holds it (the
    seam between two neighbours runs through the middle of their shared strip), so every tile's
    outer ``overlap // 2`` LR pixels, where its zero padding differs from the real neighbourhood,
    are thrown away. Hence, for a network whose receptive radius ``r`` (in LR pixels, rounded up)
    satisfies ``r <= overlap // 2``, the tiled output equals the whole-image output to float
    rounding. For EDSR that radius is ``1 + 2 * num_block + 1`` (head, residual blocks, body
    conv) plus the upsampler and the output convolutions (one LR pixel each, rounded up), e.g.
    6 for one block at x2, so ``overlap = 12`` is exact there.

    SwinIR needs more. Each Swin layer lets a pixel see the rest of its attention window, so the
    radius is bounded by ``num_layers * (window_size - 1)`` plus its convolutions (about 258 LR pixels
    for SwinIR-M: 36 layers, window 8), and the window grid is anchored to each tile's origin, so the
    tile starts must also fall on the image's window grid (stride, and image size minus tile,
    multiples of ``window_size``). For SwinIR-M that is the whole image in practice, so tiled SwinIR
    output comes close to the whole-image output but does not equal it. Measured on a tiny random
    SwinIR (x2, 4 layers, window 4, a 40 px image): max |difference| 0.027 with tile 16 / overlap 8,
    6e-6 with tile 24 / overlap 16 (stride 8: every tile starts on the window grid).

    ``tile=None`` (or an image that fits in one tile) calls ``fn(x)`` directly.

    Args:
        fn: maps ``(B, C, h, w)`` to ``(B, C', h*scale, w*scale)``.
        x: ``(N, C, H, W)`` LR batch.
        scale: upscaling factor of ``fn``.
        tile: tile side in LR pixels.
        overlap: LR pixels shared by neighbouring tiles (in ``[0, tile)``); half of it, rounded
            down, is the margin cropped from every inner tile edge.
        tile_batch: tiles per forward call.
    """
    n, _, h, w = x.shape
    if tile is None or (h <= tile and w <= tile):
        return fn(x)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile={tile}), got {overlap}")
    stride = tile - overlap
    th, tw = min(tile, h), min(tile, w)
    rows = list(zip(tile_starts(h, tile, stride), tile_cores(tile_starts(h, tile, stride), th, h)))
    cols = list(zip(tile_starts(w, tile, stride), tile_cores(tile_starts(w, tile, stride), tw, w)))
    boxes = [(row, col) for row in rows for col in cols]
    patches = torch.stack([x[..., t : t + th, c : c + tw] for (t, _), (c, _) in boxes], dim=1)  # (N, T, C, th, tw)
    flat = patches.flatten(0, 1)
    outs = torch.cat([fn(flat[i : i + tile_batch]) for i in range(0, flat.shape[0], tile_batch)])
    outs = outs.view(n, len(boxes), *outs.shape[1:])
    out = x.new_empty(n, outs.shape[2], h * scale, w * scale, dtype=outs.dtype)
    for k, ((t, (top, bottom)), (c, (left, right))) in enumerate(boxes):
        # The core [top, bottom) x [left, right) in image coordinates, shifted into the tile.
        out[..., top * scale : bottom * scale, left * scale : right * scale] = outs[
            :, k, :, (top - t) * scale : (bottom - t) * scale, (left - c) * scale : (right - c) * scale
        ]
    return out
