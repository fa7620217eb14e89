"""MambaIR's visual state-space blocks (Guo et al., ECCV 2024) as SSMTF uses them, with a pure-PyTorch selective scan.

Ported from ``mmsr/models/archs/blocks.py`` of edbca/SSMTF (itself MambaIR's ``VSSBlock``, ``SS2D``,
``CAB``, ``BasicLayer``, ``ResidualGroup``), with the authors' module and parameter names, so their
state keys load strictly: ``ln_1``, ``self_attention.{in_proj, conv2d, x_proj_weight,
dt_projs_weight, dt_projs_bias, A_logs, Ds, out_norm, out_proj}``, ``skip_scale``,
``conv_blk.cab.{0, 2, 3.attention.1, 3.attention.3}``, ``ln_2``, ``skip_scale2``.

The selective scan (:func:`selective_scan`) replaces ``mamba_ssm``'s CUDA kernel
``selective_scan_fn`` with the semantics of its reference ``selective_scan_ref``: ``delta <-
softplus(delta + delta_bias)``, ``A = -exp(A_log)`` (done by the caller, as SS2D does),
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, optionally gated by
``silu(z)``; the state is float32 and autocast is off inside the scan (the CUDA kernel's state is
float32 too). It runs on any device, batched over batch, channels and state, optionally in
chunks: a recurrence of ``T`` steps inside every chunk (all chunks at once), a recurrence over the
chunks for the carried state, and the carry added back with the in-chunk cumulative decay. That is
``T + L / T`` Python steps instead of ``L`` (about ``2 sqrt(L)`` with ``T = sqrt(L)``, the default
on accelerators; CPU defaults to the plain recurrence, see :func:`default_chunk_size`), the same
values up to float rounding (``tests/test_ssmtf.py`` checks both against a naive per-timestep
loop), at the memory of the reference (a few ``(b, d, L, d_state)`` tensors: a 160x160 stage of
the authors' width holds about 0.8 GB per such tensor and image; the CUDA kernel holds none).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


# ---------------------------------------------------------------------------- the selective scan
def _time_major(m: torch.Tensor, b: int, d: int, length: int, chunk: int, name: str) -> torch.Tensor:
    """B or C as (chunk, n_chunks, b, g, 1, n) (time-major, padded with zeros), or (1, 1, 1, 1, d, n) if constant.

    Accepted as ``selective_scan_ref``: (d, n) constant, (b, n, L) shared by all channels, or
    (b, g, n, L): channel ``c`` uses group ``c // (d // g)``.
    """
    if m.dim() == 2 and m.shape[0] == d:
        return m.float().view(1, 1, 1, 1, d, m.shape[1])
    if m.dim() == 3 and m.shape[0] == b and m.shape[2] == length:
        m = m.unsqueeze(1)
    elif not (m.dim() == 4 and m.shape[0] == b and m.shape[3] == length and d % m.shape[1] == 0):
        raise ValueError(f"selective_scan: {name} must be (d, n), (b, n, L) or (b, g, n, L) with g dividing d "
                         f"(b={b}, d={d}, L={length}), got {tuple(m.shape)}")
    n_chunks = -(-length // chunk)
    m = F.pad(m.float(), (0, n_chunks * chunk - length))
    return m.view(*m.shape[:3], n_chunks, chunk).permute(4, 3, 0, 1, 2).unsqueeze(4)


def _time_major_channels(x: torch.Tensor, chunk: int, groups: int) -> torch.Tensor:
    """(b, d, L) -> (chunk, n_chunks, b, groups, d // groups, 1), zero-padded to whole chunks."""
    b, d, length = x.shape
    n_chunks = -(-length // chunk)
    x = F.pad(x, (0, n_chunks * chunk - length))
    return x.view(b, groups, d // groups, n_chunks, chunk).permute(4, 3, 0, 1, 2).unsqueeze(-1)


def default_chunk_size(length: int, device: torch.device) -> int:
    """``ceil(sqrt(L))`` on an accelerator (``2 sqrt(L)`` launches instead of ``L``), ``L`` (the plain recurrence) on CPU.

    On CPU the chunked form does four extra passes over the ``(L, d, n)`` states and saves only
    Python steps; it was slower there (benchmarks/RESULTS.md, "SSMTF selective scan").
    """
    return length if device.type == "cpu" else math.isqrt(length - 1) + 1


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   chunk_size: int | None = None) -> torch.Tensor:
    """Mamba's selective scan, ``mamba_ssm``'s ``selective_scan_ref`` semantics, chunked (see the module docstring).

    Args:
        u: (b, d, L) input. delta: (b, d, L) step sizes before ``delta_bias`` and softplus.
        A: (d, n) real state matrix (diagonal per channel; SS2D passes ``-exp(A_logs)``).
        B, C: (d, n), (b, n, L) or (b, g, n, L) (g groups of ``d // g`` channels; SS2D: one per direction).
        D: (d,) skip. z: (b, d, L) gate (``out * silu(z)``). delta_bias: (d,).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        chunk_size: steps per chunk (``None``: :func:`default_chunk_size`); any value >= 1 gives the
            same result up to float rounding.

    Returns:
        (b, d, L) in ``u``'s dtype (computed in float32).
    """
    if u.dim() != 3 or delta.shape != u.shape or u.shape[-1] < 1:
        raise ValueError(f"selective_scan: u and delta must be (b, d, L >= 1) of one shape, got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (d={d}, n), got {tuple(A.shape)} {A.dtype}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"selective_scan: chunk_size must be a positive int or None, got {chunk_size!r}")
    chunk = min(chunk_size or default_chunk_size(length, u.device), length)
    dtype_in, n = u.dtype, A.shape[1]
    with torch.autocast(u.device.type, enabled=False):
        u, delta = u.float(), delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        b_m = _time_major(B, b, d, length, chunk, "B")
        c_m = _time_major(C, b, d, length, chunk, "C")
        g_b = b_m.shape[3] if b_m.shape[2] == b else 1
        # time-major (chunk, n_chunks, b, g, d // g, n): every step's slice is contiguous.
        # Padded steps have delta = 0: decay 1, input 0, so the state is unchanged; their outputs are dropped.
        log_decay = _time_major_channels(delta, chunk, g_b) * A.float().view(g_b, d // g_b, n)
        inp = _time_major_channels(delta * u, chunk, g_b) * b_m
        states = _chunked_linear_recurrence(log_decay, inp)
        g_c = c_m.shape[3] if c_m.shape[2] == b else 1
        y = (states.view(*states.shape[:3], g_c, d // g_c, n) * c_m).sum(-1)  # (chunk, n_chunks, b, g, d // g)
        y = y.reshape(chunk, -1, b, d).permute(2, 3, 1, 0).reshape(b, d, -1)[..., :length]
        out = y if D is None else y + u * D.float()[:, None]
        if z is not None:
            out = out * F.silu(z.float())
    return out.to(dtype_in)


def _chunked_linear_recurrence(log_decay: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """All states of ``h_t = exp(log_decay_t) * h_{t-1} + inp_t`` (h_{-1} = 0), inputs (chunk, n_chunks, ...).

    The chunks run their recurrence from a zero state side by side (``chunk`` steps); the state
    carried into chunk ``c`` is ``H_c = exp(sum of chunk c-1's log-decays) H_{c-1} + (chunk c-1's
    last local state)`` (``n_chunks`` steps), and the true states are ``local_t + exp(cumsum of the
    log-decays up to t) H_c``. The log-decays are <= 0 (``delta >= 0``, ``A < 0``): every exponential is <= 1.
    """
    # unbind, not indexing: one backward node for all steps (indexing's backward writes a full-size zero tensor per step)
    decay, inp = torch.exp(log_decay).unbind(0), inp.unbind(0)
    h = inp[0]
    local = [h]
    for t in range(1, len(inp)):
        h = decay[t] * h + inp[t]
        local.append(h)
    states = torch.stack(local)
    if states.shape[1] == 1:
        return states
    cum = torch.cumsum(log_decay, dim=0)
    chunk_decay, last = torch.exp(cum[-1]).unbind(0), states[-1].unbind(0)  # per chunk
    carry = [torch.zeros_like(last[0])]
    for c in range(1, len(last)):
        carry.append(chunk_decay[c - 1] * carry[-1] + last[c - 1])
    return states + torch.exp(cum) * torch.stack(carry)


# ---------------------------------------------------------------------------- SS2D
def _dt_projection(dt_rank: int, d_inner: int, dt_scale: float, dt_init: str, dt_min: float, dt_max: float,
                   dt_init_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's dt projection init: weight uniform (or constant) of std ``dt_rank**-0.5 * dt_scale``,
    bias the inverse softplus of a log-uniform step in [dt_min, dt_max]."""
    std = dt_rank**-0.5 * dt_scale
    if dt_init == "constant":
        weight = torch.full((d_inner, dt_rank), std)
    elif dt_init == "random":
        weight = torch.empty(d_inner, dt_rank).uniform_(-std, std)
    else:
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return weight, dt + torch.log(-torch.expm1(-dt))


class SS2D(nn.Module):
    """2D selective scan (MambaIR / VMamba): the feature map scanned in four directions, summed.

    Input (B, H, W, C) -> ``in_proj`` to ``x, z`` (``d_inner`` each) -> depthwise ``conv2d`` + SiLU
    -> the four sequences (row-major, column-major, and both reversed) through one selective scan
    (``x_proj_weight``, ``dt_projs_*``, ``A_logs``, ``Ds`` stacked over the K = 4 directions) ->
    summed back on the grid -> ``out_norm`` -> ``* silu(z)`` -> ``out_proj``.

    Args:
        d_model: channels C.
        d_state: state size n (16).
        d_conv: depthwise conv kernel (3).
        expand: ``d_inner = int(expand * d_model)`` (2).
        dt_rank: rank of the step projection (``"auto"``: ``ceil(d_model / 16)``).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: the step-size init (Mamba's).
        dropout: after ``out_proj`` (0).
        conv_bias: bias of the depthwise conv (True). bias: of ``in_proj``/``out_proj`` (False).
        scan_chunk_size: lit-sr's addition: :func:`selective_scan`'s ``chunk_size`` (``None``: by device;
            no key depends on it).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 2.0,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, dropout: float = 0.0, conv_bias: bool = True,
                 bias: bool = False, scan_chunk_size: int | None = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_chunk_size = scan_chunk_size
        k = 4
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner,
                                bias=conv_bias)
        self.act = nn.SiLU()
        bound = self.d_inner**-0.5  # nn.Linear's default init of the four x projections
        self.x_proj_weight = nn.Parameter(
            torch.empty(k, self.dt_rank + 2 * d_state, self.d_inner).uniform_(-bound, bound))
        dts = [_dt_projection(self.dt_rank, self.d_inner, dt_scale, dt_init, dt_min, dt_max, dt_init_floor)
               for _ in range(k)]
        self.dt_projs_weight = nn.Parameter(torch.stack([w for w, _ in dts]))  # (K, d_inner, rank)
        self.dt_projs_bias = nn.Parameter(torch.stack([bb for _, bb in dts]))  # (K, d_inner)
        # S4D-real init, the K copies merged: (K * d_inner, n) and (K * d_inner,)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * self.d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * self.d_inner))
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, H, W) -> (B, d_inner, H*W) in float32: the four directions scanned and summed on the grid."""
        bsz, d, h, w = x.shape
        length, k = h * w, 4
        x_hwwh = torch.stack([x.reshape(bsz, d, length), x.transpose(2, 3).reshape(bsz, d, length)], dim=1)
        xs = torch.cat([x_hwwh, torch.flip(x_hwwh, dims=[-1])], dim=1)  # (B, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        out_y = selective_scan(
            xs.float().reshape(bsz, k * d, length), dts.float().reshape(bsz, k * d, length),
            -torch.exp(self.A_logs.float()), bs.float(), cs.float(), self.Ds.float(), z=None,
            delta_bias=self.dt_projs_bias.float().view(-1), delta_softplus=True, chunk_size=self.scan_chunk_size,
        ).view(bsz, k, d, length)
        inv_y = torch.flip(out_y[:, 2:4], dims=[-1])
        wh_y = out_y[:, 1].view(bsz, d, w, h).transpose(2, 3).reshape(bsz, d, length)
        invwh_y = inv_y[:, 1].view(bsz, d, w, h).transpose(2, 3).reshape(bsz, d, length)
        return out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.forward_core(x).transpose(1, 2).reshape(bsz, h, w, -1)
        out = self.out_proj(self.out_norm(y) * F.silu(z))
        return self.dropout(out) if self.dropout is not None else out


# ---------------------------------------------------------------------------- the blocks
def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's DropPath): zero a sample's branch with ``prob``, scale the rest."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(conv(relu(conv(avgpool(x)))))``; keys ``attention.1``, ``attention.3``.

    Args:
        num_feat: channels. squeeze_factor: the hidden width is ``num_feat // squeeze_factor`` (>= 1).
    """

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        if num_feat // squeeze_factor < 1:
            raise ValueError(f"ChannelAttention: num_feat={num_feat} // squeeze_factor={squeeze_factor} is 0 "
                             f"(the authors' CAB squeezes by 30: SSMTF needs ngf >= 30)")
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention block: conv, GELU, conv, :class:`ChannelAttention` (keys ``cab.0``, ``cab.2``, ``cab.3``).

    Args:
        num_feat: channels. is_light_sr: compress by 6 instead of ``compress_ratio``.
        compress_ratio: hidden width ``num_feat // compress_ratio`` (3). squeeze_factor: of the attention (30).
    """

    def __init__(self, num_feat: int, is_light_sr: bool = False, compress_ratio: int = 3, squeeze_factor: int = 30):
        super().__init__()
        if is_light_sr:
            compress_ratio = 6
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class VSSBlock(nn.Module):
    """MambaIR's residual state-space block on (B, H*W, C) tokens.

    ``x = skip_scale * x + drop_path(SS2D(ln_1(x)))``, then ``x = skip_scale2 * x + CAB(ln_2(x))``.

    Args:
        hidden_dim: channels. drop_path: stochastic-depth rate (SSMTF: 0). attn_drop_rate: SS2D's dropout (0).
        d_state: SS2D's state size (16). expand: SS2D's expansion (SSMTF passes ``mlp_ratio`` 2).
        is_light_sr: CAB's light variant (False). scan_chunk_size: see :class:`SS2D`.
    """

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, attn_drop_rate: float = 0.0, d_state: int = 16,
                 expand: float = 2.0, is_light_sr: bool = False, scan_chunk_size: int | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, expand=expand, dropout=attn_drop_rate,
                                   scan_chunk_size=scan_chunk_size)
        self.drop_path = drop_path
        self.skip_scale = nn.Parameter(torch.ones(hidden_dim))
        self.conv_blk = CAB(hidden_dim, is_light_sr)
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.skip_scale2 = nn.Parameter(torch.ones(hidden_dim))

    def forward(self, tokens: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        bsz, _, c = tokens.shape
        x = tokens.view(bsz, *x_size, c)
        x = x * self.skip_scale + drop_path(self.self_attention(self.ln_1(x)), self.drop_path, self.training)
        conv = self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        return (x * self.skip_scale2 + conv).reshape(bsz, -1, c)


class BasicLayer(nn.Module):
    """``depth`` :class:`VSSBlock` (keys ``blocks.N``).

    Args:
        dim, depth: channels and blocks. drop_path: a rate, or one per block. d_state: SS2D's state size.
        mlp_ratio: SS2D's ``expand``. use_checkpoint: gradient checkpointing per block (the authors'
            flag crashes in their code, which calls ``checkpoint`` without ``x_size``; here it works).
        is_light_sr: CAB's light variant. scan_chunk_size: see :class:`SS2D`.
    """

    def __init__(self, dim: int, depth: int, drop_path: float | list[float] = 0.0, d_state: int = 16,
                 mlp_ratio: float = 2.0, use_checkpoint: bool = False, is_light_sr: bool = False,
                 scan_chunk_size: int | None = None):
        super().__init__()
        self.dim, self.depth, self.use_checkpoint = dim, depth, use_checkpoint
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path[i] if isinstance(drop_path, list) else drop_path, 0.0, d_state, mlp_ratio,
                     is_light_sr, scan_chunk_size)
            for i in range(depth))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = checkpoint(blk, x, x_size, use_reentrant=False)
            else:
                x = blk(x, x_size)
        return x


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H*W, C) tokens, then ``norm`` if ``norm_layer`` is given (key ``norm``).

    Args:
        embed_dim: channels. norm_layer: e.g. ``nn.LayerNorm``, or ``None``.
    """

    def __init__(self, embed_dim: int = 96, norm_layer: type[nn.Module] | None = None):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class PatchUnEmbed(nn.Module):
    """(B, H*W, C) tokens -> (B, C, H, W); no parameters.

    Args:
        embed_dim: channels.
    """

    def __init__(self, embed_dim: int = 96):
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *x_size)


class ResidualGroup(nn.Module):
    """Residual state-space group: :class:`BasicLayer`, back to the grid, a conv, back to tokens, plus the input.

    Keys ``residual_group.blocks.N.*`` and ``conv`` (``"1conv"``) or ``conv.0/2/4`` (``"3conv"``).

    Args:
        dim, depth, d_state, mlp_ratio, drop_path, use_checkpoint, is_light_sr: of the :class:`BasicLayer`.
        resi_connection: ``"1conv"`` (SSMTF's) or ``"3conv"``. scan_chunk_size: see :class:`SS2D`.
    """

    def __init__(self, dim: int, depth: int, d_state: int = 16, mlp_ratio: float = 4.0,
                 drop_path: float | list[float] = 0.0, use_checkpoint: bool = False, resi_connection: str = "1conv",
                 is_light_sr: bool = False, scan_chunk_size: int | None = None):
        super().__init__()
        self.dim = dim
        self.residual_group = BasicLayer(dim, depth, drop_path, d_state, mlp_ratio, use_checkpoint, is_light_sr,
                                         scan_chunk_size)
        if resi_connection == "1conv":
            self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        elif resi_connection == "3conv":
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(dim // 4, dim, 3, 1, 1))
        else:
            raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")
        self.patch_embed = PatchEmbed(dim, None)
        self.patch_unembed = PatchUnEmbed(dim)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        return self.patch_embed(self.conv(self.patch_unembed(self.residual_group(x, x_size), x_size))) + x


class MamabaBlock(nn.Module):
    """SSMTF's restoration body (the authors' spelling): tokens, LayerNorm, dropout, ``layers`` residual groups, LayerNorm.

    Keys ``patch_embed.norm``, ``mamaba.N.residual_group.blocks.M.*``, ``mamaba.N.conv``, ``norm``.
    (B, C, H, W) in and out.

    Args:
        num_features: channels (SSMTF: ``ngf``). layers: residual groups (3). depths: blocks per group (6).
        d_state: SS2D's state size (16). mlp_ratio: SS2D's expansion (2).
        drop_rate: the dropout on the tokens (the authors' ``pos_drop``, 0.1: active in training).
        use_checkpoint: see :class:`BasicLayer`. scan_chunk_size: see :class:`SS2D`.
    """

    def __init__(self, num_features: int, layers: int = 3, depths: int = 6, d_state: int = 16,
                 mlp_ratio: float = 2.0, drop_rate: float = 0.1, use_checkpoint: bool = False,
                 scan_chunk_size: int | None = None):
        super().__init__()
        self.patch_embed = PatchEmbed(num_features, nn.LayerNorm)
        self.patch_unembed = PatchUnEmbed(num_features)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.mamaba = nn.ModuleList(
            ResidualGroup(num_features, depths, d_state, mlp_ratio, 0.0, use_checkpoint, "1conv", False, scan_chunk_size)
            for _ in range(layers))
        self.norm = nn.LayerNorm(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed(x))
        for group in self.mamaba:
            x = group(x, x_size)
        return self.patch_unembed(self.norm(x), x_size)
