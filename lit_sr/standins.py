"""Miniature stand-ins of the data and weight files the paper-scale recipes read.

No data set or pretrained weight can be downloaded here, yet the GPU recipes (``configs/*div2k*``,
``*cufed*``, ``robustness_choi2019``, ...) read DIV2K, the SR benchmark sets, CUFED and the torch-hub
VGG/AlexNet files. :func:`write_standins` writes a folder with the same layout and file names,
a few small images each, so a recipe can run end to end for a couple of steps with only its paths
changed (``tests/test_every_recipe.py``, ``scripts/gpu_check.sh``):

* ``DIV2K/``: ``DIV2K_train_HR/0001.png`` ... with ``DIV2K_train_LR_bicubic/X{2,3,4}/0001x4.png``
  and ``DIV2K_valid_HR/0801.png`` ... with ``DIV2K_valid_LR_bicubic/X*/0801x4.png`` (LR made by
  MATLAB bicubic, :func:`lit_sr.ops.imresize`, as DIV2K's were);
* ``benchmark/<Set5|Set14|BSD100|B100|Urban100>/HR/<official name>.png`` with
  ``LR_bicubic/X4/<name>x4.png`` (BasicSR's layout; Set5 complete, the others their first names);
* ``CUFED/train/{input,ref}/000000.png`` ... (160x160, a reference a shifted crop of its input)
  and ``CUFED/CUFED5/000_0.png`` ... ``000_5.png`` (HR image, references from most to least
  similar);
* ``hub/checkpoints/{vgg19-dcbb9e9d,vgg16-397923af,alexnet-owt-7be5be79}.pth``: torchvision
  state-dict files with the ``features.*`` keys these loaders read, **random** weights (seeded).
  Point ``TORCH_HOME`` at ``<root>`` (``torch.hub.get_dir()`` is then ``<root>/hub``). A
  perceptual figure computed with them measures nothing: they exist only so the code path runs.

Image content is cut from the scikit-image photographs (seeded crops), so the images have photo
statistics. The folder is written to a temporary sibling and renamed when complete: a stand-in is
there whole or not at all.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_sr.archs import arch_kwargs_with_scale, build_arch
from lit_sr.io import atomic_write, write_image
from lit_sr.ops import imresize
from lit_sr.validation import check_number

SET5 = ("baby", "bird", "butterfly", "head", "woman")
SET14 = ("baboon", "barbara")
BSD100 = ("3096", "8023")
URBAN100 = ("img_001", "img_002")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
# torchvision's VGG/AlexNet "features" convolutions: (index, out, in) per conv layer
_VGG_CFG = {"vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                      512, 512, 512, 512, "M"],
            "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]}
WEIGHT_FILES = {"vgg19": "vgg19-dcbb9e9d.pth", "vgg16": "vgg16-397923af.pth", "alexnet": "alexnet-owt-7be5be79.pth"}


@dataclass(frozen=True)
class Standins:
    """Paths of a written stand-in folder (see the module docstring)."""

    root: Path

    @property
    def div2k(self) -> Path:
        return self.root / "DIV2K"

    @property
    def benchmark(self) -> Path:
        return self.root / "benchmark"

    @property
    def cufed(self) -> Path:
        return self.root / "CUFED"

    @property
    def torch_home(self) -> Path:
        """The value for ``TORCH_HOME``: the weight files are under ``<torch_home>/hub/checkpoints``."""
        return self.root

    @property
    def checkpoints(self) -> Path:
        return self.root / "hub" / "checkpoints"


def _photos() -> list[torch.Tensor]:
    import skimage.data

    out = []
    for name in PHOTOS:
        arr = torch.as_tensor(getattr(skimage.data, name)())
        if arr.dim() == 2:
            arr = arr[..., None].expand(-1, -1, 3)
        out.append(arr[..., :3].permute(2, 0, 1).float() / 255.0)
    return out


def _crop(photos: list[torch.Tensor], g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """A seeded ``h x w`` crop of one photo (resized up first when the photo is smaller)."""
    p = photos[int(torch.randint(len(photos), (1,), generator=g))]
    if p.shape[1] < h or p.shape[2] < w:
        f = max(h / p.shape[1], w / p.shape[2])
        p = F.interpolate(p[None], scale_factor=f * 1.01, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    top = int(torch.randint(p.shape[1] - h + 1, (1,), generator=g))
    left = int(torch.randint(p.shape[2] - w + 1, (1,), generator=g))
    return p[:, top:top + h, left:left + w].contiguous()


def _pair(hr: torch.Tensor, hr_path: Path, lr_dirs: dict[int, Path], lr_name: str) -> None:
    write_image(hr, hr_path)
    for scale, folder in lr_dirs.items():
        write_image(imresize(hr[None], 1.0 / scale)[0].clamp(0, 1), folder / lr_name.format(stem=hr_path.stem, s=scale))


def _write_div2k(root: Path, photos, g, size: tuple[int, int], n_train: int, n_val: int, scales) -> None:
    for split, first, n in (("train", 1, n_train), ("valid", 801, n_val)):
        lr_dirs = {s: root / f"DIV2K_{split}_LR_bicubic" / f"X{s}" for s in scales}
        for i in range(first, first + n):
            _pair(_crop(photos, g, *size), root / f"DIV2K_{split}_HR" / f"{i:04d}.png", lr_dirs, "{stem}x{s}.png")


def _write_benchmarks(root: Path, photos, g, side: int) -> None:
    for name, stems in (("Set5", SET5), ("Set14", SET14), ("BSD100", BSD100), ("B100", BSD100),
                        ("Urban100", URBAN100)):
        for stem in stems:
            _pair(_crop(photos, g, side, side), root / name / "HR" / f"{stem}.png",
                  {4: root / name / "LR_bicubic" / "X4"}, "{stem}x{s}.png")


def _write_cufed(root: Path, photos, g, n_train: int, n_groups: int, size: tuple[int, int]) -> None:
    for i in range(n_train):
        big = _crop(photos, g, 176, 176)
        write_image(big[:, :160, :160], root / "train" / "input" / f"{i:06d}.png")
        write_image(big[:, 16:, 16:], root / "train" / "ref" / f"{i:06d}.png")  # overlapping: a similar reference
    for k in range(n_groups):
        hr = _crop(photos, g, *size)
        write_image(hr, root / "CUFED5" / f"{k:03d}_0.png")
        for level in range(1, 6):  # less and less similar: a shifted crop, then other photos
            ref = hr.roll(shifts=8 * level, dims=2) if level <= 2 else _crop(photos, g, *size)
            write_image(ref, root / "CUFED5" / f"{k:03d}_{level}.png")


def _conv_state(cfg: list, g: torch.Generator, in_ch: int = 3) -> dict[str, torch.Tensor]:
    state, index = {}, 0
    for v in cfg:
        if v == "M":
            index += 1
            continue
        k = 3
        state[f"features.{index}.weight"] = torch.randn(v, in_ch, k, k, generator=g) * (2.0 / (in_ch * k * k)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(v)
        in_ch, index = v, index + 2  # conv, relu
    return state


def _alexnet_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    layers = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    state = {}
    for index, (out, inp, k) in layers.items():
        state[f"features.{index}.weight"] = torch.randn(out, inp, k, k, generator=g) * (2.0 / (inp * k * k)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(out)
    return state


def _write_weights(folder: Path, g: torch.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    states = {"vgg19": _conv_state(_VGG_CFG["vgg19"], g), "vgg16": _conv_state(_VGG_CFG["vgg16"], g),
              "alexnet": _alexnet_state(g)}
    for name, state in states.items():
        torch.save(state, folder / WEIGHT_FILES[name])


def write_standins(
    root: str | os.PathLike,
    div2k_size: tuple[int, int] = (264, 264),
    div2k_train: int = 2,
    div2k_val: int = 1,
    benchmark_side: int = 96,
    cufed_train: int = 2,
    cufed5_groups: int = 1,
    cufed5_size: tuple[int, int] = (120, 160),
    scales: tuple[int, ...] = (2, 3, 4),
    weights: bool = True,
    seed: int = 0,
) -> Standins:
    """Write the stand-in folder at ``root`` (which must not exist yet) and return its paths.

    Args:
        root: the folder to create.
        div2k_size: ``(H, W)`` of the DIV2K stand-in HR images; at least the largest HR patch a
            recipe crops (256 for CARN's 64 px LR at x4), divisible by every scale.
        div2k_train, div2k_val: number of DIV2K training / validation images.
        benchmark_side: side of the Set5/Set14/BSD100/Urban100 stand-ins (divisible by 4).
        cufed_train: CUFED training pairs; cufed5_groups: CUFED5 groups of six images.
        cufed5_size: ``(H, W)`` of the CUFED5 images (divisible by 4; the real ones are about 500x300).
        scales: the LR scales written for DIV2K.
        weights: also write the random VGG16/VGG19/AlexNet files under ``hub/checkpoints``.
        seed: seed of the crops and the random weights.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"stand-in folder {root} exists already; remove it or choose another")
    h, w = div2k_size
    for s in scales:
        check_number(s, "scales[...]", 1, integer=True)
        if h % s or w % s:
            raise ValueError(f"div2k_size {div2k_size} must be divisible by every scale {scales}")
    if cufed5_size[0] % 4 or cufed5_size[1] % 4:
        raise ValueError(f"cufed5_size must be divisible by 4; got {cufed5_size}")
    if benchmark_side % 4:
        raise ValueError(f"benchmark_side must be divisible by 4; got {benchmark_side}")
    for name, n in (("div2k_train", div2k_train), ("div2k_val", div2k_val), ("cufed_train", cufed_train),
                    ("cufed5_groups", cufed5_groups)):
        check_number(n, name, 1, integer=True)
    g = torch.Generator().manual_seed(seed)
    photos = _photos()
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _write_div2k(tmp / "DIV2K", photos, g, (h, w), div2k_train, div2k_val, scales)
    _write_benchmarks(tmp / "benchmark", photos, g, benchmark_side)
    _write_cufed(tmp / "CUFED", photos, g, cufed_train, cufed5_groups, cufed5_size)
    if weights:
        _write_weights(tmp / "hub" / "checkpoints", g)
    tmp.rename(root)
    return Standins(root)


def write_random_weights(path: str | os.PathLike, arch: str, arch_kwargs: dict | None = None, scale: int = 4,
                         seed: int = 0) -> Path:
    """A BasicSR-style weights file (``{'params': state_dict}``) of a randomly initialised network:
    the stand-in of a trained model a recipe reads (a substitute, a clean reference, a model to
    attack). Written atomically; returns the path."""
    torch.manual_seed(seed)
    net = build_arch(arch, **arch_kwargs_with_scale(arch, dict(arch_kwargs or {}), scale))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save({"params": net.state_dict()}, tmp)
    return path
