"""DATSR (Cao et al., "Reference-based Image Super-Resolution with Deformable Attention
Transformer", ECCV 2022; code: caojiezhang/DATSR), ported to one ``nn.Module``.

The authors' model is three networks, each saved (or loaded) on its own:

* ``net_extractor`` (:class:`ContrasExtractorSep`): C2-Matching's contrastive feature extractor,
  two VGG16 stems up to ``conv3_1`` (one for the bicubic-upsampled LR, one for the reference),
  loaded from ``feature_extraction.pth`` and never trained by DATSR;
* ``net_map`` (:class:`FlowSimCorrespondenceGenerationArch`): the correspondence. Normalised 3x3
  patches of the two extractor maps are matched (cosine similarity, the best reference patch per
  LR-up patch), giving a flow, nine shifted copies of it (one per kernel point of the deformable
  convolutions) and the similarity, at relu3_1 and repeated to relu2_1 and relu1_1; and a frozen
  ImageNet VGG19 (torchvision's, never saved by the authors) whose relu1_1/2_1/3_1 features of the
  reference are what gets transferred;
* ``net_g`` (:class:`SwinUnetv3RestorationNet`): the restoration U-Net. At each of its five
  stages the reference features are warped by the flow (``flow_warp``, ``align_corners=True``)
  and aggregated by a modulated deformable convolution whose offsets are the flow plus a learned
  residual (``10 * tanh``) and whose mask is ``sigmoid(mask * similarity)`` ("deformable
  attention"), then refined by a Swin stage (:mod:`lit_sr.archs.datsr_swin`).

:class:`DATSR` holds the three as ``net_extractor``, ``net_map`` and ``net_g`` with the authors'
module and parameter names inside each (``net_g.dyn_agg_restore.up_small_dyn_agg.weight``,
``net_map.vgg.vgg_net.conv1_1.weight``, ``net_extractor.feature_extraction_image1.model.conv1_1
.weight``), and their buffers (Swin ``relative_position_index`` and ``attn_mask``, the VGG
``mean``/``std``). :func:`load_datsr_authors` loads the authors' separate files strictly into it;
lit-sr's own checkpoints of it are one file (``{'params': state}``).

The C2-Matching pieces (VGG stems, extractor, correspondence, deformable convolution, padding) live in
:mod:`lit_sr.archs.c2matching`, shared with SSMTF, and stay importable from here.

Kept from the authors' code, on purpose: the Swin masks stored for the fixed sizes 160/80/40
(``img_size``), ``flow_warp`` with ``align_corners=True``, bilinear x4 upsampling for the global
residual, the flow defined at the top-left corner of each matched patch (zero on the last two rows
and columns), the zero padding of a differently sized reference (their test loader pads the input
and the reference to a common size), the deformable convolution with ``deformable_groups`` and
``max_residue_magnitude=10``. Deformable convolution is ``torchvision.ops.deform_conv2d`` (the same
offset and mask layout as mmcv's ``modulated_deform_conv2d``; no compiled extension).

Differences, each with its reason:

* the batch is matched at once (one batched matrix product per chunk of LR-up patches) instead of
  image by image; the result is the same (tested against a naive loop);
* the unused ``content_extractor`` of ``net_g`` (the authors compute it and drop the result) is
  kept for its keys but not run, and frozen (it gets no gradient in their code either);
* the authors' log warning when the mean offset exceeds 100 px is left out (a host sync per call);
* inputs of any size: the LR is zero-padded so that its sides are multiples of ``window_size`` and
  the reference is mod-cropped to a multiple of 4 and zero-padded to the same HR size (the
  authors' loader pads only to a common size; their Swin stages need multiples of the window);
  the output is cropped back to ``4h x 4w`` and not clamped;
* the LR-up image of the matching is MATLAB-bicubic (:func:`lit_sr.ops.imresize`, a = -0.5, as
  PIL's bicubic for upscaling; PIL rounds to uint8 and renormalises its kernel at the border)
  unless the caller passes ``lr_up``.
"""


