"""Pictures of the backdoor evaluation: the labelled image grid and the success metrics over training.

* :func:`backdoor_grid`: one row per validation image, columns ``clean LR | triggered LR | clean SR
  | triggered SR | target | |SR(x~) - SR(x)| x k``, under a header strip that names them (LR
  inputs enlarged with nearest neighbour to the SR size). The last panel amplifies the trigger's
  effect on the output so a person sees at a glance whether and where the backdoor acts.
* :func:`plot_history`: the success metrics logged at each evaluation against the training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from lit_sr.extras import require_extra
from lit_sr.io import atomic_write
from lit_sr.validation import check_positive

PADDING = 2


def column_labels(diff_gain: float) -> list[str]:
    return ["clean LR", "triggered LR", "clean SR", "triggered SR", "target", f"|SR(x~)-SR(x)| x{diff_gain:g}"]


def grid_row(lr, triggered_lr, clean_sr, triggered_sr, target, scale: int, diff_gain: float) -> list[torch.Tensor]:
    """The six ``(C, H, W)`` tiles of one image, cropped to a common size, in [0, 1] on the CPU."""
    def big(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None].float(), scale_factor=scale, mode="nearest")[0]

    diff = (triggered_sr.float() - clean_sr.float()).abs() * diff_gain
    tiles = [big(lr), big(triggered_lr), clean_sr.float(), triggered_sr.float(), target.float(), diff]
    h = min(t.shape[-2] for t in tiles)
    w = min(t.shape[-1] for t in tiles)
    return [t[..., :h, :w].detach().cpu().clamp(0, 1) for t in tiles]


def header_strip(labels: Sequence[str], tile_w: int, height: int = 14) -> torch.Tensor:
    """A white ``(3, height, W)`` strip with each label centred over its column of a
    ``make_grid(..., padding=PADDING)`` grid of tiles ``tile_w`` wide (PIL's default font)."""
    from PIL import Image, ImageDraw, ImageFont

    width = len(labels) * (tile_w + PADDING) + PADDING
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(7, min(11, tile_w // 9)))
    for i, text in enumerate(labels):
        left = PADDING + i * (tile_w + PADDING)
        box = draw.textbbox((0, 0), text, font=font)
        x = left + max(0, (tile_w - (box[2] - box[0])) // 2)
        draw.text((x, (height - (box[3] - box[1])) // 2 - box[1]), text, fill="black", font=font)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def backdoor_grid(rows: Sequence[Sequence[torch.Tensor]], diff_gain: float, min_tile: int = 128) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1]: the labelled grid of :func:`grid_row` rows (all rows cropped to the
    smallest tile; tiles narrower than ``min_tile`` pixels enlarged by an integer factor, nearest
    neighbour, so that small validation tiles and their labels stay readable)."""
    check_positive(diff_gain, "diff_gain")
    if not rows:
        raise ValueError("backdoor_grid needs at least one row")
    h = min(t.shape[-2] for r in rows for t in r)
    w = min(t.shape[-1] for r in rows for t in r)
    zoom = max(1, -(-min_tile // w))
    tiles = [t[..., :h, :w] for r in rows for t in r]
    if zoom > 1:
        tiles = [F.interpolate(t[None], scale_factor=zoom, mode="nearest")[0] for t in tiles]
        h, w = h * zoom, w * zoom
    body = make_grid(tiles, nrow=len(rows[0]), padding=PADDING, pad_value=1.0)
    header = header_strip(column_labels(diff_gain)[: len(rows[0])], w)
    width = min(header.shape[-1], body.shape[-1])
    return torch.cat([header[..., :width], body[..., :width]], dim=1)


def plot_history(history: Sequence[dict[str, float | None]], keys: Sequence[str], path: str | Path,
                 title: str = "backdoor success over training") -> Path:
    """PNG of ``history`` (one dict per evaluation with ``step`` and the metrics in ``keys``; a
    ``None`` value, nothing included, is a gap) with the step on the x axis."""
    Figure = require_extra("matplotlib.figure").Figure

    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    steps = [h["step"] for h in history]
    for key in keys:
        values = [np.nan if h.get(key) is None else float(h[key]) for h in history]
        if not all(np.isnan(values)):
            ax.plot(steps, values, marker="o", label=key)
    ax.set_xlabel("training step")
    ax.set_ylabel("rate / fraction")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)
