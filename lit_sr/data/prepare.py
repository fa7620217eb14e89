"""Prepared training data: HR images split into overlapping sub-images with their LR partners.

Decoding a whole 2K PNG to cut one 192 px patch costs ~100 ms; a 480 px sub-image decodes in
~4 ms (PNG) or is memory-mapped (``.npy``). This is BasicSR's ``scripts/data_preparation/
extract_subimages.py`` with the conventions of the poison cache:

* **Grid** (:func:`subimage_starts`): starts ``0, step, 2 step, ...`` while a crop fits, plus one
  crop flush with the far edge when the leftover exceeds ``thresh_size`` (BasicSR's rule). With
  the default ``thresh_size=0`` the sub-images tile each image completely; BasicSR's defaults are
  ``crop_size=480, step=240, thresh_size=0``.
* **LR partners**: cut from ``lr_dir``'s matching image (DIV2K naming ``0001x4.png``) at
  ``crop_size / scale``, or, without ``lr_dir``, from MATLAB bicubic of the *whole* (mod-cropped)
  HR image rounded to uint8 -- exactly what DIV2K's ``*_LR_bicubic`` files hold, so the prepared
  path trains on the same pairs as the raw folders (bicubic of each sub-image alone would differ
  in a 2-pixel band at its borders). ``crop_size`` and ``step`` must be multiples of the scale.
* **Files**: ``hr/<stem>_s001.png`` and ``lr_x<scale>/<stem>_s001.png`` (PNG, BasicSR's compression
  level 3), or ``.npy`` (raw uint8, memory-mapped by the loader: larger on disk, nearly free to read).
* **Atomic, resumable, checked**: every file goes to a temporary name and is renamed into place
  (:func:`lit_sr.io.atomic_write`); an image is finished when its part file ``parts/<stem>.json``
  (its sub-images with their SHA-256 and sizes) exists, and is never redone by a later run; stale
  temporary files are removed; ``manifest.json`` (configuration, its hash, every image) is written
  last, so its presence means the set is complete. A directory made with another configuration
  raises :class:`PreparedDataMismatchError` unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lit_sr.data.images import NPY_SUFFIX, bicubic_lr, lr_partner, read_pixels, to_uint8, write_npy
from lit_sr.io import atomic_write, list_images, sha256_file
from lit_sr.ops import mod_crop
from lit_sr.validation import check_choice, check_int

FORMAT_VERSION = 1
KIND = "lit_sr.prepared_subimages"
MANIFEST = "manifest.json"
CONFIG = "config.json"
PARTS = "parts"
SubImageFormat = Literal["png", "npy"]
SUBIMAGE_FORMATS = ("png", "npy")


class PreparedDataError(ValueError):
    """Bad input for, or a bad output of, the prepare step (a named file and what was expected)."""


class PreparedDataMismatchError(PreparedDataError):
    """An output directory holds sub-images made with another configuration, or is incomplete."""


@dataclass(frozen=True)
class PrepareConfig:
    """What a prepared directory was made with (its hash names the configuration in the manifest).

    Args:
        hr_dir: folder of HR images.
        lr_dir: folder of LR partners (DIV2K naming), or ``None`` for MATLAB bicubic of the HR.
        scale: upscaling factor.
        crop_size: HR sub-image side (BasicSR 480); a multiple of ``scale``.
        step: distance between sub-image starts (BasicSR 240); a multiple of ``scale``.
        thresh_size: a leftover strip wider than this gets one extra, edge-aligned sub-image
            (BasicSR 0: always, so nothing is lost).
        format: ``png`` (BasicSR's layout) or ``npy`` (raw uint8, memory-mapped when read).
        compress_level: PNG compression level (BasicSR 3).
    """

    hr_dir: str
    lr_dir: str | None = None
    scale: int = 4
    crop_size: int = 480
    step: int = 240
    thresh_size: int = 0
    format: SubImageFormat = "png"
    compress_level: int = 3

    def __post_init__(self) -> None:
        check_int(self.scale, "scale", 1)
        check_int(self.crop_size, "crop_size", 1)
        check_int(self.step, "step", 1)
        check_int(self.thresh_size, "thresh_size", 0)
        check_int(self.compress_level, "compress_level", 0, 9)
        check_choice(self.format, "format", SUBIMAGE_FORMATS)
        for name in ("crop_size", "step"):
            if getattr(self, name) % self.scale:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of scale {self.scale} "
                                 "so that every LR sub-image is aligned with its HR sub-image")

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "format_version": FORMAT_VERSION, **asdict(self)}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    @property
    def lr_folder(self) -> str:
        return f"lr_x{self.scale}"

    @property
    def suffix(self) -> str:
        return NPY_SUFFIX if self.format == "npy" else ".png"


@dataclass
class PrepareReport:
    """What :func:`prepare_subimages` did: images made now, images found finished, sub-images in all."""

    out_dir: Path
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    num_subimages: int = 0


# --------------------------------------------------------------------------- the grid


def subimage_starts(length: int, crop_size: int, step: int, thresh_size: int = 0) -> list[int]:
    """Starts of the crops along one side (BasicSR's rule; ``length >= crop_size``)."""
    if length < crop_size:
        raise ValueError(f"side {length} is shorter than crop_size {crop_size}")
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def subimage_boxes(height: int, width: int, crop_size: int, step: int, thresh_size: int = 0) -> list[tuple[int, int]]:
    """``(top, left)`` of every sub-image of an ``height x width`` image, row by row."""
    return [(top, left) for top in subimage_starts(height, crop_size, step, thresh_size)
            for left in subimage_starts(width, crop_size, step, thresh_size)]


# --------------------------------------------------------------------------- one image


def _eight_bit(img: torch.Tensor, path: Path) -> torch.Tensor:
    if img.dtype != torch.uint8:
        raise PreparedDataError(f"{path} is not an 8-bit image (16-bit?): prepared sub-images are 8-bit; convert "
                                "it first or train on the raw folders")
    return img


def _load_image_pair(config: PrepareConfig, hr_path: Path) -> tuple[torch.Tensor, torch.Tensor, Path | None]:
    """The uint8 ``(hr, lr)`` of one source image, with the size checks (errors name the files)."""
    hr = _eight_bit(read_pixels(hr_path), hr_path)
    s, c = config.scale, config.crop_size
    if config.lr_dir is None:
        hr = mod_crop(hr, s)
        lr_path = None
    else:
        lr_path = lr_partner(config.lr_dir, hr_path, s)
    h, w = hr.shape[-2:]
    if h < c or w < c:
        raise PreparedDataError(f"HR image {hr_path} is {h}x{w}: smaller than crop_size {c}x{c}; use a smaller "
                                "crop_size or leave the image out")
    if lr_path is None:
        return hr, bicubic_lr(hr, s), None
    lr = _eight_bit(read_pixels(lr_path), lr_path)
    if tuple(lr.shape[-2:]) != (h // s, w // s) or h % s or w % s:
        raise PreparedDataError(f"LR/HR sizes disagree with scale x{s}: HR {hr_path} is {h}x{w}, LR {lr_path} is "
                                f"{lr.shape[-2]}x{lr.shape[-1]}; expected LR {h // s}x{w // s} and HR sides "
                                f"that are multiples of {s}")
    return hr, lr, lr_path


def _write_subimage(config: PrepareConfig, img: torch.Tensor, path: Path) -> dict[str, Any]:
    with atomic_write(path) as tmp:
        if config.format == "npy":
            write_npy(img.contiguous(), tmp)
        else:
            from PIL import Image

            Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(
                tmp, format="PNG", compress_level=config.compress_level)
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def prepare_image(config: PrepareConfig, out_dir: Path, hr_path: Path) -> dict[str, Any]:
    """Cut one HR image (and its LR partner) into sub-images and write them and the image's part file."""
    hr, lr, lr_path = _load_image_pair(config, hr_path)
    s, c = config.scale, config.crop_size
    subs = []
    for k, (top, left) in enumerate(subimage_boxes(hr.shape[-2], hr.shape[-1], c, config.step,
                                                   config.thresh_size), start=1):
        name = f"{hr_path.stem}_s{k:03d}"
        hr_rel = f"hr/{name}{config.suffix}"
        lr_rel = f"{config.lr_folder}/{name}{config.suffix}"
        hr_info = _write_subimage(config, hr[:, top : top + c, left : left + c], out_dir / hr_rel)
        lr_info = _write_subimage(config, lr[:, top // s : (top + c) // s, left // s : (left + c) // s],
                                  out_dir / lr_rel)
        subs.append({"name": name, "top": top, "left": left, "hr": hr_rel, "lr": lr_rel,
                     "hr_sha256": hr_info["sha256"], "hr_bytes": hr_info["bytes"],
                     "lr_sha256": lr_info["sha256"], "lr_bytes": lr_info["bytes"]})
    part = {"stem": hr_path.stem, "source": str(hr_path), "lr_source": None if lr_path is None else str(lr_path),
            "size": [int(hr.shape[-2]), int(hr.shape[-1])], "sub_images": subs}
    # the part file is written last: its presence is what marks the image finished
    with atomic_write(out_dir / PARTS / f"{hr_path.stem}.json", suffix=".tmp") as tmp:
        tmp.write_text(json.dumps(part, indent=1))
    return part


def _prepare_job(args: tuple[dict[str, Any], str, str]) -> dict[str, Any]:
    config, out_dir, hr_path = args
    return prepare_image(PrepareConfig(**config), Path(out_dir), Path(hr_path))


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core: the parallelism is across images


# --------------------------------------------------------------------------- the directory


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PreparedDataMismatchError(f"{path} is not valid JSON ({exc}); delete it or prepare with "
                                        "overwrite") from exc


def _check_config(out_dir: Path, config: PrepareConfig, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a directory made with another configuration."""
    old = _read_json(out_dir / CONFIG)
    if old is None or old == config.to_json():
        return
    if not overwrite:
        diffs = [f"{k}: {old.get(k)!r} there vs {v!r} now" for k, v in config.to_json().items() if old.get(k) != v]
        raise PreparedDataMismatchError(
            f"{out_dir} holds sub-images prepared with another configuration ({'; '.join(diffs)}); "
            "refusing to mix them: use another output folder or pass --overwrite true (lit-sr data prepare)")
    for name in (MANIFEST, CONFIG, PARTS, "hr", config.lr_folder, *(f"lr_x{k}" for k in range(1, 9))):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _remove_stale_temporaries(out_dir: Path, config: PrepareConfig) -> None:
    # atomic_write's temporary files are hidden (".<name>.<random>"): leftovers of an interrupt
    for folder in (out_dir, out_dir / PARTS, out_dir / "hr", out_dir / config.lr_folder):
        if folder.is_dir():
            for stale in folder.iterdir():
                if stale.name.startswith(".") and stale.is_file():
                    stale.unlink(missing_ok=True)


def _finished_part(out_dir: Path, stem: str, source: Path) -> dict[str, Any] | None:
    """The part of an image finished by an earlier run, if its files are all there at the recorded size."""
    try:
        part = _read_json(out_dir / PARTS / f"{stem}.json")
    except PreparedDataMismatchError:
        return None
    if part is None or part.get("source") != str(source):
        return None
    for sub in part["sub_images"]:
        for key in ("hr", "lr"):
            path = out_dir / sub[key]
            if not path.is_file() or path.stat().st_size != sub[f"{key}_bytes"]:
                return None
    return part


def prepare_subimages(
    hr_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    lr_dir: str | os.PathLike | None = None,
    scale: int = 4,
    crop_size: int = 480,
    step: int = 240,
    thresh_size: int = 0,
    format: SubImageFormat = "png",
    compress_level: int = 3,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Split every image of ``hr_dir`` into sub-images with LR partners under ``out_dir`` (see the module doc).

    Args:
        hr_dir, lr_dir, scale, crop_size, step, thresh_size, format, compress_level: see
            :class:`PrepareConfig`.
        out_dir: output directory (created).
        workers: processes working on different images at once.
        overwrite: clear an output directory made with another configuration instead of raising.
        progress: show a tqdm bar.

    Returns:
        A :class:`PrepareReport`; ``out_dir/manifest.json`` lists every sub-image.
    """
    config = PrepareConfig(hr_dir=str(Path(hr_dir).resolve()),
                           lr_dir=None if lr_dir is None else str(Path(lr_dir).resolve()), scale=scale,
                           crop_size=crop_size, step=step, thresh_size=thresh_size, format=format,
                           compress_level=compress_level)
    check_int(workers, "workers", 1)
    out = Path(out_dir)
    sources = list_images(config.hr_dir)
    stems = [p.stem for p in sources]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise PreparedDataError(f"{config.hr_dir} holds two images named {dup!r} (different extensions); "
                                "sub-image names would collide")
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config, overwrite)
    with atomic_write(out / CONFIG, suffix=".tmp") as tmp:
        tmp.write_text(json.dumps(config.to_json(), indent=1, sort_keys=True))
    _remove_stale_temporaries(out, config)
    report = PrepareReport(out_dir=out)
    parts: dict[str, dict[str, Any]] = {}
    todo = []
    for src in sources:
        part = _finished_part(out, src.stem, src)
        if part is None:
            todo.append(src)
        else:
            parts[src.stem] = part
            report.skipped.append(src.stem)
    for part in _run_jobs(config, out, todo, workers, progress, done=len(parts), total=len(sources)):
        parts[part["stem"]] = part
        report.made.append(part["stem"])
    write_manifest(out, config, [parts[s] for s in stems])
    report.num_subimages = sum(len(p["sub_images"]) for p in parts.values())
    return report


def _run_jobs(config: PrepareConfig, out: Path, todo: Sequence[Path], workers: int, progress: bool, done: int,
              total: int):
    from tqdm.auto import tqdm

    jobs = [(asdict(config), str(out), str(p)) for p in todo]
    bar = tqdm(total=total, initial=done, desc=f"prepare {Path(config.hr_dir).name}", unit="img",
               disable=not progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                yield _prepare_job(job)
                bar.update(1)
        else:
            # spawn, not fork: a forked copy of a process that already ran OpenMP threads can hang
            with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
                for part in pool.imap_unordered(_prepare_job, jobs):
                    yield part
                    bar.update(1)
    finally:
        bar.close()


def write_manifest(out: Path, config: PrepareConfig, parts: Sequence[dict[str, Any]]) -> Path:
    """Write ``manifest.json`` (atomically): the configuration, its hash and every image's sub-images."""
    manifest = {"kind": KIND, "format_version": FORMAT_VERSION, "config": config.to_json(),
                "config_hash": config.hash(), "complete": True,
                "num_images": len(parts), "num_subimages": sum(len(p["sub_images"]) for p in parts),
                "images": list(parts)}
    path = out / MANIFEST
    with atomic_write(path, suffix=".tmp") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return path


# --------------------------------------------------------------------------- reading it back


@dataclass(frozen=True)
class PreparedPair:
    """One prepared sub-image pair: its name and files."""

    name: str
    hr_path: Path
    lr_path: Path


def prepared_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The configuration a finished prepared directory was made with (``hr_dir``, ``lr_dir``, ``scale``, ...)."""
    directory = Path(directory)
    manifest = _read_json(directory / MANIFEST)
    if manifest is None or manifest.get("kind") != KIND or not manifest.get("complete"):
        raise PreparedDataMismatchError(
            f"{directory} is not a finished prepared data set (no complete {MANIFEST}); run "
            f"`lit-sr data prepare --hr_dir ... --out_dir {directory}` (it resumes where it stopped)")
    return dict(manifest["config"])


def read_prepared(directory: str | os.PathLike, scale: int | None = None, verify: bool = False) -> list[PreparedPair]:
    """The sub-image pairs of a prepared directory, checked against its manifest.

    Args:
        directory: a ``prepare_subimages`` output.
        scale: the scale the reader trains at; a different prepared scale raises.
        verify: check every file's SHA-256 (reads everything); otherwise every file's existence
            and size are checked.

    Raises:
        PreparedDataMismatchError: no manifest (the prepare step did not finish), another scale,
            a file missing, resized or (``verify``) changed.
    """
    directory = Path(directory)
    prepared_config(directory)
    manifest = _read_json(directory / MANIFEST)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PreparedDataMismatchError(f"{directory / MANIFEST} has format {manifest.get('format_version')}, this "
                                        f"version reads {FORMAT_VERSION}: prepare it again")
    prepared_scale = manifest["config"]["scale"]
    if scale is not None and prepared_scale != scale:
        raise PreparedDataMismatchError(f"{directory} was prepared for x{prepared_scale}, but the data module "
                                        f"trains at x{scale}: prepare it with --scale {scale}")
    pairs = []
    for part in manifest["images"]:
        for sub in part["sub_images"]:
            for key in ("hr", "lr"):
                _check_file(directory / sub[key], sub, key, verify, directory)
            pairs.append(PreparedPair(sub["name"], directory / sub["hr"], directory / sub["lr"]))
    if not pairs:
        raise PreparedDataMismatchError(f"{directory / MANIFEST} lists no sub-images")
    return pairs


def _check_file(path: Path, sub: dict[str, Any], key: str, verify: bool, directory: Path) -> None:
    # the manifest is data: a name with "..", an absolute path or a symlink leading out is refused
    if not path.resolve().is_relative_to(directory.resolve()):
        raise PreparedDataMismatchError(
            f"sub-image {sub.get('name')!r} of {directory / MANIFEST}: its {key} file {sub[key]!r} leads to "
            f"{path.resolve()}, outside {directory}: refused (a prepared folder reads only its own files)")
    if not path.is_file():
        raise PreparedDataMismatchError(f"{path} is listed in {directory / MANIFEST} but missing: prepare again "
                                        "(finished images are kept)")
    if path.stat().st_size != sub[f"{key}_bytes"]:
        raise PreparedDataMismatchError(f"{path} is {path.stat().st_size} bytes, {directory / MANIFEST} says "
                                        f"{sub[f'{key}_bytes']}: the file was changed or truncated")
    if verify and sha256_file(path) != sub[f"{key}_sha256"]:
        raise PreparedDataMismatchError(f"{path} does not match the SHA-256 in {directory / MANIFEST}: the file "
                                        "was changed")


def place_back(directory: str | os.PathLike, stem: str, which: Literal["hr", "lr"] = "hr") -> torch.Tensor:
    """Reassemble one source image from its sub-images (uint8); a check that the grid tiles it."""
    directory = Path(directory)
    manifest = _read_json(directory / MANIFEST)
    if manifest is None:
        raise PreparedDataMismatchError(f"{directory} has no {MANIFEST}")
    part = next((p for p in manifest["images"] if p["stem"] == stem), None)
    if part is None:
        raise KeyError(f"{directory / MANIFEST} has no image {stem!r}")
    s = 1 if which == "hr" else manifest["config"]["scale"]
    h, w = part["size"][0] // s, part["size"][1] // s
    canvas = torch.zeros(3, h, w, dtype=torch.uint8)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for sub in part["sub_images"]:
        img = to_uint8(read_pixels(directory / sub[which]))
        top, left = sub["top"] // s, sub["left"] // s
        canvas[:, top : top + img.shape[-2], left : left + img.shape[-1]] = img
        covered[top : top + img.shape[-2], left : left + img.shape[-1]] = True
    if not bool(covered.all()):
        raise PreparedDataError(f"the sub-images of {stem} in {directory} leave {int((~covered).sum())} pixels "
                                "uncovered (thresh_size > 0 drops edge strips)")
    return canvas

