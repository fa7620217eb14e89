"""LIIF (Chen, Liu and Wang, "Learning Continuous Image Representation with Local Implicit Image
Function", CVPR 2021): an encoder and a local implicit function, super-resolution at any scale.

A port of the authors' ``yinboc/liif`` (``models/liif.py``, ``models/edsr.py``, ``models/mlp.py``,
``utils.make_coord``) with their module and parameter names, so their state_dicts load strictly:

* ``encoder.*``: EDSR-baseline without its upsampler (``no_upsampling=True``): ``encoder.head.0``,
  ``encoder.body.{i}.body.{0,2}`` (residual blocks), ``encoder.body.{n_resblocks}`` (the body's
  last conv), and the MeanShift convs ``encoder.sub_mean`` / ``encoder.add_mean``, which the
  authors' encoder keeps (frozen, ``requires_grad=False``) but never applies: they are kept here
  too, unused, so the files load.
* ``imnet.layers.*``: the MLP (``nn.Linear`` and ``nn.ReLU`` alternating, hidden widths
  ``hidden_list``).

How a pixel is decoded (the authors' ``query_rgb``): coordinates live in [-1, 1]^2 in (y, x) order
and a pixel of an H x W image is its centre, ``-1 + (2 i + 1) / H``; the cell of a query is the
size of an output pixel, ``(2 / H_out, 2 / W_out)``. For a query ``x_q``, the latent code is the
(optionally 3 x 3 unfolded, ``feat_unfold``) feature of the nearest LR pixel, ``z*``, and the MLP
gets ``[z*, (x_q - v*) * (h, w), cell * (h, w)]`` (the relative coordinate and, with
``cell_decode``, the cell, both in LR pixels). With ``local_ensemble``, the four LR pixels around
the query (shifted by half an LR pixel in each direction, plus 1e-6, clamped inside the image) are
decoded and averaged with the area of the rectangle between the query and the diagonally opposite
pixel as weight (bilinear-like).

lit-sr's conventions around the authors' model: images are [0, 1] in and out; the authors
normalise the input to [-1, 1] (``data_norm`` ``sub 0.5, div 0.5``) and map the output back, which
happens inside :class:`LIIF` here. The output is not clamped (the modules clamp for evaluation).
``forward(lr)`` returns the whole image at ``upscale`` (so LIIF is an ordinary SR network for the
modules, the attacks and the poisoning), ``forward(lr, scale=s)`` or ``forward(lr, size=(H, W))``
at any other scale, ``query(lr, coord, cell)`` at given coordinates (the authors' call).

Their checkpoints (``epoch-last.pth`` of ``train_liif.py``) hold ``{'model': {'name': 'liif',
'args': {...}, 'sd': state_dict}, 'optimizer': ..., 'epoch': ...}``: :func:`read_liif_checkpoint`
reads one (``weights_only=True``), checks that it is LIIF on an EDSR-baseline encoder with an MLP,
and returns :class:`LIIF`'s constructor arguments with the state_dict; :func:`load_liif_checkpoint`
builds the network and loads it strictly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # the authors' MeanShift default (unused by the encoder)
_ENSEMBLE_SHIFT = 1e-6  # the authors' eps_shift: keeps queries off the exact pixel boundaries
_AREA_EPS = 1e-9


def make_coord(shape: Sequence[int], flatten: bool = True, device: torch.device | None = None) -> torch.Tensor:
    """Pixel-centre coordinates of a grid in [-1, 1]: ``(H*W, 2)`` or ``(H, W, 2)``, (y, x) order.

    The authors' ``utils.make_coord`` without ``ranges``: pixel ``i`` of ``n`` is at ``-1 + (2i + 1) / n``.
    """
    seqs = [-1 + (2 * torch.arange(n, device=device, dtype=torch.float32) + 1) / n for n in shape]
    coord = torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1)
    return coord.view(-1, coord.shape[-1]) if flatten else coord


def make_cell(shape: Sequence[int], count: int, device: torch.device | None = None) -> torch.Tensor:
    """The cell of every query of an ``H x W`` output: ``(count, 2)`` filled with ``(2 / H, 2 / W)``."""
    return torch.tensor([2 / shape[0], 2 / shape[1]], device=device).expand(count, 2).clone()


class _MeanShift(nn.Conv2d):
    """The authors' EDSR ``MeanShift``: a frozen 1x1 conv (kept for their state_dict; LIIF never applies it)."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__(3, 3, kernel_size=1)
        std = torch.ones(3)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(_DIV2K_MEAN) / std
        for p in self.parameters():
            p.requires_grad = False


