"""SSMTF (the Mamba RefSR of "Multi-Scale Texture Fusion for Reference-based Image Super-Resolution:
New Dataset and Solution"; code: edbca/SSMTF), ported to one ``nn.Module``.

SSMTF is C2-Matching's pipeline (Jiang et al., CVPR 2021) whose restoration bodies are MambaIR
residual state-space groups. Like DATSR, the authors' model is three networks, each saved on its own:

* ``net_extractor`` (:class:`~lit_sr.archs.c2matching.ContrasExtractorSep`): the contrastive
  extractor (VGG16 to ``conv3_1``, two stems), the stage-2 student ``net_student_latest_*.pth``;
* ``net_map`` (:class:`~lit_sr.archs.c2matching.CorrespondenceGenerationArch`): 3x3 patch matching
  at relu3_1 giving nine shifted flows per scale, and the frozen ImageNet VGG19 whose
  relu1_1/2_1/3_1 features of the reference are transferred (torchvision's, never saved);
* ``net_g`` (:class:`RestorationNet`): a content extractor on the LR (conv + ``n_blocks``
  residual blocks), then three stages, x1 (``small``, relu3_1), x2 (``medium``, relu2_1) and x4
  (``large``, relu1_1): the reference features aggregated by a modulated deformable convolution
  whose offsets are the shifted flows plus a learned residual (:class:`DCN_sep_pre_multi_offset`,
  no bound on the residual and no similarity, unlike DATSR), concatenated with the features, a
  conv head, a :class:`~lit_sr.archs.mambair_blocks.MamabaBlock` body (3 residual groups of 6
  visual state-space blocks) with a skip, and a pixel-shuffle tail; plus the bilinear x4 LR.

The port follows ``mmsr/models/archs/{ref_restoration_arch, blocks, corres_generation_arch,
contras_extractor_arch}.py`` at commit 432a749 and keeps every module and parameter name, so
``net_g_<iter>.pth`` (a plain state_dict; their ``save_network`` strips ``module.``) and the
extractor file load strictly into ``net_g`` and ``net_extractor`` (:func:`load_ssmtf_authors`):
``dyn_agg_restore.small_dyn_agg.deform_conv.weight``, ``dyn_agg_restore.body_large.mamaba.2
.residual_group.blocks.5.self_attention.A_logs``, ``content_extractor.body.15.conv2.bias``.

Kept from the authors' code: the constructor arguments of ``RestorationNet`` (``ngf``,
``n_blocks``, ``groups``) with the body they hard-code (3 groups of depth 6, ``d_state`` 16,
``mlp_ratio`` 2: lit-sr's keyword arguments, defaulting to theirs), the 0.1 dropout on the tokens
of every body (active in training), SRNTT's N(0, 0.02) init of every conv and linear weight with
zero offset convs, torchvision's ``DeformConv2d`` keys (``deform_conv.weight``/``bias``), the
flows defined at the top-left of the matched patch. The CAB squeezes channels by 30, so ``ngf``
must be at least 30 (their code fails below it too).

Choices, each with its reason:

* the selective scan is :func:`lit_sr.archs.mambair_blocks.selective_scan` (pure PyTorch, any
  device, ``mamba_ssm``'s ``selective_scan_ref`` semantics, chunked) instead of the
  ``selective_scan_fn`` CUDA kernel: same values up to float rounding, slower and with memory
  linear in ``d_state`` on large maps;
* the deformable convolution is ``torchvision.ops.deform_conv2d`` on CUDA and its ``grid_sample``
  equivalent elsewhere (``deform_backend``), as DATSR's; the authors' print when the mean learned
  offset exceeds 100 px is left out (a host sync per call);
* the batch is matched at once (C2-Matching loops over images; same result);
* inputs of any size: the reference is mod-cropped to a multiple of 4 and the pair zero-padded to
  one size (their test loader pads the pair to a common size); the output is cropped to
  ``4h x 4w``, not clamped. LR-up (the image matched) is MATLAB-bicubic unless given (theirs: PIL
  bicubic on uint8);
* the correspondence's VGG19 and extractor are frozen (they are never optimised in the authors'
  training either) and need their files, or ``random_features`` for a logged random stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import DeformConv2d

from lit_sr.archs.c2matching import (
    TRANSFER_LAYERS,
    ContentExtractor,
    ContrasExtractorSep,
    CorrespondenceGenerationArch,
    DeformBackend,
    add_pre_offset,
    check_deform_backend,
    init_frozen_features,
    modulated_deform_conv,
    pad_refsr_pair,
    srntt_init_weights,
)
from lit_sr.archs.mambair_blocks import MamabaBlock
from lit_sr.io import load_weights


class DCN_sep_pre_multi_offset(nn.Module):  # noqa: N801 - the authors' class name
    """Modulated deformable convolution whose offsets are precomputed flows plus a learned residual.

    Offsets and mask come from a separate feature (``conv_offset_mask``, zero-initialised); the
    residual offsets are added to the nine shifted flows unbounded, the mask is ``sigmoid``.
    Keys: ``conv_offset_mask.{weight,bias}``, ``deform_conv.{weight,bias}`` (torchvision's ``DeformConv2d``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: of the deformable conv
            (``kernel_size`` 3: one shifted flow per kernel point).
        deformable_groups: offset groups (SSMTF: 8).
        extra_offset_mask: offsets from ``x[1]`` (True, SSMTF's use) instead of from the input.
        deform_backend: lit-sr's addition, see :func:`~lit_sr.archs.c2matching.modulated_deform_conv`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 dilation: int = 1, deformable_groups: int = 1, extra_offset_mask: bool = True,
                 deform_backend: DeformBackend = "auto"):
        super().__init__()
        if kernel_size != 3:
            raise ValueError(f"the precomputed offsets are 9 shifted flows, one per point of a 3x3 kernel; "
                             f"got kernel_size={kernel_size}")
        self.deform_backend = check_deform_backend(deform_backend)
        self.extra_offset_mask, self.deformable_groups = extra_offset_mask, deformable_groups
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.out_channels = out_channels
        self.conv_offset_mask = nn.Conv2d(in_channels, deformable_groups * 3 * kernel_size * kernel_size,
                                          kernel_size, stride, padding, bias=True)
        self.deform_conv = DeformConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                        dilation=dilation)
        self.init_offset()

    @torch.no_grad()
    def init_offset(self) -> None:
        """Zero the offset/mask conv (the learned residual starts at 0, the mask at 0.5)."""
        self.conv_offset_mask.weight.zero_()
        self.conv_offset_mask.bias.zero_()

    def forward(self, x, pre_offset: torch.Tensor) -> torch.Tensor:
        """``x``: ``[features, offset_features]`` (or one tensor without ``extra_offset_mask``);
        ``pre_offset``: (b, 9, h, w, 2) ``[x, y]`` shifted flows."""
        if self.extra_offset_mask:
            out, x = self.conv_offset_mask(x[1]), x[0]
        else:
            out = self.conv_offset_mask(x)
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = add_pre_offset(torch.cat((o1, o2), dim=1), pre_offset, self.deformable_groups)
        return modulated_deform_conv(x, offset, torch.sigmoid(mask), self.deform_conv.weight, self.deform_conv.bias,
                                     self.stride, self.padding, self.dilation, self.deform_backend)


