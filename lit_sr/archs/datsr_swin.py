"""The Swin stage of DATSR's restoration U-Net (``SwinBlock`` of caojiezhang/DATSR).

DATSR (Cao et al., ECCV 2022) runs one of these at each scale of its U-Net: a (b, c, h, w) map
is flattened to tokens, normalised, passed through residual Swin groups (SwinIR's ``RSTB``, the
blocks of :mod:`lit_sr.archs.swinir_arch`, whose keys are the same), normalised again and folded
back. Module and parameter names are the authors' (``patch_embed.norm``, ``layers.N.residual_group
.blocks.M.attn.relative_position_bias_table``, ``layers.N.conv``, ``norm``), so their files load
strictly; the ``relative_position_index`` and ``attn_mask`` buffers are persistent, as theirs.

The authors' quirk is kept: every shifted block stores the mask of ``img_size`` (DATSR builds its
three stages with the fixed sizes 160, 80 and 40, the CUFED training patch at x1, /2 and /4); at
any other size the mask is computed for the actual size on each call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from lit_sr.archs.swinir_arch import RSTB, ResiConnection, calculate_mask, effective_window


class PatchEmbed(nn.Module):
    """Patch size 1: only an optional norm over the tokens (the authors' ``PatchEmbed``; key ``norm``).

    Args:
        embed_dim: token width.
        norm_layer: normalisation class, or ``None`` for none.
    """

    def __init__(self, embed_dim: int, norm_layer: Callable[[int], nn.Module] | None = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        return tokens if self.norm is None else self.norm(tokens)


class SwinBlock(nn.Module):
    """Residual Swin groups on a feature map, with the authors' arguments and keys.

    Args:
        img_size: side of the map the masks are stored for (DATSR: 160, 80 or 40 by stage).
        patch_size: must be 1 (DATSR's only value; kept for the authors' signature).
        embed_dim: channels of the map (DATSR passes its ``ngf``).
        depths: Swin blocks per residual group.
        num_heads: attention heads per group.
        window_size: attention window side (8).
        mlp_ratio: MLP hidden width / embed_dim (2).
        qkv_bias: learn a bias for q, k, v.
        qk_scale: overrides ``head_dim ** -0.5``.
        drop_rate: dropout after projections and on the tokens.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks (0.1).
        norm_layer: normalisation class (``nn.LayerNorm``).
        ape: learned absolute position embedding (key ``absolute_pos_embed``), only at ``img_size``.
        patch_norm: layer norm on the tokens first (key ``patch_embed.norm``).
        use_checkpoint: recompute each Swin block in the backward pass (saves memory in training).
        resi_connection: ``"1conv"`` or ``"3conv"``, the conv closing each group.
    """

    def __init__(
        self,
        img_size: int = 40,
        patch_size: int = 1,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        resi_connection: ResiConnection = "1conv",
    ):
        super().__init__()
        if patch_size != 1:
            raise ValueError(f"DATSR's SwinBlock works on patch_size=1 tokens, got patch_size={patch_size!r}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have one entry per group")
        self.embed_dim, self.ape = embed_dim, ape
        self.patches_resolution = (img_size, img_size)
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, img_size * img_size, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(RSTB(
                embed_dim, self.patches_resolution, depth, heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, rates[start:start + depth], norm_layer, use_checkpoint, resi_connection,
            ))
        self.norm = norm_layer(embed_dim)
        # window and shift of the shifted blocks (the authors' rule: whole-map windows when the map
        # of img_size is not larger than the window)
        self._window, self._shift = effective_window(self.patches_resolution, window_size, window_size // 2)
        self._any_shift = self._shift > 0 and any(d > 1 for d in depths)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, embed_dim, h, w) -> same shape; h and w multiples of the window."""
        x_size = (x.shape[2], x.shape[3])
        shift_mask = None
        if self._any_shift and x_size != self.patches_resolution:
            shift_mask = calculate_mask(x_size, self._window, self._shift, x.device)
        tokens = self.patch_embed(x)
        if self.ape:
            if x_size != self.patches_resolution:
                raise ValueError(f"ape=True fixes the token grid to img_size {self.patches_resolution}; got {x_size}")
            tokens = tokens + self.absolute_pos_embed
        tokens = self.pos_drop(tokens)
        for layer in self.layers:
            tokens = layer(tokens, x_size, shift_mask)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, x_size[0], x_size[1])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
