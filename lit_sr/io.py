"""Images and weights in and out.

Weights are only ever read with ``torch.load(..., weights_only=True)`` or safetensors; every file
written goes to a temporary name first and is renamed into place, so an interrupted write never
leaves a half-written artefact behind. Written files get the usual mode (``0o666`` less the
umask, as ``open()`` would give), and every error on hostile or broken input names the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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


class NonFiniteWeightsError(ValueError):
    """Weights holding NaN or infinite values (a diverged run): never written as a result."""


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


# how a Rust writer (safetensors' ``SafetensorError``) words an OS error: "I/O error: No space left
# on device (os error 28)"; it is not an OSError, so without this the file it was writing goes unnamed
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_errno(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``: an ``OSError``'s ``errno``, or the ``(os error N)`` of a
    Rust library's error (safetensors); ``None`` for any other exception."""
    if isinstance(exc, OSError):
        return exc.errno
    found = _RUST_OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def _naming_target(exc: BaseException, path: Path, doing: str) -> OSError:
    """``exc`` again as an ``OSError`` (same errno, so the same subclass) with ``path`` as its file."""
    number = os_errno(exc)
    reason = getattr(exc, "strerror", None) or (os.strerror(number) if number else str(exc))
    return OSError(number, f"{reason} ({doing}; nothing was written)", str(path))


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is created by ``mkstemp`` (mode ``0o600``) and given ``0o666 & ~umask``
    before the rename, so the artefact has the mode a plain ``open()`` would have given it (a
    cache or ``weights.pth`` shared with a group stays readable by it). If the block raises, the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` from the file system
    (a full disk, a read-only or vanished folder), or a writer library's error carrying one
    (safetensors' ``SafetensorError``, see :func:`os_errno`), is raised again as an ``OSError``
    with ``path`` as its file name and the same errno (so ``PermissionError`` stays a
    ``PermissionError``).
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
        if os_errno(exc) is not None:
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
    :class:`ImageReadError` naming it, and so does an image above ``PIL.Image.MAX_IMAGE_PIXELS``
    (:func:`open_image`).
    """
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        return _decode_image(path)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def _bomb_message(path: Path, size: str, limit: int | None) -> str:
    return (f"refused: image {path} is {size}, above PIL's limit PIL.Image.MAX_IMAGE_PIXELS = {limit} pixels "
            "(a decompression-bomb guard: a file of a few hundred bytes can claim an image that exhausts "
            "memory when decoded). If you trust the file, raise the limit deliberately before reading it: "
            "PIL.Image.MAX_IMAGE_PIXELS = <pixels> (None disables the check).")


@contextmanager
def open_image(path: str | os.PathLike):
    """``PIL.Image.open(path)`` as a context manager that refuses a decompression bomb up front.

    PIL raises an error only above twice ``PIL.Image.MAX_IMAGE_PIXELS`` and merely warns between
    once and twice the limit, while decoding such an image takes gigabytes. Here anything above the
    limit itself is refused, from the header alone, with :class:`ImageReadError` naming the file,
    its size and the limit (and how to raise it deliberately).
    """
    from PIL import Image

    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with a message
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            raise ImageReadError(_bomb_message(path, f"{found.group(1) if found else 'more than twice the limit'}"
                                                     " pixels", limit)) from exc
    with im:
        width, height = im.size
        if limit is not None and width * height > limit:
            raise ImageReadError(_bomb_message(path, f"{width}x{height} = {width * height} pixels", limit))
        yield im


def _decode_image(path: Path) -> torch.Tensor:
    with open_image(path) as im:  # the header's size is checked here (a decompression bomb is refused)
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


def _unsafe_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler objected to (``Unsupported global: GLOBAL io.open``), without
    its advice to retry with ``weights_only=False`` (which would run the file's code)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\.?\s*(?:Please|\n)|$)", text)
    if found and found.group(1).strip():
        return found.group(1).strip()
    return "an object other than tensors and plain containers"


def _torch_load_safely(source: Path | IO[bytes], name: str | os.PathLike | None = None) -> object:
    """``torch.load(source, weights_only=True)`` whose errors name the file (``name``, else ``source``)."""
    name = source if name is None else name
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refused as unsafe: {name} holds a pickled object that is not a tensor or a plain container "
            f"({_unsafe_reason(exc)}); loading it would run code from the file. lit-sr never unpickles "
            "untrusted files; re-save the weights as a state_dict of tensors or as .safetensors."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # torch names no file: a truncated zip, ...
        raise WeightsReadError(
            f"refused as corrupt: cannot read checkpoint/weights file {name}: {_first_line(exc)} "
            "(truncated, corrupted or not a torch file)"
        ) from exc


def is_remote_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL or an fsspec path of another file system (``s3://``, ``memory://``, ...)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _local_path(path: str | os.PathLike) -> Path:
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def _read_remote_bytes(url: str, timeout: float) -> bytes:
    """The bytes at ``url`` (any fsspec file system), in memory: nothing is written to a cache folder."""
    import fsspec

    kwargs = {}
    if url.startswith(("http://", "https://")):
        import aiohttp

        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=timeout)}
    try:
        with fsspec.open(url, "rb", **kwargs) as f:
            return f.read()
    except Exception as exc:  # fsspec and its back ends raise many types; all of them name no file
        raise WeightsReadError(f"cannot read checkpoint {url}: {_first_line(exc)}") from exc


def load_checkpoint(path: str | os.PathLike, timeout: float = 60.0) -> dict:
    """Read a whole checkpoint (a Lightning ``.ckpt``, a ``.pth``) from a local path, a URL or any fsspec path.

    Always ``torch.load(weights_only=True)``: a checkpoint holding any pickled object other than
    tensors and plain containers raises :class:`UnsafeCheckpointError` naming it, and nothing in it
    runs. A remote file is read into memory (``timeout`` seconds at most for http(s)), not into
    torch hub's cache. Every error names ``path``.
    """
    if is_remote_path(path):
        payload = io.BytesIO(_read_remote_bytes(str(path), timeout))
        obj = _torch_load_safely(payload, name=str(path))
    else:
        local = _local_path(path)
        if not local.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {local}")
        obj = _torch_load_safely(local)
    if not isinstance(obj, Mapping):
        raise WeightsReadError(f"refused as corrupt: checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


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

    A ``module.`` prefix left by (Distributed)DataParallel is stripped. The authors' LIIF files,
    ``{'model': {'name', 'args', 'sd'}, ...}``, give ``model['sd']``.
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
    model = obj.get("model")
    if key is None and isinstance(model, Mapping) and isinstance(model.get("sd"), Mapping):
        obj = model["sd"]  # yinboc/liif's {'model': {'name', 'args', 'sd'}} (lit_sr.archs.liif_arch reads the args)
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
    check_shapes(model, state, path)
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        unexpected = sorted(result.unexpected_keys)  # the file's order is not fixed (safetensors)
        raise WeightsMismatchError(
            f"weights in {path} do not match {type(model).__name__}: "
            f"missing {result.missing_keys[:10]}{'...' if len(result.missing_keys) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    return model


def check_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, hint: str = "") -> None:
    """Raise :class:`WeightsMismatchError` listing every tensor of ``state`` whose shape ``model`` does not have."""
    own = model.state_dict()
    # The network's order, not the file's: a safetensors file's keys come back in no fixed order,
    # and the message (which lists the first ten) must be the same on every run.
    wrong = [
        f"{name}: file {tuple(state[name].shape)} vs network {tuple(mine.shape)}"
        for name, mine in own.items()
        if name in state
        and not isinstance(mine, nn.parameter.UninitializedTensorMixin)  # lazy modules take any shape
        and tuple(state[name].shape) != tuple(mine.shape)
    ]
    if wrong:
        more = f" (and {len(wrong) - 10} more)" if len(wrong) > 10 else ""
        raise WeightsMismatchError(
            f"weights in {path} do not fit {type(model).__name__}: {len(wrong)} tensors have other shapes: "
            f"{'; '.join(wrong[:10])}{more}. "
            + (hint or "Build the network with the arguments it was trained with (num_feat, num_block, scale, ...)")
        )


def save_weights(
    model: nn.Module, path: str | os.PathLike, ema_model: nn.Module | None = None, meta: Mapping | None = None
) -> Path:
    """Write ``model``'s weights as BasicSR ``{'params', 'params_ema'}`` (``.pth``) or ``.safetensors``.

    ``.safetensors`` holds one state_dict: the EMA weights when given (what one deploys), else
    the model's. ``meta`` (plain values: which state, step, ...) goes in the ``.pth`` file's
    ``meta`` entry or the ``.safetensors`` header (as strings). The write is atomic.

    Weights holding NaN or infinite values (a run that diverged) raise
    :class:`NonFiniteWeightsError` naming the file and the first such tensor; nothing is written.
    """
    path = Path(path)
    params = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ema = None if ema_model is None else {k: v.detach().cpu().contiguous() for k, v in ema_model.state_dict().items()}
    for which, state in (("params", params), ("params_ema", ema or {})):
        bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise NonFiniteWeightsError(
                f"refused to write {path}: {which} tensor {bad} holds NaN or infinite values (the run diverged: "
                "lower the learning rate or clip gradients); nothing was written")
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