# (scale prefix, VGG layer, channels) of the three stages, in forward order
_STAGES = (("small", "relu3_1", 256), ("medium", "relu2_1", 128), ("large", "relu1_1", 64))


class DynamicAggregationRestoration(nn.Module):
    """SSMTF's three stages (x1, x2, x4 of the LR): deformable aggregation, head, Mamba body, tail.

    Args:
        ngf: feature channels (SSMTF: 64; >= 30, even).
        n_blocks: unused here (the authors' signature).
        groups: deformable groups (8).
        mamba_layers, mamba_depth: residual groups per body and blocks per group (the authors' 3, 6).
        d_state, mlp_ratio: SS2D's state size and expansion (16, 2).
        drop_rate: dropout on the body's tokens (0.1).
        use_checkpoint: gradient checkpointing of the state-space blocks.
        scan_chunk_size: the selective scan's chunk (``None``: ``L`` on CPU, ``ceil(sqrt(L))`` elsewhere).
        deform_backend: see :class:`DCN_sep_pre_multi_offset`.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, mamba_layers: int = 3,
                 mamba_depth: int = 6, d_state: int = 16, mlp_ratio: float = 2.0, drop_rate: float = 0.1,
                 use_checkpoint: bool = False, scan_chunk_size: int | None = None,
                 deform_backend: DeformBackend = "auto"):
        super().__init__()
        for scale, _, channels in _STAGES:
            setattr(self, f"{scale}_offset_conv1", nn.Conv2d(ngf + channels, channels, 3, 1, 1, bias=True))
            setattr(self, f"{scale}_offset_conv2", nn.Conv2d(channels, channels, 3, 1, 1, bias=True))
            setattr(self, f"{scale}_dyn_agg", DCN_sep_pre_multi_offset(
                channels, channels, 3, stride=1, padding=1, dilation=1, deformable_groups=groups,
                extra_offset_mask=True, deform_backend=deform_backend))
            setattr(self, f"head_{scale}", nn.Sequential(nn.Conv2d(ngf + channels, ngf, 3, 1, 1),
                                                         nn.LeakyReLU(0.1, True)))
            setattr(self, f"body_{scale}", MamabaBlock(ngf, mamba_layers, mamba_depth, d_state, mlp_ratio, drop_rate,
                                                       use_checkpoint, scan_chunk_size))
        self.tail_small = nn.Sequential(nn.Conv2d(ngf, ngf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1, True))
        self.tail_medium = nn.Sequential(nn.Conv2d(ngf, ngf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1, True))
        self.tail_large = nn.Sequential(nn.Conv2d(ngf, ngf // 2, 3, 1, 1), nn.LeakyReLU(0.1, True),
                                        nn.Conv2d(ngf // 2, 3, 3, 1, 1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, x: torch.Tensor, pre_offset: Mapping[str, torch.Tensor],
                img_ref_feat: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``x``: the content features (b, ngf, h, w); returns the x4 residual (b, 3, 4h, 4w)."""
        for scale, layer, _ in _STAGES:
            ref_feat = img_ref_feat[layer]
            offset = self.lrelu(getattr(self, f"{scale}_offset_conv1")(torch.cat([x, ref_feat], 1)))
            offset = self.lrelu(getattr(self, f"{scale}_offset_conv2")(offset))
            swapped = self.lrelu(getattr(self, f"{scale}_dyn_agg")([ref_feat, offset], pre_offset[layer]))
            h = getattr(self, f"head_{scale}")(torch.cat([x, swapped], 1))
            x = getattr(self, f"tail_{scale}")(getattr(self, f"body_{scale}")(h) + x)
        return x


