"""MASA-SR (Lu et al., "MASA-SR: Matching Acceleration and Spatial Adaptation for Reference-Based
Image Super-Resolution", CVPR 2021), x4, called as ``net(lr, ref)`` with both in [0, 1].

The network, with the module and parameter names of the authors' ``dvlab-research/MASA-SR`` code
(``enc.conv_L1``, ``enc.blk_L1.0.conv1``, ``decoder.pAda.conv_gamma``, ``decoder.dram_x2.conv_up_a``,
...), so their state_dicts map one to one:

* **Encoder** (shared by LR, Ref and Ref-down): three levels (x1, /2, /4), a conv and residual
  blocks each.
* **Match & Extraction Module** (:class:`MatchExtract`, no parameters): the LR features are cut
  into ``lr_block_size`` x ``lr_block_size`` blocks. *Coarse*: the block's central 3x3 patch,
  taken at dilations 1, 2, 3, is compared by cosine similarity with every position of the Ref-down
  features (summed over the dilations); the best position centres the block's search region in
  the reference, of side ``2 * int((Wr // (2 * blocks_x)) * ref_down_block_size) + 1`` (+2 for the
  patch border). *Fine*: every 3x3 patch of the block is matched against the 3x3 patches of that
  region only. The indices (argmax) are piecewise constant, found without gradient; the relevance
  of the chosen patch (the soft attention) is recomputed differentiably and the reference features
  are gathered at x1, x2 and x4 (3x3, 6x6, 12x12 patches folded per block and averaged over the
  overlaps, times the soft attention), so the output is differentiable with respect to ``ref``
  (through the gathered features, the soft attention and Ref-down).
* **Spatial Adaptation Module** (:class:`SAM`): the gathered reference features are instance
  normalised and re-mapped to the LR features' distribution, ``norm(ref) * (gamma + std(lr)) +
  (beta + mean(lr))``, ``gamma``/``beta`` learned per pixel from the concatenated LR and reference
  features (zero-initialised, so it starts as plain statistics transfer).
* **Dual Residual Aggregation Module** (:class:`DRAM`): at x2 and x4, two residual branches (the
  reference brought down to the LR scale minus the LR, and the LR minus it, each brought back up by
  a transposed conv) merged by a conv.
* **Decoder**: LR features from /4 back to x1, then x1 (merge with the adapted reference), x2 and
  x4 (DRAM) with residual blocks, a conv to RGB, plus the bicubic-upsampled LR (global residual).

Differences from the authors' code, all deliberate: Ref-down is made inside the network (MATLAB
bicubic on float, :func:`lit_sr.ops.imresize`) so an attack on ``ref`` goes through it (the authors'
data loader uses PIL bicubic on uint8: measured on 160 px photo crops, /4 differs by at most 0.016
inside and 0.071 at the 2-px border, on the [0, 1] scale; see :class:`lit_sr.archs.ttsr_arch.TTSR`
and ``benchmarks/resize_pil_vs_matlab.py``); inputs of any size are padded (see
:class:`MASA`); the search runs in float32 under bf16 autocast (a bf16 argmax would tie often);
the x4 residual blocks and output conv use ``n_feats`` (the authors hard-code 64, equal at the
default); the output is not clamped (the modules clamp for evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from lit_sr.archs.ttsr_arch import pad_to_multiple
from lit_sr.ops import imresize

_PATCH = 3  # the fine matching's patch side (the authors' psize)
_REF_DOWN_FACTOR = 4  # Ref-down = Ref / 4: the LR scale
_NORM_EPS = 1e-12  # F.normalize's


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _int_tuple(value, name: str, length: int, minimum: int) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if values is None or len(values) != length or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values
    ):
        raise ValueError(f"{name} must be {length} integers >= {minimum}, got {value!r}")
    return values


class ResidualBlock(nn.Module):
    """conv3x3-ReLU-conv3x3 with an identity skip (the authors' ``ResidualBlock``)."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def _blocks(count: int, nf: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(nf) for _ in range(count)])


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """Three-level feature encoder: x1, /2, /4 (stride-2 convs), ``n_blks`` residual blocks each."""

    def __init__(self, nf: int, n_blks: tuple[int, int, int]):
        super().__init__()
        self.conv_L1 = nn.Conv2d(3, nf, 3, 1, 1)
        self.blk_L1 = _blocks(n_blks[0], nf)
        self.conv_L2 = nn.Conv2d(nf, nf, 3, 2, 1)
        self.blk_L2 = _blocks(n_blks[1], nf)
        self.conv_L3 = nn.Conv2d(nf, nf, 3, 2, 1)
        self.blk_L3 = _blocks(n_blks[2], nf)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        fea_l1 = self.blk_L1(self.act(self.conv_L1(x)))
        fea_l2 = self.blk_L2(self.act(self.conv_L2(fea_l1)))
        fea_l3 = self.blk_L3(self.act(self.conv_L3(fea_l2)))
        return [fea_l1, fea_l2, fea_l3]


class SAM(nn.Module):
    """Spatial Adaptation Module: re-map the reference features' distribution to the LR's.

    ``out = instance_norm(ref) * (gamma + std(lr)) + (beta + mean(lr))``, with the per-channel
    spatial mean/std of ``lr`` and ``gamma``, ``beta`` predicted per pixel from ``cat(lr, ref)``.
    The gamma/beta convs start at zero (the authors' init): at first it only transfers statistics.
    """

    def __init__(self, nf: int):
        super().__init__()
        self.norm_layer = nn.InstanceNorm2d(nf, affine=False)
        self.conv_shared = nn.Sequential(nn.Conv2d(nf * 2, nf, 3, 1, 1), nn.ReLU(inplace=True))
        self.conv_gamma = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_beta = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        style = self.conv_shared(torch.cat([lr, ref], dim=1))
        flat = lr.flatten(2)
        lr_mean = flat.mean(dim=-1)[..., None, None]
        lr_std = flat.std(dim=-1)[..., None, None]  # unbiased, as the authors' torch.std
        gamma = self.conv_gamma(style) + lr_std
        beta = self.conv_beta(style) + lr_mean
        return self.norm_layer(ref) * gamma + beta


class DRAM(nn.Module):
    """Dual Residual Aggregation Module: fuse LR features (scale s) with adapted reference features (2s).

    Branch a: ``up(relu(down(ref)) - lr) + ref``; branch b: ``up(lr - relu(down(ref)) + lr)``;
    merged by a conv. ``down`` are stride-2 convs, ``up`` stride-2 transposed convs.
    """

    def __init__(self, nf: int):
        super().__init__()
        self.conv_down_a = nn.Conv2d(nf, nf, 3, 2, 1)
        self.conv_up_a = nn.ConvTranspose2d(nf, nf, 3, 2, 1, 1)
        self.conv_down_b = nn.Conv2d(nf, nf, 3, 2, 1)
        self.conv_up_b = nn.ConvTranspose2d(nf, nf, 3, 2, 1, 1)
        self.conv_cat = nn.Conv2d(nf * 2, nf, 3, 1, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        out_a = self.act(self.conv_up_a(self.act(self.conv_down_a(ref)) - lr)) + ref
        out_b = self.act(self.conv_up_b(lr - self.act(self.conv_down_b(ref)) + lr))
        return self.act(self.conv_cat(torch.cat([out_a, out_b], dim=1)))


class Decoder(nn.Module):
    """LR features /4 -> x1, then x1 (merge), x2 and x4 (DRAM) with the adapted reference; one shared SAM."""

    def __init__(self, nf: int, n_blks: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.conv_L3 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.blk_L3 = _blocks(n_blks[0], nf)
        self.conv_L2 = nn.Conv2d(nf * 2, nf, 3, 1, 1)
        self.blk_L2 = _blocks(n_blks[1], nf)
        self.conv_L1 = nn.Conv2d(nf * 2, nf, 3, 1, 1)
        self.blk_L1 = _blocks(n_blks[2], nf)
        self.merge_warp_x1 = nn.Conv2d(nf * 2, nf, 3, 1, 1)
        self.blk_x1 = _blocks(n_blks[3], nf)
        self.dram_x2 = DRAM(nf)
        self.blk_x2 = _blocks(n_blks[4], nf)
        self.dram_x4 = DRAM(nf)
        self.blk_x4 = _blocks(n_blks[5], nf)
        self.conv_out = nn.Conv2d(nf, 3, 3, 1, 1)
        self.act = nn.ReLU(inplace=True)
        self.pAda = SAM(nf)  # one SAM for the three scales, as the authors' code

    def forward(self, lr_l: list[torch.Tensor], warp_x1: torch.Tensor, warp_x2: torch.Tensor,
                warp_x4: torch.Tensor) -> torch.Tensor:
        fea = self.blk_L3(self.act(self.conv_L3(lr_l[2])))
        fea = self.blk_L2(self.act(self.conv_L2(torch.cat([_up2(fea), lr_l[1]], dim=1))))
        fea_l1 = self.blk_L1(self.act(self.conv_L1(torch.cat([_up2(fea), lr_l[0]], dim=1))))
        ref_x1 = self.pAda(fea_l1, warp_x1)
        fea_x1 = self.blk_x1(self.act(self.merge_warp_x1(torch.cat([ref_x1, fea_l1], dim=1))))
        ref_x2 = self.pAda(_up2(fea_x1), warp_x2)
        fea_x2 = self.blk_x2(self.dram_x2(fea_x1, ref_x2))
        ref_x4 = self.pAda(_up2(fea_x2), warp_x4)
        fea_x4 = self.blk_x4(self.dram_x4(fea_x2, ref_x4))
        return self.conv_out(fea_x4)


class Match(NamedTuple):
    """Where every LR block and LR position found its reference, in Ref-down (LR-scale) pixels.

    ``centre``: (N, P) flat Ref-down index of each block's coarse match (P blocks, row-major);
    ``top``, ``left``: (N, P) corner of each block's search region, ``region``: its (height, width);
    ``patch_top``, ``patch_left``: (N, P, k*k) corner of the 3x3 Ref-down patch matched by every
    position of the block (row-major within the block); ``soft``: (N, P, k*k) its cosine
    relevance, differentiable.
    """

    centre: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    region: tuple[int, int]
    patch_top: torch.Tensor
    patch_left: torch.Tensor
    soft: torch.Tensor


def channels_last_flat(feat: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C), the layout :func:`gather_patches` indexes (one copy, differentiable)."""
    return feat.permute(0, 2, 3, 1).reshape(feat.shape[0], -1, feat.shape[1])


def gather_patches(feat: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int,
                   flat: torch.Tensor | None = None) -> torch.Tensor:
    """``feat[n, :, top:top+size, left:left+size]`` for every corner: (N, C, H, W), (N, Q) -> (N, Q, size, size, C).

    One flat index into the channels-last features (``flat``, :func:`channels_last_flat` of
    ``feat``, made here when not given), so only the gathered patches are allocated (no unfolding
    of ``feat``) and the gradient flows back to ``feat`` (summed where patches overlap).
    """
    n, _, _, width = feat.shape
    steps = torch.arange(size, device=feat.device)
    rows = top.reshape(n, -1, 1) + steps
    cols = left.reshape(n, -1, 1) + steps
    index = rows[:, :, :, None] * width + cols[:, :, None, :]  # (N, Q, S, S)
    flat = channels_last_flat(feat) if flat is None else flat
    return flat[torch.arange(n, device=feat.device).view(n, 1, 1, 1), index]


def _block_positions(h: int, w: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every position of an h x w map, by k x k block: two (P, k*k) tensors."""
    inner = torch.arange(k * k, device=device)
    rows = (torch.arange(h // k, device=device) * k).repeat_interleave(w // k)[:, None] + inner // k
    cols = (torch.arange(w // k, device=device) * k).repeat(h // k)[:, None] + inner % k
    return rows, cols


def _from_blocks(x: torch.Tensor, blocks_y: int, blocks_x: int) -> torch.Tensor:
    """(N * P, C, b, b) per-block maps -> (N, C, blocks_y * b, blocks_x * b)."""
    _, c, b, _ = x.shape
    x = x.view(-1, blocks_y, blocks_x, c, b, b).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, c, blocks_y * b, blocks_x * b)


class MatchExtract(nn.Module):
    """MASA's Match & Extraction Module: coarse block search, fine patch search in the region, transfer.

    Memory (floats; N images, C channels, LR features h x w, Ref-down Hr x Wr, k = lr_block_size,
    P = h*w/k^2 blocks, region (Dy+2) x (Dx+2), ``c`` = ``min(chunk_size, P)``). The coarse search
    computes its correlations as convolutions of the Ref-down features with the blocks' patches:
    ``N x c x Hr*Wr`` per chunk, no unfolded reference. The fine search gathers the region's
    patches and correlates them: ``N x c x Dy*Dx x (k^2 + 9C)`` per chunk, plus the LR patches,
    ``N x h*w x 9C``, once. Both run without gradient and keep nothing. The transfer gathers the
    matched patches at x1, x2, x4 (9, 36 and 144 C per position) in chunks of blocks, ``2 x N x
    c*k^2 x 144C`` at most at once at x4 (the gathered patches and their reordered copy), and
    keeps for the backward pass the transferred maps, ``N x C x 21 h*w``, the relevance's patches,
    ``N x h*w x 9C x 2``, and the integer indices. TTSR's search instead compares all ``Hr*Wr x
    h*w`` patch pairs (chunked) and unfolds the whole reference at its three levels.

    Args:
        lr_block_size: side of the LR blocks, in LR pixels (8).
        ref_down_block_size: search-region radius as a multiple of the reference's share per block
            (1.5).
        dilations: dilations of the coarse 3x3 patches, summed (1, 2, 3).
        chunk_size: LR blocks per chunk of both searches (bounds their memory).
    """

    def __init__(self, lr_block_size: int = 8, ref_down_block_size: float = 1.5,
                 dilations: Sequence[int] = (1, 2, 3), chunk_size: int = 64):
        super().__init__()
        self.lr_block_size = _positive_int(lr_block_size, "lr_block_size", 2)
        if isinstance(ref_down_block_size, bool) or not isinstance(ref_down_block_size, (int, float)) or not (
            ref_down_block_size > 0 and math.isfinite(ref_down_block_size)
        ):
            raise ValueError(f"ref_down_block_size must be a positive number, got {ref_down_block_size!r}")
        self.ref_down_block_size = float(ref_down_block_size)
        count = len(dilations) if isinstance(dilations, Sequence) and not isinstance(dilations, str) else -1
        self.dilations = _int_tuple(dilations, "dilations", max(count, 1), 1)
        # the dilated patch around the block centre must lie inside the block and its 1-px border
        if max(self.dilations) > self.lr_block_size // 2:
            raise ValueError(
                f"lr_block_size={lr_block_size} is too small for dilations {self.dilations}: the coarse "
                f"patch reaches {max(self.dilations)} px from the block centre; need lr_block_size >= "
                f"{2 * max(self.dilations)}"
            )
        self.chunk_size = _positive_int(chunk_size, "chunk_size")

    # ------------------------------------------------------------------ coarse
    def block_patches(self, lr_padded: torch.Tensor, dilation: int) -> torch.Tensor:
        """The blocks' central 3x3 patches at ``dilation``: (N, C, h+2, w+2) -> (N, P, C, 3, 3)."""
        k = self.lr_block_size
        n, c, hp, wp = lr_padded.shape
        offsets = torch.tensor([-dilation, 0, dilation], device=lr_padded.device)
        # the authors' ``search`` is given the replicate-padded (k+2)-wide block and takes its centre,
        # (k + 2) // 2 (5 for k = 8): LR pixel k // 2 of the block, not k // 2 - 1
        centre = (k + 2) // 2
        rows = (torch.arange((hp - 2) // k, device=lr_padded.device) * k + centre)[:, None] + offsets
        cols = (torch.arange((wp - 2) // k, device=lr_padded.device) * k + centre)[:, None] + offsets
        patches = lr_padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (N, C, py, px, 3, 3)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c, 3, 3)

    @torch.no_grad()
    def coarse_match(self, lr_feat: torch.Tensor, reflr_feat: torch.Tensor) -> torch.Tensor:
        """Flat Ref-down index of each block's best centre: (N, C, h, w), (N, C, Hr, Wr) -> (N, P).

        The score of a Ref-down position is the sum over the dilations of the cosine similarity
        between the block's central dilated 3x3 patch and the reference's, zero-padded at its
        border (the authors' unfold with ``padding=dilation``).
        """
        n, c, hr, wr = reflr_feat.shape
        lr_padded = F.pad(lr_feat, (1, 1, 1, 1), mode="replicate")
        weights = [F.normalize(self.block_patches(lr_padded, d).flatten(2), dim=2, eps=_NORM_EPS)
                   for d in self.dilations]  # (N, P, 9C) each
        ref_sq = reflr_feat.square().sum(dim=1, keepdim=True)
        ones = reflr_feat.new_ones(1, 1, 3, 3)
        ref_norms = [F.conv2d(ref_sq, ones, padding=d, dilation=d).sqrt().clamp_min(_NORM_EPS) for d in self.dilations]
        grouped = reflr_feat.reshape(1, n * c, hr, wr)  # one group per image
        num_blocks = weights[0].shape[1]
        best = []
        for start in range(0, num_blocks, self.chunk_size):
            stop = min(start + self.chunk_size, num_blocks)
            score = 0
            for d, w, norm in zip(self.dilations, weights, ref_norms):
                kernel = w[:, start:stop].reshape(n * (stop - start), c, 3, 3)
                dot = F.conv2d(grouped, kernel, padding=d, dilation=d, groups=n).view(n, stop - start, hr, wr)
                score = score + dot / norm
            best.append(score.flatten(2).argmax(dim=2))
        return torch.cat(best, dim=1)

    def region_size(self, ref_hw: tuple[int, int], blocks_yx: tuple[int, int]) -> tuple[int, int]:
        """Search-region side (with the patch border) per axis, at most the reference's side."""
        sides = []
        for length, blocks in zip(ref_hw, blocks_yx):
            diameter = 2 * int((length // (2 * blocks)) * self.ref_down_block_size) + 1
            sides.append(min(diameter + 2, length))
        return sides[0], sides[1]

    # ------------------------------------------------------------------ fine
    @torch.no_grad()
    def fine_match(self, queries: torch.Tensor, reflr_feat: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                   region: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Best 3x3 patch of each block's region for every query: corners (N, P, k*k) in Ref-down pixels.

        ``queries``: (N, P, k*k, 9C) normalised LR patches; ``top``, ``left``: (N, P) region corners.
        The region's patches are gathered directly (no crop-and-unfold) and divided by their norms.
        """
        n, num_blocks, kk, d = queries.shape
        ry, rx = region
        dy, dx = ry - _PATCH + 1, rx - _PATCH + 1  # candidate patches per region column / row
        offsets_y, offsets_x = torch.meshgrid(torch.arange(dy, device=top.device), torch.arange(dx, device=top.device),
                                              indexing="ij")
        flat = channels_last_flat(reflr_feat)
        patch_top, patch_left = [], []
        for start in range(0, num_blocks, self.chunk_size):
            stop = min(start + self.chunk_size, num_blocks)
            cand_top = (top[:, start:stop, None] + offsets_y.flatten()).flatten(1)  # (N, c*dy*dx)
            cand_left = (left[:, start:stop, None] + offsets_x.flatten()).flatten(1)
            keys = gather_patches(reflr_feat, cand_top, cand_left, _PATCH, flat).view(-1, dy * dx, d)
            keys = keys / keys.norm(dim=2, keepdim=True).clamp_min(_NORM_EPS)
            q = queries[:, start:stop].reshape(-1, kk, d)
            index = torch.bmm(q, keys.transpose(1, 2)).argmax(dim=2).view(n, stop - start, kk)
            patch_top.append(top[:, start:stop, None] + index // dx)
            patch_left.append(left[:, start:stop, None] + index % dx)
        return torch.cat(patch_top, dim=1), torch.cat(patch_left, dim=1)

    def search(self, lr_feat: torch.Tensor, reflr_feat: torch.Tensor) -> tuple:
        """The matching's indices, without gradient: ``(centre, top, left, region, patch_top, patch_left)``."""
        k = self.lr_block_size
        n, _, h, w = lr_feat.shape
        hr, wr = reflr_feat.shape[-2:]
        # in float32 whatever the autocast: bf16 cosines tie too often for an argmax
        with torch.no_grad(), torch.autocast(lr_feat.device.type, enabled=False):
            lr32, ref32 = lr_feat.float(), reflr_feat.float()
            centre = self.coarse_match(lr32, ref32)
            ry, rx = self.region_size((hr, wr), (h // k, w // k))
            top = (centre // wr - ry // 2).clamp(0, hr - ry)
            left = (centre % wr - rx // 2).clamp(0, wr - rx)
            queries = F.normalize(self.lr_patches(lr32), dim=3, eps=_NORM_EPS)
            patch_top, patch_left = self.fine_match(queries, ref32, top, left, (ry, rx))
        return centre, top, left, (ry, rx), patch_top, patch_left

    def lr_patches(self, lr_feat: torch.Tensor) -> torch.Tensor:
        """Every 3x3 LR patch (replicate-padded), by block: (N, C, h, w) -> (N, P, k*k, 9C).

        Patch vectors are in (row, column, channel) order on both sides of the matching, which
        leaves every dot product and norm as with F.unfold's order and saves a reordering copy.
        """
        n, _, h, w = lr_feat.shape
        rows, cols = _block_positions(h, w, self.lr_block_size, lr_feat.device)
        padded = F.pad(lr_feat, (1, 1, 1, 1), mode="replicate")
        patches = gather_patches(padded, rows.expand(n, -1, -1), cols.expand(n, -1, -1), _PATCH)
        return patches.view(n, rows.shape[0], rows.shape[1], -1)

    def match(self, lr_feat: torch.Tensor, reflr_feat: torch.Tensor) -> Match:
        """Coarse then fine matching of LR features (h, w multiples of k) in Ref-down features."""
        centre, top, left, region, patch_top, patch_left = self.search(lr_feat, reflr_feat)
        # the relevance of the chosen patches, differentiable on both sides (the soft attention)
        lr_patches = F.normalize(self.lr_patches(lr_feat), dim=3, eps=_NORM_EPS)
        ref_patches = gather_patches(reflr_feat, patch_top, patch_left, _PATCH).view(lr_patches.shape)
        ref_patches = F.normalize(ref_patches, dim=3, eps=_NORM_EPS)
        soft = (lr_patches * ref_patches).sum(dim=3)
        return Match(centre, top, left, region, patch_top, patch_left, soft)

    # ------------------------------------------------------------------ transfer
    def transfer(self, ref_feat: torch.Tensor, match: Match, scale: int, lr_hw: tuple[int, int]) -> torch.Tensor:
        """Reference features at ``scale`` x the LR scale, gathered at the matches: (N, C, h*s, w*s).

        Each query's (3s x 3s) patch is folded back per block (stride s, padding s) and divided by
        the number of patches covering each pixel, then weighted by the soft attention, bilinearly
        resized to the block (the authors' ``transfer``).
        """
        k, s = self.lr_block_size, scale
        n, c = ref_feat.shape[:2]
        blocks_y, blocks_x = lr_hw[0] // k, lr_hw[1] // k
        size = _PATCH * s
        fold = dict(output_size=(k * s, k * s), kernel_size=size, padding=s * (_PATCH // 2), stride=s)
        flat = channels_last_flat(ref_feat)
        folded = []
        for start in range(0, blocks_y * blocks_x, self.chunk_size):  # chunks of blocks bound the gathered patches
            stop = min(start + self.chunk_size, blocks_y * blocks_x)
            patch_top, patch_left = match.patch_top[:, start:stop] * s, match.patch_left[:, start:stop] * s
            patches = gather_patches(ref_feat, patch_top, patch_left, size, flat)  # (N, c*kk, S, S, C)
            # one reordering copy into F.fold's (block, channel * row * column, position) layout
            patches = patches.view(n * (stop - start), k * k, size, size, c).permute(0, 4, 2, 3, 1)
            patches = patches.reshape(n * (stop - start), c * size * size, k * k)
            folded.append(F.fold(patches, **fold).view(n, stop - start, c, k * s, k * s))
        out = torch.cat(folded, dim=1).flatten(0, 1)
        divisor = F.fold(out.new_ones(1, size * size, k * k), **fold)
        soft = match.soft.reshape(-1, 1, k, k).to(out.dtype)
        if s != 1:
            soft = F.interpolate(soft, size=(k * s, k * s), mode="bilinear", align_corners=False)
        return _from_blocks(out / divisor * soft, blocks_y, blocks_x)


class MASA(nn.Module):
    """MASA-SR for x4 reference-based SR, called as ``net(lr, ref)``.

    ``lr``: (N, 3, h, w) in [0, 1], any size: replicate-padded at the bottom/right to a multiple of
    ``lcm(lr_block_size, 4)`` (the authors need h, w divisible into blocks and by 4; they pad the HR
    to a multiple of 32), the output cropped back to (N, 3, 4h, 4w), not clamped. ``ref``: (N, 3,
    Hr, Wr) in [0, 1], any size: replicate-padded to a multiple of 4 and at least 12 px (a 3x3
    Ref-down patch). Ref-down is ``imresize(ref, 1/4)`` (MATLAB bicubic), the LR upsampling of the
    global residual PyTorch's bicubic (the authors' ``F.interpolate``). Memory of the matching:
    see :class:`MatchExtract`; with a 40x40 LR and a 160x160 reference (CUFED training), 64
    features and the default ``chunk_size`` (all 25 blocks in one chunk), the searches hold
    about 3.7 M floats (15 MB) per image and the x4 transfer about 30 M (118 MB) at its peak;
    ``chunk_size`` bounds both for larger images and references.

    Args:
        n_feats: feature channels (64, the authors' ``nf``).
        n_blks: residual blocks of the encoder's three levels (4, 4, 4).
        n_blks_dec: residual blocks of the decoder: /4, /2, x1 of the LR path, then the x1, x2,
            x4 fusion stages (2, 2, 2, 12, 8, 4).
        upscale: must be 4 (MASA transfers at x1, x2, x4); present so the modules' scale can be
            checked against the network.
        lr_block_size: LR block side of the coarse search (8).
        ref_down_block_size: search-region radius factor (1.5).
        dilations: dilations of the coarse search's 3x3 patches (1, 2, 3).
        chunk_size: LR blocks per chunk of the searches (64; our choice, only memory depends on it).
        init_scale: scale of the residual blocks' initial conv weights (0.1, the authors'
            ``weight_init``: N(0, 0.5 * sqrt(2 / (9 * out_channels))) for every conv, zero biases).

    Parameter count at the defaults: 4,028,291 (the paper: 4.03 M).
    """

    def __init__(
        self,
        n_feats: int = 64,
        n_blks: Sequence[int] = (4, 4, 4),
        n_blks_dec: Sequence[int] = (2, 2, 2, 12, 8, 4),
        upscale: int = 4,
        lr_block_size: int = 8,
        ref_down_block_size: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
        chunk_size: int = 64,
        init_scale: float = 0.1,
    ):
        super().__init__()
        if upscale != 4:
            raise ValueError(f"MASA is a x4 network (features transferred at x1, x2, x4); got upscale={upscale!r}")
        self.upscale = upscale
        self.n_feats = _positive_int(n_feats, "n_feats")
        self.n_blks = _int_tuple(n_blks, "n_blks", 3, 0)
        self.n_blks_dec = _int_tuple(n_blks_dec, "n_blks_dec", 6, 0)
        self.enc = Encoder(n_feats, self.n_blks)
        self.decoder = Decoder(n_feats, self.n_blks_dec)
        self.match_extract = MatchExtract(lr_block_size, ref_down_block_size, dilations, chunk_size)
        self.lr_multiple = math.lcm(self.match_extract.lr_block_size, _REF_DOWN_FACTOR)
        self.weight_init(init_scale)

    @torch.no_grad()
    def weight_init(self, scale: float = 0.1) -> None:
        """The authors' init: N(0, 0.5 sqrt(2/n)), n = k*k*out_channels, zero biases; residual
        blocks' convs times ``scale``; the SAM's gamma/beta convs zero."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0, 0.5 * math.sqrt(2.0 / fan))
                if module.bias is not None:
                    module.bias.zero_()
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                module.conv1.weight.mul_(scale)
                module.conv2.weight.mul_(scale)
            elif isinstance(module, SAM):
                for conv in (module.conv_gamma, module.conv_beta):
                    conv.weight.zero_()
                    conv.bias.zero_()

    def _check_inputs(self, lr: torch.Tensor, ref: torch.Tensor) -> None:
        if lr.dim() != 4 or ref.dim() != 4 or lr.shape[0] != ref.shape[0] or lr.shape[1] != 3 or ref.shape[1] != 3:
            raise ValueError(
                f"MASA needs lr (N, 3, h, w) and ref (N, 3, Hr, Wr) with one N, got {tuple(lr.shape)} and {tuple(ref.shape)}"
            )

    def pad_inputs(self, lr: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Replicate-pad ``lr`` to a multiple of ``lcm(lr_block_size, 4)`` and ``ref`` to a multiple of 4, >= 12 px."""
        lr = pad_to_multiple(lr, self.lr_multiple)
        ref = pad_to_multiple(ref, _REF_DOWN_FACTOR)
        min_side = _PATCH * _REF_DOWN_FACTOR
        pad_h, pad_w = max(0, min_side - ref.shape[-2]), max(0, min_side - ref.shape[-1])
        if pad_h or pad_w:
            ref = F.pad(ref, (0, pad_w, 0, pad_h), mode="replicate")
        return lr, ref

    def features(self, lr: torch.Tensor, ref: torch.Tensor, ref_down: torch.Tensor) -> tuple[list, list, list]:
        """Encoder features of the (padded) LR, Ref-down and Ref; one pass when LR and Ref-down share a size."""
        if lr.shape == ref_down.shape:
            both = self.enc(torch.cat([lr, ref_down]))
            n = lr.shape[0]
            fea_lr, fea_reflr = [f[:n] for f in both], [f[n:] for f in both]
        else:
            fea_lr, fea_reflr = self.enc(lr), self.enc(ref_down)
        return fea_lr, fea_reflr, self.enc(ref)

    def match(self, lr: torch.Tensor, ref: torch.Tensor) -> Match:
        """The coarse and fine matches of a [0, 1] batch (on the padded inputs), see :class:`Match`."""
        self._check_inputs(lr, ref)
        lr, ref = self.pad_inputs(lr, ref)
        ref_down = imresize(ref, 1 / _REF_DOWN_FACTOR)
        fea_lr, fea_reflr = self.enc(lr)[0], self.enc(ref_down)[0]
        return self.match_extract.match(fea_lr, fea_reflr)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        self._check_inputs(lr, ref)
        h, w = lr.shape[-2:]
        lr, ref = self.pad_inputs(lr, ref)
        ref_down = imresize(ref, 1 / _REF_DOWN_FACTOR)
        fea_lr, fea_reflr, fea_ref = self.features(lr, ref, ref_down)
        match = self.match_extract.match(fea_lr[0], fea_reflr[0])
        lr_hw = tuple(lr.shape[-2:])
        warp_x1 = self.match_extract.transfer(fea_ref[2], match, 1, lr_hw)
        warp_x2 = self.match_extract.transfer(fea_ref[1], match, 2, lr_hw)
        warp_x4 = self.match_extract.transfer(fea_ref[0], match, 4, lr_hw)
        out = self.decoder(fea_lr, warp_x1, warp_x2, warp_x4)
        out = out + F.interpolate(lr, scale_factor=self.upscale, mode="bicubic", align_corners=False)
        return out[..., : self.upscale * h, : self.upscale * w]
