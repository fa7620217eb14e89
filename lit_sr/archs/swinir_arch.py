"""SwinIR (Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCV Workshops 2021).

The layout (module names, parameter and buffer names and shapes) is BasicSR's ``SwinIR``, so the
official SwinIR / BasicSR checkpoints load strictly.

Window attention is the explicit softmax(q k^T * scale + bias + mask) v. We measured
``F.scaled_dot_product_attention`` instead (SwinIR-M x4 training step, batch 16, 48 px, one H100):
its fused kernels need a head width divisible by 8 (SwinIR-M has 180 / 6 = 30), so it fell back to
its math path and ran 5% slower in bf16 (118 vs 125 img/s) and 4% slower in fp32 (94 vs 98);
with a head width of 32 it was no faster (111 vs 112).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils import checkpoint as torch_checkpoint

from lit_sr.archs.common import MeanShiftMixin, Upsample

Upsampler = Literal["pixelshuffle", "pixelshuffledirect", "nearest+conv", ""]
_UPSAMPLERS: tuple[str, ...] = get_args(Upsampler)
ResiConnection = Literal["1conv", "3conv"]
_RESI_CONNECTIONS: tuple[str, ...] = get_args(ResiConnection)
_MASK_VALUE = -100.0  # what the reference uses between tokens from different shifted regions
_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def _to_2tuple(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def effective_window(input_resolution: tuple[int, int], window_size: int, shift_size: int) -> tuple[int, int]:
    """Window and shift actually used at ``input_resolution`` (the reference's rule).

    When the feature map is not larger than the window, the whole map is one window and there is
    no shift.
    """
    if min(input_resolution) <= window_size:
        return min(input_resolution), 0
    return window_size, shift_size


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(b, h, w, c) -> (b * num_windows, window_size, window_size, c); h and w multiples of the window."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (b * num_windows, ws, ws, c) -> (b, h, w, c)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def calculate_mask(
    x_size: tuple[int, int], window_size: int, shift_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Additive attention mask of the shifted windows: (num_windows, ws*ws, ws*ws), 0 or -100.

    After the cyclic shift, windows on the bottom and right borders hold tokens from up to three
    regions that were not adjacent in the image; tokens from different regions must not attend to
    each other.
    """
    h, w = x_size
    img_mask = torch.zeros((1, h, w, 1), device=device)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for hs in cuts:
        for ws in cuts:
            img_mask[:, hs, ws, :] = region
            region += 1
    mask_windows = window_partition(img_mask, window_size).view(-1, window_size * window_size)
    diff = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


def relative_position_index(window_size: tuple[int, int]) -> torch.Tensor:
    """(Wh*Ww, Wh*Ww) index into the (2Wh-1)(2Ww-1) relative-position bias table."""
    wh, ww = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob``."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`.

    Args:
        drop_prob: probability of dropping the branch of a sample during training.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class Mlp(nn.Module):
    """Linear-GELU-Linear feed-forward network with dropout.

    Args:
        in_features: input and output width.
        hidden_features: hidden width.
        drop: dropout probability.
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    ``relative_position_index`` is a persistent buffer, as in BasicSR (the checkpoints carry it).

    Args:
        dim: token width.
        window_size: (Wh, Ww).
        num_heads: attention heads; must divide ``dim``.
        qkv_bias: learn a bias for the query, key and value projections.
        qk_scale: overrides the default scale ``head_dim ** -0.5`` when set.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        num_offsets = (2 * window_size[0] - 1) * (2 * window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(num_heads, N, N) bias with N = Wh*Ww."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: (b * num_windows, N, dim) tokens, windows of one image contiguous.
            mask: (num_windows, N, N) additive shift mask, or None.
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().to(attn.dtype).unsqueeze(0)
        if mask is not None:
            # Windows of one image are contiguous (window_partition), so the mask broadcasts over
            # the batch without being copied.
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = F.dropout(attn.softmax(dim=-1), self.attn_drop, self.training)
        out = attn.to(v.dtype) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each in a pre-norm residual branch.

    A block with a shift keeps the mask of its training resolution in the persistent buffer
    ``attn_mask`` (BasicSR's name; checkpoints carry it). At any other resolution the caller passes
    the mask for that resolution (see :func:`calculate_mask`).

    Args:
        dim: token width.
        input_resolution: (h, w) of the feature map the block is built for (``img_size``).
        num_heads: attention heads.
        window_size: window side.
        shift_size: cyclic shift (0 or window_size // 2).
        mlp_ratio: MLP hidden width / dim.
        qkv_bias: learn a bias for q, k, v.
        qk_scale: overrides ``head_dim ** -0.5``.
        drop: dropout after projections.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate.
        norm_layer: normalisation class (``nn.LayerNorm``).
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.window_size, self.shift_size = effective_window(self.input_resolution, window_size, shift_size)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(
            dim, (self.window_size, self.window_size), num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = None
        if self.shift_size:
            mask = calculate_mask(self.input_resolution, self.window_size, self.shift_size)
        self.register_buffer("attn_mask", mask)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], shift_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args:
        x: (b, h*w, dim) tokens.
        x_size: (h, w), multiples of the window.
        shift_mask: the shift mask for ``x_size`` when it differs from ``input_resolution``
            (ignored by blocks without a shift); None means use the ``attn_mask`` buffer.
        """
        h, w = x_size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        mask = None
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = self.attn_mask if shift_mask is None else shift_mask
        windows = window_partition(x, self.window_size).view(-1, self.window_size * self.window_size, c)
        windows = self.attn(windows, mask=mask).view(-1, self.window_size, self.window_size, c)
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """``depth`` Swin blocks alternating regular and shifted windows.

    Args:
        dim, input_resolution, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop,
        attn_drop, norm_layer: as in :class:`SwinTransformerBlock`.
        depth: number of blocks.
        drop_path: one stochastic-depth rate, or one per block.
        use_checkpoint: recompute each block in the backward pass (saves memory while training).
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, input_resolution, num_heads, window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                attn_drop=attn_drop, drop_path=rates[i], norm_layer=norm_layer,
            )
            for i in range(depth)
        )

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], shift_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(blk, x, x_size, shift_mask, use_reentrant=False)
            else:
                x = blk(x, x_size, shift_mask)
        return x


def _conv_block(dim: int, resi_connection: str) -> nn.Module:
    """The conv closing a residual group: one 3x3, or 3x3 -> 1x1 -> 3x3 through dim // 4 channels."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(negative_slope=0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


def _tokens_to_map(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """(b, h*w, c) -> (b, c, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, h*w, c)."""
    return x.flatten(2).transpose(1, 2)


class RSTB(nn.Module):
    """Residual Swin Transformer block: a :class:`BasicLayer`, a conv, and a skip connection.

    Args:
        dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, drop,
        attn_drop, drop_path, norm_layer, use_checkpoint: as in :class:`BasicLayer`.
        resi_connection: '1conv' or '3conv' (the conv after the layer).
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        use_checkpoint: bool = False,
        resi_connection: ResiConnection = "1conv",
    ):
        super().__init__()
        self.residual_group = BasicLayer(
            dim, input_resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale,
            drop, attn_drop, drop_path, norm_layer, use_checkpoint,
        )
        self.conv = _conv_block(dim, resi_connection)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], shift_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        y = self.residual_group(x, x_size, shift_mask)
        return x + _map_to_tokens(self.conv(_tokens_to_map(y, x_size)))


class SwinIR(MeanShiftMixin, nn.Module):
    """SwinIR with BasicSR's constructor arguments and state_dict keys.

    Official checkpoints (``001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth`` with ``img_size=64``,
    ``001_classicalSR_DIV2K_s48w8_SwinIR-M_x4.pth`` with ``img_size=48``, the lightweight and
    real-world ones, ...) load strictly when built with the arguments they were trained with. Their
    ``attn_mask`` and ``relative_position_index`` buffers are persistent, as in BasicSR, and the
    shapes of ``attn_mask`` depend on ``img_size`` and ``window_size``. The DIV2K mean (for 3 input
    channels) is a non-persistent buffer, as it is no key in those checkpoints.

    Any input size works: the input is reflect-padded on the bottom and right to a multiple of the
    window, run, and the output is cropped back to ``upscale`` x the input size (what SwinIR's
    official code does in ``check_image_size``). At a size other than ``img_size`` the shift masks
    are computed for that size, once per forward. Reflect padding needs each side to be larger than
    the padding it receives (larger than ``window_size // 2`` is always enough).

    Args:
        img_size: training patch size (int or (h, w)); fixes the stored ``attn_mask`` buffers.
        patch_size: must be 1 (SwinIR embeds every pixel as a token; the argument is kept for
            BasicSR compatibility).
        in_chans: image channels in and out (3).
        embed_dim: token width (180 for SwinIR-M, 60 for lightweight).
        depths: Swin blocks in each residual group.
        num_heads: attention heads in each residual group.
        window_size: attention window side (8 for classical SR).
        mlp_ratio: MLP hidden width / embed_dim (2 for SwinIR-M).
        qkv_bias: learn a bias for q, k, v.
        qk_scale: overrides ``head_dim ** -0.5`` when set.
        drop_rate: dropout after projections and MLP.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly to this over all blocks.
        norm_layer: normalisation class, or its name in ``torch.nn`` (``"LayerNorm"``).
        ape: add a learned absolute position embedding (key ``absolute_pos_embed``).
        patch_norm: layer-norm after the patch embedding (key ``patch_embed.norm``).
        use_checkpoint: gradient checkpointing of each Swin block while training.
        upscale: output scale: 2, 3, 4, 8 for 'pixelshuffle'; any for 'pixelshuffledirect';
            4 for 'nearest+conv'; 1 for '' (denoising / JPEG artefact removal).
        img_range: inputs are multiplied by this after mean subtraction (1.0 in SwinIR).
        upsampler: 'pixelshuffle' (classical SR), 'pixelshuffledirect' (lightweight),
            'nearest+conv' (real-world SR) or '' (same-size restoration).
        resi_connection: '1conv' or '3conv'.

    Defaults follow BasicSR except two that make BasicSR's default network unusable:
    ``window_size`` is 8 (7 does not divide the default ``img_size`` 64) and ``upsampler`` is
    'pixelshuffle' (BasicSR's '' with ``upscale=2`` returns an image of the input size).

    Parameter count of SwinIR-M at x4 (embed 180, depths 6x6, heads 6x6, window 8, mlp_ratio 2,
    'pixelshuffle', '1conv'; the same for ``img_size`` 48 or 64): 11,900,199.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 64,
        patch_size: int = 1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: type[nn.Module] | str = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: Upsampler = "pixelshuffle",
        resi_connection: ResiConnection = "1conv",
    ):
        super().__init__()
        resolution = _to_2tuple(img_size, "img_size")
        norm_cls = _resolve_norm_layer(norm_layer)
        _validate(resolution, patch_size, in_chans, embed_dim, depths, num_heads, window_size, upscale,
                  upsampler, resi_connection)
        num_feat = 64  # channels of the reconstruction head, fixed in SwinIR
        self.upscale = upscale
        self.upsampler = upsampler
        self.img_range = img_range
        self.window_size = window_size
        self.patches_resolution = resolution
        self.ape = ape
        self._register_mean(_DIV2K_MEAN, in_chans)
        # The window the blocks really use (the whole map when img_size <= window_size).
        self._window, self._shift = effective_window(resolution, window_size, window_size // 2)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = _PatchNorm(norm_cls(embed_dim) if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                RSTB(embed_dim, resolution, depth, heads, window_size, mlp_ratio, qkv_bias, qk_scale,
                     drop_rate, attn_drop_rate, rates[start:start + depth], norm_cls, use_checkpoint,
                     resi_connection)
            )
        self.norm = norm_cls(embed_dim)
        self.conv_after_body = _conv_block(embed_dim, resi_connection)
        self._build_head(upsampler, embed_dim, num_feat, in_chans, upscale)
        self.apply(_init_weights)

    def _build_head(self, upsampler: str, embed_dim: int, num_feat: int, out_ch: int, upscale: int) -> None:
        if upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
            )
        if upsampler == "pixelshuffle":
            self.upsample = Upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, upscale**2 * out_ch, 3, 1, 1), nn.PixelShuffle(upscale)
            )
        elif upsampler == "nearest+conv":
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, out_ch, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features of a (b, embed_dim, h, w) map whose sides are multiples of the window."""
        x_size = (x.shape[2], x.shape[3])
        shift_mask = None
        if self._shift and x_size != self.patches_resolution:
            shift_mask = calculate_mask(x_size, self._window, self._shift, x.device)
        tokens = self.patch_embed(_map_to_tokens(x))
        if self.ape:
            if x_size != self.patches_resolution:
                raise ValueError(
                    f"ape=True fixes the token grid to img_size {self.patches_resolution}; "
                    f"got a padded input of {x_size}"
                )
            tokens = tokens + self.absolute_pos_embed
        tokens = self.pos_drop(tokens)
        for layer in self.layers:
            tokens = layer(tokens, x_size, shift_mask)
        return _tokens_to_map(self.norm(tokens), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self._normalise(self._pad_to_window(x))
        if self.upsampler == "":
            first = self.conv_first(x)
            out = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        else:
            first = self.conv_first(x)
            feat = self.conv_after_body(self.forward_features(first)) + first
            out = self._reconstruct(feat)
        out = self._denormalise(out)
        return out[..., : h * self.upscale, : w * self.upscale]

    def _reconstruct(self, feat: torch.Tensor) -> torch.Tensor:
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(feat)
        feat = self.conv_before_upsample(feat)  # nearest+conv
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))

    def _pad_to_window(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h = (-h) % self._window
        pad_w = (-w) % self._window
        if pad_h == 0 and pad_w == 0:
            return x
        if pad_h >= h or pad_w >= w:
            raise ValueError(
                f"SwinIR input {h}x{w} is too small to reflect-pad to a multiple of the window "
                f"{self._window} (pads {pad_h}, {pad_w}); each side must exceed its padding"
            )
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")


class _PatchNorm(nn.Module):
    """BasicSR's ``PatchEmbed`` with patch size 1: only an optional norm over the tokens."""

    def __init__(self, norm: nn.Module | None):
        super().__init__()
        self.norm = norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.norm is None else self.norm(tokens)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _resolve_norm_layer(norm_layer: type[nn.Module] | str) -> Callable[[int], nn.Module]:
    if isinstance(norm_layer, str):
        cls = getattr(nn, norm_layer, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(
                f"norm_layer {norm_layer!r} is not a torch.nn module name; expected e.g. 'LayerNorm'"
            )
        return cls
    if not callable(norm_layer):
        raise TypeError(f"norm_layer must be a module class or its name, got {norm_layer!r}")
    return norm_layer


def _validate(
    resolution: tuple[int, int],
    patch_size: int,
    in_chans: int,
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
    upscale: int,
    upsampler: str,
    resi_connection: str,
) -> None:
    if patch_size != 1:
        raise ValueError(f"patch_size must be 1 (SwinIR embeds every pixel), got {patch_size!r}")
    if upsampler not in _UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {_UPSAMPLERS}, got {upsampler!r}")
    if resi_connection not in _RESI_CONNECTIONS:
        raise ValueError(f"resi_connection must be one of {_RESI_CONNECTIONS}, got {resi_connection!r}")
    if len(depths) != len(num_heads) or len(depths) == 0:
        raise ValueError(
            f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must be non-empty and equally long"
        )
    for heads in num_heads:
        if heads < 1 or embed_dim % heads:
            raise ValueError(f"num_heads {heads} must divide embed_dim {embed_dim}")
    if in_chans < 1 or window_size < 1 or min(resolution) < 1 or min(depths) < 1:
        raise ValueError("in_chans, window_size, img_size and every depth must be positive")
    window, _ = effective_window(resolution, window_size, 0)
    if resolution[0] % window or resolution[1] % window:
        raise ValueError(f"img_size {resolution} must be a multiple of window_size {window}")
    if upsampler == "" and upscale != 1:
        raise ValueError(f"upsampler '' keeps the input size; upscale must be 1, got {upscale!r}")
    if upsampler == "nearest+conv" and upscale != 4:
        raise ValueError(f"upsampler 'nearest+conv' is x4 only, got upscale={upscale!r}")
    if upsampler == "pixelshuffledirect" and upscale < 1:
        raise ValueError(f"upscale must be positive, got {upscale!r}")