class RestorationNet(nn.Module):
    """``net_g``: content extractor + :class:`DynamicAggregationRestoration` + the bilinear x4 LR.

    Args:
        ngf: feature channels (SSMTF: 64). n_blocks: residual blocks of the content extractor (16).
        groups: deformable groups (8).
        mamba_layers, mamba_depth, d_state, mlp_ratio, drop_rate, use_checkpoint, scan_chunk_size,
            deform_backend: lit-sr's additions, see :class:`DynamicAggregationRestoration`
            (defaults: what the authors hard-code).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, mamba_layers: int = 3,
                 mamba_depth: int = 6, d_state: int = 16, mlp_ratio: float = 2.0, drop_rate: float = 0.1,
                 use_checkpoint: bool = False, scan_chunk_size: int | None = None,
                 deform_backend: DeformBackend = "auto"):
        super().__init__()
        if ngf < 30 or ngf % 2:
            raise ValueError(f"ngf must be an even number >= 30 (the CAB squeezes channels by 30, the last "
                             f"stage halves them), got {ngf!r}")
        self.content_extractor = ContentExtractor(in_nc=3, out_nc=3, nf=ngf, n_blocks=n_blocks)
        self.dyn_agg_restore = DynamicAggregationRestoration(ngf, n_blocks, groups, mamba_layers, mamba_depth, d_state,
                                                             mlp_ratio, drop_rate, use_checkpoint, scan_chunk_size,
                                                             deform_backend)
        srntt_init_weights(self, init_gain=0.02)
        for scale, _, _ in _STAGES:  # the authors' re_init_dcn_offset
            getattr(self.dyn_agg_restore, f"{scale}_dyn_agg").init_offset()

    def forward(self, x: torch.Tensor, pre_offset: Mapping[str, torch.Tensor],
                img_ref_feat: Mapping[str, torch.Tensor]) -> torch.Tensor:
        base = F.interpolate(x, None, 4, "bilinear", False)
        return self.dyn_agg_restore(self.content_extractor(x), pre_offset, img_ref_feat) + base


class SSMTF(nn.Module):
    """SSMTF for x4 reference-based SR, called as ``net(lr, ref)`` (or ``net(lr, ref, lr_up)``).

    ``lr``: (N, 3, h, w) in [0, 1], h and w >= 3; ``ref``: (N, 3, Hr, Wr) in [0, 1], any size (see
    the module docstring); output (N, 3, 4h, 4w), not clamped. :meth:`forward_authors` is the
    authors' call on a padded pair.

    Args:
        ngf, n_blocks, groups: of ``net_g`` (the authors' recipe: 64, 16, 8).
        patch_size, stride, vgg_layer_list, vgg_type: of ``net_map`` (3, 1, relu1_1/2_1/3_1, vgg19).
        upscale: must be 4.
        vgg_weights: torchvision's VGG19 file (``vgg19-dcbb9e9d.pth``) for ``net_map``.
        extractor_weights: the contrastive extractor (the authors' ``net_student_*.pth``, strict)
            or torchvision's VGG16 file (C2-Matching's starting point).
        random_features: allow missing files: the frozen VGG19 and extractor keep a seeded random
            init (logged), or are filled later by :func:`load_ssmtf_authors` or lit-sr weights.
        mamba_layers, mamba_depth, d_state, mlp_ratio, drop_rate, use_checkpoint, scan_chunk_size,
            deform_backend: of ``net_g``'s bodies (see :class:`DynamicAggregationRestoration`).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, patch_size: int = 3, stride: int = 1,
                 vgg_layer_list: Sequence[str] = TRANSFER_LAYERS, vgg_type: str = "vgg19", upscale: int = 4,
                 vgg_weights: str | None = None, extractor_weights: str | None = None, random_features: bool = False,
                 mamba_layers: int = 3, mamba_depth: int = 6, d_state: int = 16, mlp_ratio: float = 2.0,
                 drop_rate: float = 0.1, use_checkpoint: bool = False, scan_chunk_size: int | None = None,
                 deform_backend: DeformBackend = "auto"):
        super().__init__()
        if upscale != 4:
            raise ValueError(f"SSMTF is a x4 network (features transferred at x1, x2, x4); got upscale={upscale!r}")
        self.upscale = upscale
        self.net_extractor = ContrasExtractorSep()
        self.net_map = CorrespondenceGenerationArch(patch_size, stride, vgg_layer_list, vgg_type)
        self.net_g = RestorationNet(ngf, n_blocks, groups, mamba_layers, mamba_depth, d_state, mlp_ratio, drop_rate,
                                    use_checkpoint, scan_chunk_size, deform_backend)
        self.net_extractor.requires_grad_(False)  # the authors never optimise it
        init_frozen_features("SSMTF", self.net_extractor, self.net_map.vgg, vgg_weights, extractor_weights,
                             random_features)

    def correspondence(self, lr_up: torch.Tensor, ref: torch.Tensor):
        """``net_map``'s output for LR-up and reference of one size: ``(pre_offset, ref_features)``."""
        return self.net_map(self.net_extractor(lr_up, ref), ref)

    def forward_authors(self, lr: torch.Tensor, lr_up: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The authors' three calls: ``net_g(lr, *net_map(net_extractor(lr_up, ref), ref))``; ref and lr_up 4x lr."""
        pre_offset, img_ref_feat = self.correspondence(lr_up, ref)
        return self.net_g(lr, pre_offset, img_ref_feat)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: torch.Tensor | None = None) -> torch.Tensor:
        h, w = lr.shape[-2:]
        lr_pad, lr_up, ref = pad_refsr_pair(lr, ref, self.upscale, 1, lr_up)
        if min(lr_pad.shape[-2:]) < 3:
            raise ValueError(f"SSMTF matches 3x3 patches at the LR size: lr and ref/4 must be at least 3x3, "
                             f"got lr {tuple(lr.shape)} and ref {tuple(ref.shape)}")
        return self.forward_authors(lr_pad, lr_up, ref)[..., : self.upscale * h, : self.upscale * w]


def load_ssmtf_authors(model: SSMTF, net_g: str | Path, net_extractor: str | Path | None = None,
                       net_map: str | Path | None = None) -> SSMTF:
    """Load the authors' separate files strictly into ``model``'s sub-networks.

    ``net_g``: their ``net_g_<iter>.pth`` (``path.pretrain_model_g``); ``net_extractor``: the
    stage-2 student ``net_student_latest_*.pth`` (``pretrain_model_feature_extractor``);
    ``net_map``: only the frozen torchvision VGG19, never saved by the authors (pass
    ``vgg_weights`` to :class:`SSMTF`, or a file saved from ``net_map.state_dict()``). A
    ``module.`` prefix is stripped; a missing or unexpected key, or another shape, raises naming the file.
    """
    for name, path in (("net_g", net_g), ("net_extractor", net_extractor), ("net_map", net_map)):
        if path is not None:
            load_weights(getattr(model, name), path, strict=True)
    return model
