"""Figures of the robustness report and the attack callback: PSNR against eps, transfer heat maps,
the clean-vs-robust trade-off and the PSNR-vs-robustness-index scatter.

Every figure is a plain ``matplotlib.figure.Figure`` on the Agg canvas, built without pyplot, so
it is safe in headless and multi-threaded runs; matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lit_sr.io import atomic_write


def _agg_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def psnr_vs_eps_figure(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], title: str):
    """A matplotlib ``Figure`` with one subplot per panel and one line per series.

    Args:
        panels: panel title -> series name -> ``[(eps * 255, value), ...]``.
        title: the figure's title.

    The x axis is logarithmic (base 2) in 8-bit levels, as the eps grids of the paper double.
    Points whose value is ``None`` or not finite are left out.
    """
    fig = _agg_figure((5.2 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, series) in zip(axes, panels.items()):
        ticks = set()
        for name, points in series.items():
            points = sorted(p for p in points if p[1] is not None and math.isfinite(p[1]))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
                ticks.update(p[0] for p in points)
        ax.set_xscale("log", base=2)
        if ticks:
            ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
            ax.minorticks_off()
        ax.set_xlabel("eps (x 1/255)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(panel, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def transfer_figure(names: Sequence[str], matrix: Sequence[Sequence[float]], title: str,
                    sources: Sequence[str] | None = None, value_label: str = "SR PSNR vs clean output (dB)"):
    """Heat map of a source x target matrix, values written in.

    ``names`` are the targets (columns); ``sources`` the rows, ``names`` again by default (a square
    model x model matrix; lower PSNR = the attack transfers better). ``value_label`` names the colour bar.
    """
    sources = list(names if sources is None else sources)
    fig = _agg_figure((2.7 + 0.9 * len(names), 1.2 + 0.9 * len(sources)))
    ax = fig.subplots()
    values = torch.tensor(matrix, dtype=torch.float64).numpy()
    if values.shape != (len(sources), len(names)):
        raise ValueError(f"matrix of shape {values.shape} for {len(sources)} sources x {len(names)} targets")
    image = ax.imshow(values, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("target model")
    ax.set_ylabel("source model (attacked)")
    middle = (values.max() + values.min()) / 2
    for i in range(len(sources)):
        for j in range(len(names)):
            colour = "black" if values[i, j] > middle else "white"
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax, label=value_label)
    ax.set_title(title, fontsize=10)
    return fig


def grouped_bars_figure(groups: Sequence[str], series: Mapping[str, Sequence[tuple[float, float]]], ylabel: str,
                        title: str):
    """Bars per group (x axis), one bar per series side by side: ``series[name][i] = (value, error)``
    for ``groups[i]`` (the error drawn as a bar of +-error; 0 for none)."""
    fig = _agg_figure((1.8 + 1.4 * len(groups), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for k, (name, points) in enumerate(series.items()):
        if len(points) != len(groups):
            raise ValueError(f"series {name!r} has {len(points)} values for {len(groups)} groups")
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(groups))], [p[0] for p in points], width=width, label=name,
               yerr=[p[1] for p in points], capsize=3)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def tradeoff_figure(
    sweep: Sequence[tuple[float, float, str]],
    points: Mapping[str, tuple[float, float, str]],
    min_clean: float | None,
    min_robust: float | None,
    title: str,
):
    """Clean vs robust PSNR: the training-eps sweep as a labelled line, every model / defense as a point.

    Args:
        sweep: ``(clean, robust, label)`` of the fine-tuned models in order of training eps (joined).
        points: name -> ``(clean, robust, kind)``; the kind (``base``, ``fine-tuned``, ``defense``,
            ``bicubic``, ...) picks the marker.
        min_clean, min_robust: the goal's bounds (dashed lines; ``None``: not drawn); the region
            right of and above both is shaded.
        title: the figure's title.
    """
    fig = _agg_figure((6.4, 4.6))
    ax = fig.subplots()
    if sweep:
        ax.plot([p[0] for p in sweep], [p[1] for p in sweep], "-", color="tab:blue", alpha=0.5, zorder=1,
                label="training-eps sweep")
        for clean, robust, label in sweep:
            ax.annotate(f"train {label}", (clean, robust), textcoords="offset points", xytext=(4, 4), fontsize=7)
    markers = {"base": "s", "fine-tuned": "o", "defense": "^", "bicubic": "D"}
    for name, (clean, robust, kind) in points.items():
        if math.isfinite(clean) and math.isfinite(robust):
            ax.scatter([clean], [robust], marker=markers.get(kind, "P"), s=40, zorder=2, label=name)
    if min_clean is not None:
        ax.axvline(min_clean, linestyle="--", color="grey", linewidth=1)
    if min_robust is not None:
        ax.axhline(min_robust, linestyle="--", color="grey", linewidth=1)
    if min_clean is not None and min_robust is not None:
        x_hi, y_hi = ax.get_xlim()[1], ax.get_ylim()[1]
        ax.fill_between([min_clean, x_hi], min_robust, y_hi, color="tab:green", alpha=0.08, label="goal")
        ax.set_xlim(right=x_hi)
        ax.set_ylim(top=y_hi)
    ax.set_xlabel("clean PSNR-Y vs HR (dB)")
    ax.set_ylabel("worst-case SR PSNR-Y under attack (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)
    return fig


def index_scatter_figure(points: Mapping[str, Sequence[tuple[float, float]]], title: str):
    """Choi et al.'s Fig. 10: SR PSNR under attack against the robustness index, one point per image,
    one colour per model (``points``: model -> ``[(index, psnr), ...]``)."""
    fig = _agg_figure((5.6, 4.2))
    ax = fig.subplots()
    for name, values in points.items():
        values = [v for v in values if math.isfinite(v[0]) and math.isfinite(v[1])]
        if values:
            ax.scatter([v[0] for v in values], [v[1] for v in values], s=18, alpha=0.8, label=name)
    ax.set_xlabel("robustness index (max L1 norm of the input gradient; lower = more robust)")
    ax.set_ylabel("SR PSNR under attack (dB)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def figure_to_tensor(fig) -> torch.Tensor:
    """Render a figure to a ``(3, H, W)`` float tensor in [0, 1] (for TensorBoard's ``add_image``)."""
    import numpy as np

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