from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from lit_sr.archs.c2matching import (
    TRANSFER_LAYERS,
    VGG_LAYERS,
    ContentExtractor,
    ContrasExtractorLayer,
    ContrasExtractorSep,
    DeformBackend,
    FlowSimCorrespondenceGenerationArch,
    VGGFeatureExtractor,
    add_pre_offset,
    check_deform_backend,
    deform_conv2d_sampled,
    feature_match_index,
    flow_warp,
    index_to_flow,
    init_frozen_features,
    modulated_deform_conv,
    pad_refsr_pair,
    shifted_offsets,
    srntt_init_weights,
    tensor_shift,
)
from lit_sr.archs.datsr_swin import SwinBlock
from lit_sr.io import load_weights

# C2-Matching's pieces moved to lit_sr.archs.c2matching; importable from here as before
__all__ = [
    "DATSR", "DynAgg", "DynamicAggregationRestoration", "SwinUnetv3RestorationNet", "datsr_state_from_authors",
    "load_datsr_authors", "AUTHORS_NETWORKS", "TRANSFER_LAYERS", "VGG_LAYERS", "ContentExtractor",
    "ContrasExtractorLayer", "ContrasExtractorSep", "DeformBackend", "FlowSimCorrespondenceGenerationArch",
    "VGGFeatureExtractor", "add_pre_offset", "check_deform_backend", "deform_conv2d_sampled", "feature_match_index",
    "flow_warp", "index_to_flow", "init_frozen_features", "modulated_deform_conv", "pad_refsr_pair",
    "shifted_offsets", "srntt_init_weights", "tensor_shift",
]


class DynAgg(nn.Module):
    """Deformable attention: the authors' ``DCN_sep_pre_multi_offset_flow_similarity`` (a DCNv2).

    Offsets and masks come from a separate feature (``conv_offset_mask``); the offsets are a
    learned residual ``max_residue_magnitude * tanh(.)`` added to the precomputed shifted flows,
    the mask is ``sigmoid(mask * similarity)``. Keys: ``weight``, ``bias``, ``conv_offset_mask.*``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: of the deformable conv.
        deformable_groups: offset groups (DATSR: 8).
        extra_offset_mask: offsets from ``x[1]`` (True, DATSR's use) instead of from the input.
        max_residue_magnitude: bound of the learned residual offset in pixels (10).
        use_sim: multiply the mask logits by the similarity (True).
        deform_backend: ``"torchvision"`` (``torchvision.ops.deform_conv2d``), ``"grid_sample"``
            (:func:`deform_conv2d_sampled`, the same values, faster backward on CPU) or ``"auto"``
            (torchvision on CUDA, grid_sample elsewhere). lit-sr's addition; no key depends on it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 dilation: int = 1, deformable_groups: int = 1, extra_offset_mask: bool = True,
                 max_residue_magnitude: float = 10, use_sim: bool = True, deform_backend: DeformBackend = "auto"):
        super().__init__()
        self.deform_backend = check_deform_backend(deform_backend)
        if kernel_size != 3:
            raise ValueError(f"DynAgg takes 9 shifted flows, one per point of a 3x3 kernel; got kernel_size={kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.deformable_groups = deformable_groups
        self.extra_offset_mask, self.max_residue_magnitude, self.use_sim = extra_offset_mask, max_residue_magnitude, use_sim
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset_mask = nn.Conv2d(in_channels, deformable_groups * 3 * kernel_size * kernel_size,
                                          kernel_size, stride, padding, bias=True)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The authors' DCNv2 init: uniform(+-1/sqrt(fan_in)) weight, zero bias, zero offset/mask conv."""
        stdv = 1.0 / (self.in_channels * self.kernel_size[0] * self.kernel_size[1]) ** 0.5
        self.weight.uniform_(-stdv, stdv)
        self.bias.zero_()
        self.conv_offset_mask.weight.zero_()
        self.conv_offset_mask.bias.zero_()

    def forward(self, x, pre_offset: torch.Tensor, pre_sim: torch.Tensor) -> torch.Tensor:
        """``x``: ``[features, offset_features]`` (or one tensor without ``extra_offset_mask``);
        ``pre_offset``: (b, 9, h, w, 2) ``[x, y]``; ``pre_sim``: (b, 1, h, w)."""
        if self.extra_offset_mask:
            out, x = self.conv_offset_mask(x[1]), x[0]
        else:
            out = self.conv_offset_mask(x)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        if self.max_residue_magnitude:
            offset = self.max_residue_magnitude * torch.tanh(offset)
        offset = add_pre_offset(offset, pre_offset, self.deformable_groups)
        mask = torch.sigmoid(mask * pre_sim) if self.use_sim else torch.sigmoid(mask)
        return modulated_deform_conv(x, offset, mask, self.weight, self.bias, self.stride[0], self.padding[0],
                                     self.dilation[0], self.deform_backend)


