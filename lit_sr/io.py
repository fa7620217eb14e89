"""Images and weights in and out.

Weights are only ever read with ``torch.load(..., weights_only=True)`` or safetensors; every file
written goes to a temporary name first and is renamed into place, so an interrupted write never
leaves a half-written artefact behind. Written files get the usual mode (``0o666`` less the
umask, as ``open()`` would give), and every error on hostile or broken input names the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class ImageReadError(OSError):
    """An image file could not be decoded (missing, truncated or not an image)."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects beyond plain tensors and containers."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the network: missing or unexpected keys, or tensors of other shapes."""


class WeightsReadError(OSError):
    """A weights file could not be read (truncated, corrupted or not a checkpoint at all)."""


# --------------------------------------------------------------------------- atomic writes


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``).

    Elsewhere it is read by setting and restoring it, which is not atomic: a file created by
    another thread in between would get mode ``0o666``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _naming_target(exc: OSError, path: Path, doing: str) -> OSError:
    """``exc`` again (same errno, so the same ``OSError`` subclass) with ``path`` as its file."""
    return OSError(exc.errno, f"{exc.strerror or exc} ({doing}; nothing was written)", str(path))


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is created by ``mkstemp`` (mode ``0o600``) and given ``0o666 & ~umask``
    before the rename, so the artefact has the mode a plain ``open()`` would have given it (a
    cache or ``weights.pth`` shared with a group stays readable by it). If the block raises, the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` from the file system
    (a full disk, a read-only or vanished folder) is raised again with ``path`` as its file name,
    with the same errno (so ``PermissionError`` stays a ``PermissionError``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix)
        os.close(fd)
    except OSError as exc:
        raise _naming_target(exc, path, "creating its temporary file") from exc
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # errno None: an error of the caller's own (an ImageReadError naming its file), not of this write
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _naming_target(exc, path, "while writing") from exc
        raise


# --------------------------------------------------------------------------- images


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (manifests of the poison cache and of prepared data)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a ``(3, H, W)`` float32 RGB tensor in [0, 1].

    Grayscale, palette and RGBA images become RGB (alpha is dropped, as SR data sets expect);
    16-bit images are scaled by 65535. A missing, truncated or undecodable file raises
    :class:`ImageReadError` naming it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        return _decode_image(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"refusing to read image {path}: {exc} PIL's limit is PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS}; raise it only for a file you trust"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def _decode_image(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:  # the header's size is checked here (DecompressionBombError)
        im.load()  # decode now so truncation is caught here, not later
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
            arr = np.repeat(arr[..., None], 3, axis=2)
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def to_uint8_array(img: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1] to an ``(H, W, 3)`` uint8 array (rounded, clamped)."""
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"to_uint8_array takes one image, got a batch of {img.shape[0]}")
        img = img[0]
    arr = (img.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


def write_image(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a [0, 1] image tensor as an 8-bit file (format from the extension), atomically."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"cannot write image {path}: expected one of {IMAGE_EXTENSIONS}")
    fmt = Image.registered_extensions()[path.suffix.lower()]
    with atomic_write(path) as tmp:
        Image.fromarray(to_uint8_array(img)).save(tmp, format=fmt)
    return path


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files directly inside ``folder``; errors name the folder when it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"image folder {folder} holds no images (expected {', '.join(IMAGE_EXTENSIONS)})")
    return files


# --------------------------------------------------------------------------- weights


def _torch_load_safely(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains pickled objects other than tensors and plain "
            f"containers (weights_only=True rejected it: {str(exc).splitlines()[0]}). lit-sr never "
            "unpickles untrusted files; re-save the weights as a state_dict or .safetensors."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # torch names no file: a truncated zip, ...
        raise WeightsReadError(f"cannot read weights file {path}: {_first_line(exc)}") from exc


def _safetensors_load(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError and friends name no file
        raise WeightsReadError(f"cannot read weights file {path}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


RUN_OUTPUTS = ("weights.pth", "weights_best.pth", "last.ckpt", "best.ckpt")


def producing_command_hint(path: str | os.PathLike) -> str:
    """For a missing run output, the command that writes it ('' for any other path).

    lit-sr's run folders are ``runs/<recipe>/<version>/`` (the recipe's logger ``name`` is the recipe's
    file name) and ``<study output>/<study>/runs/<run>/`` for a study; ``weights.pth`` is written when
    ``fit`` ends, checkpoints under ``checkpoints/``.
    """
    parts = Path(path).parts
    if Path(path).name not in RUN_OUTPUTS:
        return ""
    folder = parts[:-2] if len(parts) >= 2 and parts[-2] == "checkpoints" else parts[:-1]
    if len(folder) >= 3 and folder[-2] == "runs":
        return (f" (a study run's output: `lit-sr study --config {folder[-3]}` trains run {folder[-1]!r} and "
                f"writes it)")
    if len(folder) >= 2:
        recipe, version = folder[-2], folder[-1]
        fixed = f" --trainer.logger.init_args.version {version}"
        return (f" (a training run's output, written when fit ends: `lit-sr fit --config {recipe}{fixed}` writes it "
                f"when {recipe} is a built-in recipe, configs/train/{recipe}.yaml)")
    return ""


def read_state_dict(path: str | os.PathLike, key: str | None = None, prefix: str | None = None) -> dict:
    """Read a flat ``{name: tensor}`` state_dict from a BasicSR ``.pth``, Lightning ``.ckpt`` or ``.safetensors``.

    Args:
        path: the file.
        key: for BasicSR files, ``"params"`` or ``"params_ema"``; ``None`` takes ``params_ema`` when
            present, else ``params``, else the file itself as a state_dict. For Lightning
            checkpoints, ``"params_ema"`` selects the EMA weights (``net_ema.`` prefix).
        prefix: for Lightning checkpoints, the attribute holding the network (default: ``net.``,
            or ``net_ema.`` for EMA weights when present and ``key`` allows it).

    A ``module.`` prefix left by (Distributed)DataParallel is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}{producing_command_hint(path)}")
    if path.suffix == ".safetensors":
        return _strip_module_prefix(_safetensors_load(path))
    obj = _torch_load_safely(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict of weights")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning checkpoint
        return _from_lightning(obj["state_dict"], path, key, prefix)
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path} has no key {key!r}; it has {sorted(obj)[:10]}")
        state = obj[key]
    elif "params_ema" in obj:
        state = obj["params_ema"]
    elif "params" in obj:
        state = obj["params"]
    else:
        state = obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        shown = sorted(map(str, state))[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path}: the selected weights are not a flat dict of tensors (got {shown})")
    return _strip_module_prefix(dict(state))


def _from_lightning(state: Mapping, path: Path, key: str | None, prefix: str | None) -> dict:
    if prefix is None:
        has_ema = any(k.startswith("net_ema.") for k in state)
        if key == "params_ema" and not has_ema:
            raise KeyError(f"{path} has no EMA weights (no 'net_ema.' entries)")
        prefix = "net_ema." if (has_ema and key in (None, "params_ema")) else "net."
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        prefixes = sorted({k.split(".")[0] for k in state})
        raise KeyError(f"{path}: no weights under prefix {prefix!r}; the checkpoint has prefixes {prefixes}")
    return _strip_module_prefix(sub)


def _strip_module_prefix(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(
    model: nn.Module, path: str | os.PathLike, key: str | None = None, strict: bool = True
) -> nn.Module:
    """Load weights from a BasicSR ``.pth``, a Lightning ``.ckpt`` or a ``.safetensors`` file into ``model``.

    See :func:`read_state_dict` for ``key``. A tensor whose shape differs from the network's
    (another ``num_feat``, another scale) raises :class:`WeightsMismatchError` naming the file and
    the tensors, before anything is copied, whatever ``strict``; with ``strict=True`` any missing
    or unexpected key raises it too, listing them. Returns the model.
    """
    state = read_state_dict(path, key=key)
    _check_shapes(model, state, path)
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise WeightsMismatchError(
            f"weights in {path} do not match {type(model).__name__}: "
            f"missing {result.missing_keys[:10]}{'...' if len(result.missing_keys) > 10 else ''}, "
            f"unexpected {result.unexpected_keys[:10]}{'...' if len(result.unexpected_keys) > 10 else ''}"
        )
    return model


def _check_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise :class:`WeightsMismatchError` listing every tensor of ``state`` whose shape ``model`` does not have."""
    own = model.state_dict()
    wrong = [
        f"{name}: file {tuple(tensor.shape)} vs network {tuple(own[name].shape)}"
        for name, tensor in state.items()
        if name in own
        and not isinstance(own[name], nn.parameter.UninitializedTensorMixin)  # lazy modules take any shape
        and tuple(tensor.shape) != tuple(own[name].shape)
    ]
    if wrong:
        more = f" (and {len(wrong) - 10} more)" if len(wrong) > 10 else ""
        raise WeightsMismatchError(
            f"weights in {path} do not fit {type(model).__name__}: {len(wrong)} tensors have other shapes: "
            f"{'; '.join(wrong[:10])}{more}. Build the network with the arguments it was trained with "
            "(num_feat, num_block, scale, ...)"
        )


def save_weights(
    model: nn.Module, path: str | os.PathLike, ema_model: nn.Module | None = None, meta: Mapping | None = None
) -> Path:
    """Write ``model``'s weights as BasicSR ``{'params', 'params_ema'}`` (``.pth``) or ``.safetensors``.

    ``.safetensors`` holds one state_dict: the EMA weights when given (what one deploys), else
    the model's. ``meta`` (plain values: which state, step, ...) goes in the ``.pth`` file's
    ``meta`` entry or the ``.safetensors`` header (as strings). The write is atomic.
    """
    path = Path(path)
    params = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ema = None if ema_model is None else {k: v.detach().cpu().contiguous() for k, v in ema_model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_write(path) as tmp:
            save_file(ema if ema is not None else params, str(tmp),
                      metadata=None if meta is None else {str(k): str(v) for k, v in meta.items()})
    elif path.suffix in (".pth", ".pt"):
        payload = {"params": params}
        if ema is not None:
            payload["params_ema"] = ema
        if meta is not None:
            payload["meta"] = dict(meta)
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
    else:
        raise ValueError(f"cannot save weights to {path}: expected a .pth, .pt or .safetensors file name")
    return path
