"""Image-quality metrics with explicit SR conventions (BasicSR's published protocol).

* Inputs are ``[0, 1]`` float NCHW RGB tensors; both images are rounded to 8 bits first, as
  BasicSR does when it converts outputs to uint8 before measuring.
* ``crop_border`` pixels are removed from each side (the SR convention is ``crop_border = scale``).
* ``y_channel=True`` measures the BT.601 luma ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with
  R, G, B in [0, 1], kept unrounded on the [0, 255] scale (as BasicSR's ``to_y_channel``).
* SSIM: 11x11 Gaussian window, sigma 1.5, valid region only, C1 = (0.01*255)^2, C2 = (0.03*255)^2,
  averaged over channels.

All per-image functions return one value per image (shape ``(N,)``), computed in float64.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _check_pair(sr: torch.Tensor, hr: torch.Tensor) -> None:
    if sr.shape != hr.shape:
        raise ValueError(f"metric inputs differ in shape: sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}")
    if sr.dim() != 4:
        raise ValueError(f"metrics expect (N,C,H,W) tensors, got shape {tuple(sr.shape)}")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 8-bit grid, returned on the [0, 255] scale in float64."""
    return (x.detach().double().clamp(0, 1) * 255.0).round()


def rgb_to_y(x255: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``(N, 3, H, W)`` RGB on the [0, 255] scale, as ``(N, 1, H, W)`` on [16, 235]."""
    if x255.shape[1] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {x255.shape[1]}")
    w = torch.tensor(_Y_WEIGHTS, dtype=x255.dtype, device=x255.device).view(1, 3, 1, 1)
    return (x255 * w).sum(dim=1, keepdim=True) / 255.0 + 16.0


def _prepare(img: torch.Tensor, crop_border: int, y_channel: bool, rounding: bool = True) -> torch.Tensor:
    x = quantize(img) if rounding else img.detach().double() * 255.0
    if crop_border:
        h, w = x.shape[-2:]
        if 2 * crop_border >= min(h, w):
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y(x) if y_channel else x


def psnr(
    sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0, y_channel: bool = False, rounding: bool = True
) -> torch.Tensor:
    """Per-image PSNR in dB (``inf`` for identical images).

    Args:
        sr, hr: ``(N, C, H, W)`` tensors in [0, 1].
        crop_border: pixels removed from every side before measuring.
        y_channel: measure the BT.601 Y channel instead of RGB.
        rounding: round to 8 bits first (BasicSR). ``False`` measures the raw float values.
    """
    _check_pair(sr, hr)
    a = _prepare(sr, crop_border, y_channel, rounding)
    b = _prepare(hr, crop_border, y_channel, rounding)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)


def masked_psnr(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR over the pixels where ``mask`` (broadcastable to ``(N, 1, H, W)``) is 1."""
    _check_pair(sr, hr)
    a = _prepare(sr, 0, y_channel)
    b = _prepare(hr, 0, y_channel)
    m = mask.to(a.dtype).expand(a.shape[0], 1, *a.shape[-2:])
    count = m.flatten(1).sum(dim=1) * a.shape[1]
    if (count == 0).any():
        raise ValueError("masked_psnr got an empty mask for at least one image")
    mse = ((a - b).pow(2) * m).flatten(1).sum(dim=1) / count
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0, y_channel: bool = False, rounding: bool = True
) -> torch.Tensor:
    """The per-window SSIM map, ``(N, C, H' - 10, W' - 10)`` after cropping (valid region only).

    Args are as for :func:`psnr`. Window ``(i, j)`` is centred on pixel ``(i + 5, j + 5)`` of the
    cropped image. The image must be at least 11x11 after cropping.
    """
    _check_pair(sr, hr)
    a = _prepare(sr, crop_border, y_channel, rounding)
    b = _prepare(hr, crop_border, y_channel, rounding)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"ssim needs at least 11x11 pixels after cropping, got {tuple(a.shape[-2:])}")
    c = a.shape[1]
    g = _gaussian_1d(device=a.device)
    # The 2-D Gaussian window is separable: two 1-D passes cost 22 instead of 121 MACs per pixel.
    rows, cols = g.view(1, 1, 1, 11).expand(c, 1, 1, 11), g.view(1, 1, 11, 1).expand(c, 1, 11, 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, rows, groups=c), cols, groups=c)

    mu1, mu2 = filt(a), filt(b)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = filt(a * a) - mu1_sq
    sigma2_sq = filt(b * b) - mu2_sq
    sigma12 = filt(a * b) - mu12
    return ((2 * mu12 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))


def ssim(
    sr: torch.Tensor, hr: torch.Tensor, crop_border: int = 0, y_channel: bool = False, rounding: bool = True
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, BasicSR's ``calculate_ssim``), averaged over channels.

    Args are as for :func:`psnr`. The image must be at least 11x11 after cropping.
    """
    return ssim_map(sr, hr, crop_border, y_channel, rounding).flatten(2).mean(dim=2).mean(dim=1)


# --------------------------------------------------------------------------- LPIPS

LpipsNet = Literal["alex", "vgg", "squeeze"]
_LPIPS_BACKBONE_FILES: dict[LpipsNet, str] = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


class LPIPSWeightsMissing(FileNotFoundError):
    """Raised when LPIPS is asked for but its torchvision backbone weights are not on disk."""


def lpips_backbone_path(net: LpipsNet = "alex", backbone_path: str | os.PathLike | None = None) -> Path:
    """Where the LPIPS backbone weights are expected (an explicit path or the torch hub cache)."""
    if net not in _LPIPS_BACKBONE_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(_LPIPS_BACKBONE_FILES)}, got {net!r}")
    if backbone_path is not None:
        return Path(backbone_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / _LPIPS_BACKBONE_FILES[net]


def build_lpips(net: LpipsNet = "alex", backbone_path: str | os.PathLike | None = None) -> nn.Module:
    """Real LPIPS (Zhang et al. 2018) with the ``lpips`` package's calibrated linear layers.

    The backbone weights are read from ``backbone_path`` or the torch hub cache, never downloaded.
    When they are missing this raises :class:`LPIPSWeightsMissing` naming the file to provide,
    because an LPIPS on a random backbone measures nothing.

    The returned module maps two ``[0, 1]`` NCHW batches to a ``(N,)`` distance (it rescales to
    [-1, 1] internally), frozen and in eval mode.
    """
    path = lpips_backbone_path(net, backbone_path)
    if not path.is_file():
        raise LPIPSWeightsMissing(
            f"LPIPS({net}) needs the torchvision backbone weights at {path}, which do not exist. "
            f"Copy {_LPIPS_BACKBONE_FILES[net]} there (torch hub cache) or pass backbone_path=/path/to/it. "
            "lit-sr never downloads weights and never runs LPIPS on a random backbone."
        )
    import lpips  # heavy import, only when LPIPS is really requested

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    from lit_sr.io import load_checkpoint  # io is the leaf that reads weights safely (named errors)

    state = load_checkpoint(path)
    features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    backbone_state = {}
    for name, _ in model.net.named_parameters():
        _slice, index, kind = name.split(".")
        backbone_state[name] = features[f"{index}.{kind}"]
    model.net.load_state_dict(backbone_state, strict=True)
    return _LPIPSMetric(model)


class _LPIPSMetric(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # LPIPS stays in eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y, normalize=True).flatten()