def _offset_convs(ngf: int, channels: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    return nn.Conv2d(ngf + 2 * channels, channels, 3, 1, 1), nn.Conv2d(channels, channels, 3, 1, 1)


def _head(ngf: int, channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ngf + channels, ngf, 3, 1, 1), nn.LeakyReLU(0.1, True))


def _up_tail(ngf: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ngf, ngf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1, True))


# (stage prefix, VGG layer, channels) of the five aggregation stages, in forward order
_STAGES = (("down_large", "relu1_1", 64), ("down_medium", "relu2_1", 128), ("up_small", "relu3_1", 256),
           ("up_medium", "relu2_1", 128), ("up_large", "relu1_1", 64))


class DynamicAggregationRestoration(nn.Module):
    """The U-Net of ``net_g``: five deformable-attention stages (x1, /2 down; /4, /2, x1 up), each with a Swin stage.

    Args:
        ngf: feature channels of the U-Net (also the Swin width).
        n_blocks: unused here (the authors' signature).
        groups: deformable groups of the aggregation.
        img_size: size of the large stage's stored Swin masks; /2 and /4 for the others (160).
        embed_dim: unused (the authors pass ``ngf``).
        depths, num_heads, window_size: of every Swin stage.
        use_checkpoint: gradient checkpointing in the two large Swin stages (the authors').
        patch_size, in_chans, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
        drop_path_rate, norm_layer, ape, patch_norm: the authors' signature; only ``mlp_ratio``
            (2) and ``drop_path_rate`` (0.1, their SwinBlock default) shape the network.
        deform_backend: see :class:`DynAgg`.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, img_size: int = 160, patch_size: int = 1,
                 in_chans: int = 3, embed_dim: int = 64, depths: Sequence[int] = (6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, norm_layer=nn.LayerNorm,
                 ape: bool = False, patch_norm: bool = True, use_checkpoint: bool = False,
                 deform_backend: DeformBackend = "auto"):
        super().__init__()
        self.unet_head = nn.Conv2d(3, ngf, kernel_size=3, stride=1, padding=1)
        swin = dict(embed_dim=ngf, depths=depths, num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
                    drop_path_rate=drop_path_rate)
        sizes = {"large": img_size, "medium": img_size // 2, "small": img_size // 4}
        for prefix, _, channels in _STAGES:
            conv1, conv2 = _offset_convs(ngf, channels)
            setattr(self, f"{prefix}_offset_conv1", conv1)
            setattr(self, f"{prefix}_offset_conv2", conv2)
            setattr(self, f"{prefix}_dyn_agg", DynAgg(channels, channels, 3, stride=1, padding=1, dilation=1,
                                                       deformable_groups=groups, extra_offset_mask=True,
                                                       deform_backend=deform_backend))
            direction, scale = prefix.split("_")
            setattr(self, f"{direction}_head_{scale}", _head(ngf, channels))
            setattr(self, f"{direction}_body_{scale}", SwinBlock(img_size=sizes[scale], use_checkpoint=(
                use_checkpoint and scale == "large"), **swin))
        self.down_tail_large = nn.Conv2d(ngf, ngf, kernel_size=3, stride=2, padding=1)
        self.down_tail_medium = nn.Conv2d(ngf, ngf, kernel_size=3, stride=2, padding=1)
        self.up_tail_small = _up_tail(ngf)
        self.up_tail_medium = _up_tail(ngf)
        self.up_tail_large = nn.Sequential(nn.Conv2d(ngf, ngf // 2, 3, 1, 1), nn.LeakyReLU(0.1, True),
                                           nn.Conv2d(ngf // 2, 3, 3, 1, 1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    flow_warp = staticmethod(flow_warp)

    def _aggregate(self, prefix: str, x: torch.Tensor, warped: torch.Tensor, ref_feat: torch.Tensor,
                   pre_offset: torch.Tensor, pre_sim: torch.Tensor) -> torch.Tensor:
        offset = torch.cat([x, warped, ref_feat], 1)
        offset = self.lrelu(getattr(self, f"{prefix}_offset_conv1")(offset))
        offset = self.lrelu(getattr(self, f"{prefix}_offset_conv2")(offset))
        return self.lrelu(getattr(self, f"{prefix}_dyn_agg")([ref_feat, offset], pre_offset, pre_sim))

    def forward(self, base: torch.Tensor, x, pre_offset_flow_sim, img_ref_feat: Mapping[str, torch.Tensor]):
        """``base``: the bilinear x4 LR; ``x``: unused (the authors pass the content features)."""
        pre_offset, pre_flow, pre_sim = pre_offset_flow_sim
        warped = {k: self.flow_warp(img_ref_feat[k], pre_flow[k]) for k in TRANSFER_LAYERS}

        def agg(prefix: str, layer: str, h: torch.Tensor) -> torch.Tensor:
            return self._aggregate(prefix, h, warped[layer], img_ref_feat[layer], pre_offset[layer], pre_sim[layer])

        x0 = self.unet_head(base)
        h = self.down_head_large(torch.cat([x0, agg("down_large", "relu1_1", x0)], 1))
        x1 = self.down_tail_large(self.down_body_large(h) + x0)
        h = self.down_head_medium(torch.cat([x1, agg("down_medium", "relu2_1", x1)], 1))
        x2 = self.down_tail_medium(self.down_body_medium(h) + x1)
        h = self.up_head_small(torch.cat([x2, agg("up_small", "relu3_1", x2)], 1))
        x = self.up_tail_small(self.up_body_small(h) + x2)
        h = self.up_head_medium(torch.cat([x + x1, agg("up_medium", "relu2_1", x)], 1))
        x = self.up_tail_medium(self.up_body_medium(h) + x)
        h = self.up_head_large(torch.cat([x + x0, agg("up_large", "relu1_1", x)], 1))
        return self.up_tail_large(self.up_body_large(h) + x)


class SwinUnetv3RestorationNet(nn.Module):
    """``net_g``: the restoration network, with the authors' constructor arguments.

    Args:
        ngf: feature channels (CUFED recipe: 128).
        n_blocks: residual blocks of the (unused) content extractor (8).
        groups: deformable groups (8).
        embed_dim: unused, as in the authors' code (the Swin width is ``ngf``).
        depths: Swin blocks per residual group of every Swin stage ((4, 4)).
        num_heads: heads per group ((4, 4)).
        window_size: Swin window (8).
        use_checkpoint: gradient checkpointing of the large Swin stages.
        img_size: lit-sr's addition (default the authors' fixed 160): the size the stored Swin
            masks are built for (160, 80, 40 by stage); only buffer shapes depend on it.
        deform_backend: lit-sr's addition, see :class:`DynAgg`.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, embed_dim: int = 64,
                 depths: Sequence[int] = (8, 8), num_heads: Sequence[int] = (8, 8), window_size: int = 8,
                 use_checkpoint: bool = False, img_size: int = 160, deform_backend: DeformBackend = "auto"):
        super().__init__()
        self.content_extractor = ContentExtractor(in_nc=3, out_nc=3, nf=ngf, n_blocks=n_blocks)
        self.dyn_agg_restore = DynamicAggregationRestoration(
            ngf=ngf, n_blocks=n_blocks, groups=groups, img_size=img_size, embed_dim=ngf, depths=depths,
            num_heads=num_heads, window_size=window_size, use_checkpoint=use_checkpoint, deform_backend=deform_backend)
        srntt_init_weights(self, init_gain=0.02)
        for prefix, _, _ in _STAGES:  # the authors' re_init_dcn_offset: the offset/mask convs start at zero
            offset_mask = getattr(self.dyn_agg_restore, f"{prefix}_dyn_agg").conv_offset_mask
            nn.init.zeros_(offset_mask.weight)
            nn.init.zeros_(offset_mask.bias)
        # The authors compute the content features and never use them: not run here, and frozen
        # (no gradient reaches them in their code either; DDP would otherwise see unused parameters).
        self.content_extractor.requires_grad_(False)

    def forward(self, x: torch.Tensor, pre_offset_flow_sim, img_ref_feat: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base = F.interpolate(x, None, 4, "bilinear", False)
        return self.dyn_agg_restore(base, None, pre_offset_flow_sim, img_ref_feat) + base


# ---------------------------------------------------------------------------- the whole model
class DATSR(nn.Module):
    """DATSR for x4 reference-based SR, called as ``net(lr, ref)`` (or ``net(lr, ref, lr_up)``).

    ``lr``: (N, 3, h, w) in [0, 1]; ``ref``: (N, 3, Hr, Wr) in [0, 1], any size (see the module
    docstring for the padding); output (N, 3, 4h, 4w), not clamped. :meth:`forward_authors` is the
    authors' exact call on pre-padded inputs.

    The correspondence's features are frozen, as in the authors' training: ``net_map``'s VGG19 is
    torchvision's ImageNet model and ``net_extractor`` C2-Matching's trained extractor. Neither
    can be downloaded here, so the constructor needs their files or an explicit stand-in:

    Args:
        ngf, n_blocks, groups, embed_dim, depths, num_heads, window_size, use_checkpoint: of
            ``net_g`` (:class:`SwinUnetv3RestorationNet`; the CUFED recipe: 128, 8, 8, 128, (4, 4),
            (4, 4), 8).
        patch_size, stride, vgg_layer_list, vgg_type: of ``net_map`` (3, 1, relu1_1/2_1/3_1, vgg19).
        img_size: HR size the Swin masks are stored for (the authors' fixed 160).
        upscale: must be 4.
        vgg_weights: torchvision's VGG19 file (``vgg19-dcbb9e9d.pth``) for ``net_map``.
        extractor_weights: C2-Matching's ``feature_extraction.pth`` (the authors' keys, loaded
            strictly) or torchvision's VGG16 file (keys ``features.N``: C2-Matching's starting point).
        random_features: allow missing files: the frozen VGG19 and extractor keep a seeded random
            init (the matching then runs on random conv features, a stand-in for CPU runs that is
            logged as a warning), or are filled later by :func:`load_datsr_authors` or lit-sr
            weights (which carry them).
        deform_backend: the deformable convolution's implementation (see :class:`DynAgg`).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, embed_dim: int = 64,
                 depths: Sequence[int] = (8, 8), num_heads: Sequence[int] = (8, 8), window_size: int = 8,
                 use_checkpoint: bool = False, patch_size: int = 3, stride: int = 1,
                 vgg_layer_list: Sequence[str] = TRANSFER_LAYERS, vgg_type: str = "vgg19", img_size: int = 160,
                 upscale: int = 4, vgg_weights: str | None = None, extractor_weights: str | None = None,
                 random_features: bool = False, deform_backend: DeformBackend = "auto"):
        super().__init__()
        if upscale != 4:
            raise ValueError(f"DATSR is a x4 network (features transferred at x1, x2, x4); got upscale={upscale!r}")
        if ngf % 2 or ngf < 2:
            raise ValueError(f"ngf must be an even number >= 2 (the last stage halves it), got {ngf!r}")
        if window_size < 1 or img_size % 4:
            raise ValueError(f"window_size must be >= 1 and img_size a multiple of 4, got {window_size}, {img_size}")
        self.upscale, self.window_size = upscale, window_size
        self.net_extractor = ContrasExtractorSep()
        self.net_map = FlowSimCorrespondenceGenerationArch(patch_size, stride, vgg_layer_list, vgg_type)
        self.net_g = SwinUnetv3RestorationNet(ngf, n_blocks, groups, embed_dim, depths, num_heads, window_size,
                                              use_checkpoint, img_size, deform_backend)
        self.net_extractor.requires_grad_(False)  # the authors never optimise it
        init_frozen_features("DATSR", self.net_extractor, self.net_map.vgg, vgg_weights, extractor_weights,
                             random_features)

    def correspondence(self, lr_up: torch.Tensor, ref: torch.Tensor):
        """``net_map``'s output for LR-up and reference of one size: ``([offset, flow, similarity], ref_features)``."""
        return self.net_map(self.net_extractor(lr_up, ref), ref)

    def forward_authors(self, lr: torch.Tensor, lr_up: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The authors' three calls: ``net_g(lr, *net_map(net_extractor(lr_up, ref), ref))``.

        ``lr`` (N, 3, h, w) with h, w multiples of ``window_size``; ``lr_up`` and ``ref`` (N, 3, 4h, 4w).
        """
        pre_offset_flow_sim, img_ref_feat = self.correspondence(lr_up, ref)
        return self.net_g(lr, pre_offset_flow_sim, img_ref_feat)

    def pad_inputs(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: torch.Tensor | None = None):
        """Zero-pad LR (to multiples of ``window_size``), mod-crop and zero-pad the reference to the x4 size, make LR-up."""
        return pad_refsr_pair(lr, ref, self.upscale, self.window_size, lr_up)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: torch.Tensor | None = None) -> torch.Tensor:
        h, w = lr.shape[-2:]
        lr_pad, lr_up, ref = self.pad_inputs(lr, ref, lr_up)
        return self.forward_authors(lr_pad, lr_up, ref)[..., : self.upscale * h, : self.upscale * w]


# ---------------------------------------------------------------------------- the authors' files
AUTHORS_NETWORKS = ("net_g", "net_extractor", "net_map")


def datsr_state_from_authors(**states: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One lit-sr state_dict from the authors' per-network state_dicts (``net_g=``, ``net_extractor=``, ``net_map=``)."""
    unknown = sorted(set(states) - set(AUTHORS_NETWORKS))
    if unknown:
        raise ValueError(f"unknown DATSR networks {unknown}; expected some of {list(AUTHORS_NETWORKS)}")
    return {f"{net}.{key}": value for net, state in states.items() for key, value in state.items()}


def load_datsr_authors(model: DATSR, net_g: str | Path, net_extractor: str | Path | None = None,
                       net_map: str | Path | None = None) -> DATSR:
    """Load the authors' separate files strictly into ``model``'s three sub-networks.

    Their release is ``net_g_<iter>.pth`` (the restoration network, a plain state_dict) and
    C2-Matching's ``feature_extraction.pth`` (``net_extractor``); ``net_map`` holds only the
    frozen torchvision VGG19, which they never save (pass ``vgg_weights`` to :class:`DATSR`, or a
    file saved from ``net_map.state_dict()`` here). A ``module.`` prefix is stripped; any missing
    or unexpected key, or another shape, raises naming the file.
    """
    for name, path in (("net_g", net_g), ("net_extractor", net_extractor), ("net_map", net_map)):
        if path is not None:
            load_weights(getattr(model, name), path, strict=True)
    return model