class _ResBlock(nn.Module):
    """EDSR residual block with the authors' names (``body.0`` conv, ``body.1`` ReLU, ``body.2`` conv)."""

    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(True),
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class EDSRBaselineEncoder(nn.Module):
    """The authors' ``edsr-baseline`` with ``no_upsampling=True``: features at the LR resolution.

    Args:
        n_resblocks: residual blocks (16).
        n_feats: feature channels (64); also the encoder's ``out_dim``.
        res_scale: residual scaling (1).
        rgb_range: the value range the unused MeanShift convs were built for (1).
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0, rgb_range: float = 1.0):
        super().__init__()
        self.sub_mean = _MeanShift(rgb_range, sign=-1)
        self.add_mean = _MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(*[_ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x


class MLP(nn.Module):
    """The authors' ``mlp``: ``Linear``/``ReLU`` pairs of widths ``hidden_list``, then a ``Linear`` to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_list: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for hidden in hidden_list:
            layers += [nn.Linear(last, hidden), nn.ReLU()]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _check_scale(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class LIIF(nn.Module):
    """LIIF with an EDSR-baseline encoder: ``net(lr)`` at ``upscale``, ``net(lr, scale=s)`` at any scale.

    Args:
        n_resblocks: encoder residual blocks (16: EDSR-baseline).
        n_feats: encoder feature channels (64).
        res_scale: encoder residual scaling (1).
        rgb_range: the range the encoder's (unused) MeanShift convs were built for (1); only their
            stored values depend on it.
        hidden_list: widths of the MLP's hidden layers ((256, 256, 256, 256)).
        out_dim: output channels of the MLP (3).
        local_ensemble: decode the four nearest latent codes and blend them by area (True).
        feat_unfold: give the MLP the 3x3 neighbourhood of the latent code (9 x n_feats) (True).
        cell_decode: give the MLP the query's cell size (True).
        upscale: output scale of ``forward(lr)`` without ``scale``/``size`` (4), any positive number;
            the output is ``round(h * upscale) x round(w * upscale)``.
        query_chunk: queries decoded per MLP call (the authors' ``eval_bsize``); bounds the memory
            of whole-image outputs (the MLP input of 2^16 queries is 150 MB at the defaults).
            ``None``: all at once.

    Parameter count at the defaults: 1,567,323 (encoder 1,220,440, of which the 24 frozen MeanShift
    values; MLP 346,883): the authors' EDSR-baseline-LIIF.
    """

    def __init__(
        self,
        n_resblocks: int = 16,
        n_feats: int = 64,
        res_scale: float = 1.0,
        rgb_range: float = 1.0,
        hidden_list: Sequence[int] = (256, 256, 256, 256),
        out_dim: int = 3,
        local_ensemble: bool = True,
        feat_unfold: bool = True,
        cell_decode: bool = True,
        upscale: float = 4,
        query_chunk: int | None = 65536,
    ):
        super().__init__()
        for name, value in (("n_resblocks", n_resblocks), ("n_feats", n_feats), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "n_resblocks" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        hidden = list(hidden_list)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden_list must be positive integers, got {hidden_list!r}")
        if query_chunk is not None and (isinstance(query_chunk, bool) or not isinstance(query_chunk, int)
                                        or query_chunk < 1):
            raise ValueError(f"query_chunk must be a positive integer or None, got {query_chunk!r}")
        self.upscale = _check_scale(upscale, "upscale")
        self.local_ensemble, self.feat_unfold, self.cell_decode = local_ensemble, feat_unfold, cell_decode
        self.query_chunk = query_chunk
        self.encoder = EDSRBaselineEncoder(n_resblocks, n_feats, res_scale, rgb_range)
        in_dim = n_feats * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.imnet = MLP(in_dim, out_dim, hidden)

    # ------------------------------------------------------------------ the authors' two steps
    def gen_feat(self, lr: torch.Tensor) -> torch.Tensor:
        """Latent codes of a [0, 1] batch: the encoder on the [-1, 1] input, (N, n_feats, h, w)."""
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"LIIF expects (N, 3, h, w) images, got shape {tuple(lr.shape)}")
        return self.encoder((lr - 0.5) / 0.5)

    def query_rgb(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``coord`` (N, Q, 2) (y, x in [-1, 1]) with cells ``cell`` (N, Q, 2): (N, Q, out_dim) in [-1, 1].

        In chunks of ``query_chunk`` queries; see the module docstring for the decoding.
        """
        if coord.dim() != 3 or coord.shape[-1] != 2 or coord.shape[0] != feat.shape[0]:
            raise ValueError(f"coord must be (N, Q, 2) with N = {feat.shape[0]}, got {tuple(coord.shape)}")
        if self.cell_decode and (cell is None or cell.shape != coord.shape):
            raise ValueError(f"cell_decode needs cell of coord's shape {tuple(coord.shape)}, got "
                             f"{None if cell is None else tuple(cell.shape)}")
        if self.feat_unfold:
            n, c, h, w = feat.shape
            feat = F.unfold(feat, 3, padding=1).view(n, c * 9, h, w)
        chunk = self.query_chunk or coord.shape[1]
        outs = [self._query(feat, coord[:, i : i + chunk], None if cell is None else cell[:, i : i + chunk])
                for i in range(0, coord.shape[1], chunk)]
        return torch.cat(outs, dim=1)

    def _query(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = feat.shape
        coord = coord.float()  # coordinates stay float32 under bf16 (a bf16 coordinate picks the wrong pixel)
        lr_size = coord.new_tensor([h, w])
        if self.local_ensemble:
            shifts, eps = [(-1, -1), (-1, 1), (1, -1), (1, 1)], _ENSEMBLE_SHIFT
        else:
            shifts, eps = [(0, 0)], 0.0
        flat = feat.flatten(2)
        preds, areas = [], []
        for vy, vx in shifts:
            shifted = coord + coord.new_tensor([vy, vx]) / lr_size + eps  # half an LR pixel per axis
            shifted = shifted.clamp(-1 + 1e-6, 1 - 1e-6)
            # the nearest LR pixel, as grid_sample(mode="nearest", align_corners=False) picks it (the
            # authors' call): source index ((c + 1) * size - 1) / 2, rounded half to even
            index = torch.round(((shifted + 1) * lr_size - 1) / 2).long()
            index = torch.minimum(index.clamp_min(0), (lr_size - 1).long())
            q_feat = flat.gather(2, (index[..., 0] * w + index[..., 1]).unsqueeze(1).expand(n, c, -1)).transpose(1, 2)
            q_coord = -1 + (2 * index.float() + 1) / lr_size  # the centre of that pixel
            rel_coord = (coord - q_coord) * lr_size
            inp = [q_feat, rel_coord.to(q_feat.dtype)]
            if self.cell_decode:
                inp.append((cell.float() * lr_size).to(q_feat.dtype))
            preds.append(self.imnet(torch.cat(inp, dim=-1)))
            areas.append((rel_coord[..., 0] * rel_coord[..., 1]).abs() + _AREA_EPS)
        if not self.local_ensemble:
            return preds[0]
        total = torch.stack(areas).sum(dim=0)
        # each prediction is weighted by the area of the rectangle to the diagonally opposite code
        out = 0
        for pred, area in zip(preds, reversed(areas)):
            out = out + pred * (area / total).unsqueeze(-1).to(pred.dtype)
        return out

    # ------------------------------------------------------------------ lit-sr's calls
    def query(self, lr: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        """The authors' ``forward(inp, coord, cell)`` on a [0, 1] batch: (N, Q, 3) values in [0, 1]."""
        return self.query_rgb(self.gen_feat(lr), coord, cell) * 0.5 + 0.5

    def output_size(self, lr_hw: Sequence[int], scale: float | None = None) -> tuple[int, int]:
        """``(round(h * s), round(w * s))`` for ``scale`` (default ``upscale``)."""
        s = self.upscale if scale is None else _check_scale(scale, "scale")
        return max(1, round(lr_hw[0] * s)), max(1, round(lr_hw[1] * s))

    def forward(self, lr: torch.Tensor, scale: float | None = None, size: Sequence[int] | None = None) -> torch.Tensor:
        """Whole images: (N, 3, h, w) in [0, 1] -> (N, 3, H, W), ``size`` or ``output_size(scale)``."""
        if scale is not None and size is not None:
            raise ValueError("give scale or size, not both")
        out_h, out_w = (int(size[0]), int(size[1])) if size is not None else self.output_size(lr.shape[-2:], scale)
        n = lr.shape[0]
        coord = make_coord((out_h, out_w), device=lr.device).unsqueeze(0).expand(n, -1, -1)
        cell = make_cell((out_h, out_w), out_h * out_w, device=lr.device).unsqueeze(0).expand(n, -1, -1)
        rgb = self.query(lr, coord, cell)
        return rgb.transpose(1, 2).reshape(n, -1, out_h, out_w)

    def check_args(self, kwargs: Mapping[str, Any], source: str) -> None:
        """Raise a ``ValueError`` if ``kwargs`` (e.g. a checkpoint's) set a decoding switch otherwise than this network.

        The switches change how the same weights decode (``local_ensemble`` not even a shape), so
        a file trained with other ones must not be loaded silently.
        """
        differ = {k: kwargs[k] for k in sorted(_LIIF_ARGS) if k in kwargs and bool(kwargs[k]) != getattr(self, k)}
        if differ:
            raise ValueError(f"{source} was trained with {differ}; build LIIF with the same arguments")

    def at_scale(self, scale: float) -> LIIFAtScale:
        """This network (shared weights) as a fixed-scale SR module: ``lr -> net(lr, scale=scale)``."""
        return LIIFAtScale(self, scale)


class LIIFAtScale(nn.Module):
    """A :class:`LIIF` fixed to one output scale, for code that calls ``model(lr)`` (attacks, poisoning).

    Args:
        net: the LIIF network (its parameters are shared, not copied).
        scale: output scale (any positive number; output ``round(h * scale) x round(w * scale)``).
    """

    def __init__(self, net: LIIF, scale: float):
        super().__init__()
        self.net = net
        self.upscale = _check_scale(scale, "scale")

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr, scale=self.upscale)


# ---------------------------------------------------------------------- the authors' checkpoint files
_LIIF_ARGS = {"local_ensemble", "feat_unfold", "cell_decode"}
_ENCODER_ARGS = {"n_resblocks": "n_resblocks", "n_feats": "n_feats", "res_scale": "res_scale",
                 "rgb_range": "rgb_range"}


def liif_kwargs_from_spec(spec: Mapping[str, Any], source: str = "the model spec") -> dict[str, Any]:
    """:class:`LIIF` constructor arguments from the authors' model spec ``{'name': 'liif', 'args': {...}}``.

    Accepts what their configs write: ``encoder_spec`` ``edsr-baseline`` (or ``edsr`` with its
    arguments given) with ``no_upsampling: true``, ``imnet_spec`` ``mlp`` (``out_dim``,
    ``hidden_list``), and the three switches. Anything else raises a ``ValueError`` naming it.
    """
    if spec.get("name") != "liif":
        raise ValueError(f"{source}: model name {spec.get('name')!r}, expected 'liif'")
    args = dict(spec.get("args") or {})
    encoder = dict(args.pop("encoder_spec", None) or {})
    imnet = args.pop("imnet_spec", None)
    unknown = sorted(set(args) - _LIIF_ARGS)
    if unknown:
        raise ValueError(f"{source}: unknown liif args {unknown}; lit-sr's LIIF takes {sorted(_LIIF_ARGS)}")
    kwargs: dict[str, Any] = {k: bool(v) for k, v in args.items()}
    if encoder.get("name") not in ("edsr-baseline", "edsr"):
        raise ValueError(f"{source}: encoder {encoder.get('name')!r}; lit-sr's LIIF has the EDSR encoder only "
                         "('edsr-baseline')")
    enc_args = dict(encoder.get("args") or {})
    if not enc_args.pop("no_upsampling", False):
        raise ValueError(f"{source}: the encoder must have no_upsampling: true (LIIF decodes LR-resolution features)")
    enc_args.pop("scale", None)  # the upsampler's scale: unused without an upsampler
    if encoder["name"] == "edsr":  # the authors' 'edsr' defaults differ from 'edsr-baseline'
        enc_args = {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1, **enc_args}
    unknown = sorted(set(enc_args) - set(_ENCODER_ARGS))
    if unknown:
        raise ValueError(f"{source}: unknown encoder args {unknown}; expected {sorted(_ENCODER_ARGS)}")
    kwargs.update({_ENCODER_ARGS[k]: v for k, v in enc_args.items()})
    if imnet is None:
        raise ValueError(f"{source}: no imnet_spec; the feature-only LIIF (nearest latent code) is not supported")
    if imnet.get("name") != "mlp":
        raise ValueError(f"{source}: imnet {imnet.get('name')!r}, expected 'mlp'")
    mlp_args = dict(imnet.get("args") or {})
    mlp_args.pop("in_dim", None)  # derived from the encoder and the switches
    unknown = sorted(set(mlp_args) - {"out_dim", "hidden_list"})
    if unknown:
        raise ValueError(f"{source}: unknown mlp args {unknown}")
    kwargs.update(mlp_args)
    if "hidden_list" in kwargs:
        kwargs["hidden_list"] = list(kwargs["hidden_list"])
    return kwargs


def read_liif_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(LIIF kwargs, state_dict)`` from the authors' ``{'model': {'name', 'args', 'sd'}}`` file.

    Read with ``torch.load(weights_only=True)``: their files hold only dicts, lists, numbers,
    strings and tensors (the optimiser's state included), so nothing is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LIIF checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(model, Mapping) or not {"name", "args", "sd"} <= set(model):
        shown = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: expected the authors' layout {{'model': {{'name', 'args', 'sd'}}}}, got {shown}")
    kwargs = liif_kwargs_from_spec(model, source=str(path))
    state = model["sd"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: model['sd'] is not a flat dict of tensors")
    return kwargs, {k.removeprefix("module."): v for k, v in state.items()}


def is_liif_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds the authors' ``{'model': {'name': 'liif', 'args', 'sd'}}`` layout."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    model = obj.get("model") if isinstance(obj, Mapping) else None
    return isinstance(model, Mapping) and model.get("name") == "liif" and {"args", "sd"} <= set(model)


def load_liif_checkpoint(path: str | os.PathLike, **overrides: Any) -> LIIF:
    """Build :class:`LIIF` from the authors' checkpoint and load its weights strictly.

    ``overrides`` set arguments the file does not fix (``upscale``, ``query_chunk``); an override of
    an architecture argument the file holds raises a ``ValueError``.
    """
    kwargs, state = read_liif_checkpoint(path)
    clash = sorted(k for k in overrides if k in kwargs and overrides[k] != kwargs[k])
    if clash:
        raise ValueError(f"{path}: {clash} are fixed by the checkpoint ({ {k: kwargs[k] for k in clash} })")
    net = LIIF(**{**kwargs, **overrides})
    net.load_state_dict(state, strict=True)
    return net
