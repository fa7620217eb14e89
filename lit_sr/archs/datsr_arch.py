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

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn import init
from torchvision.ops import deform_conv2d

from lit_sr.archs.common import ResidualBlockNoBN, default_init_weights, make_layer
from lit_sr.archs.datsr_swin import SwinBlock
from lit_sr.io import load_weights, read_state_dict
from lit_sr.ops import imresize

log = logging.getLogger(__name__)

_VGG_MEAN = (0.485, 0.456, 0.406)
_VGG_STD = (0.229, 0.224, 0.225)
_BLOCK_WIDTHS = (64, 128, 256, 512, 512)  # channels of VGG's five blocks
_VGG_NAMES = {
    "vgg13": ("conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2 pool2 conv3_1 relu3_1 "
              "conv3_2 relu3_2 pool3 conv4_1 relu4_1 conv4_2 relu4_2 pool4 conv5_1 relu5_1 conv5_2 relu5_2 pool5"),
    "vgg16": ("conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2 pool2 conv3_1 relu3_1 "
              "conv3_2 relu3_2 conv3_3 relu3_3 pool3 conv4_1 relu4_1 conv4_2 relu4_2 conv4_3 relu4_3 pool4 "
              "conv5_1 relu5_1 conv5_2 relu5_2 conv5_3 relu5_3 pool5"),
    "vgg19": ("conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2 pool2 conv3_1 relu3_1 "
              "conv3_2 relu3_2 conv3_3 relu3_3 conv3_4 relu3_4 pool3 conv4_1 relu4_1 conv4_2 relu4_2 conv4_3 "
              "relu4_3 conv4_4 relu4_4 pool4 conv5_1 relu5_1 conv5_2 relu5_2 conv5_3 relu5_3 conv5_4 relu5_4 pool5"),
}
VGG_LAYERS = {k: tuple(v.split()) for k, v in _VGG_NAMES.items()}
TRANSFER_LAYERS = ("relu1_1", "relu2_1", "relu3_1")  # what net_g aggregates (64, 128, 256 channels)


# ---------------------------------------------------------------------------- VGG stems
def _vgg_layers(names: Sequence[str], pooling_stride: int = 2, remove_pooling: bool = False) -> OrderedDict:
    """Named VGG layers (torchvision's, in order): ``convB_I`` 3x3 convs, ReLUs, 2x2 max-pools."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = 3
    for name in names:
        if name.startswith("conv"):
            out_ch = _BLOCK_WIDTHS[int(name[4]) - 1]
            layers[name] = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
            in_ch = out_ch
        elif name.startswith("relu"):
            layers[name] = nn.ReLU(inplace=False)
        elif not remove_pooling:
            layers[name] = nn.MaxPool2d(kernel_size=2, stride=pooling_stride)
    return layers


def _copy_torchvision_vgg(sequential: nn.Sequential, names: Sequence[str], state: Mapping[str, torch.Tensor],
                          path: Path) -> None:
    """Copy ``features.<index>.*`` of a torchvision VGG state_dict into the named layers (index = position)."""
    own = {}
    for index, name in enumerate(names):
        if not name.startswith("conv") or name not in sequential._modules:
            continue
        for key in ("weight", "bias"):
            source = f"features.{index}.{key}"
            if source not in state:
                raise ValueError(f"{path} has no key {source!r}: expected a torchvision VGG state_dict")
            own[f"{name}.{key}"] = state[source]
    sequential.load_state_dict(own, strict=True)


def _read_file(path: str | Path, what: str) -> tuple[dict, Path]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}; lit-sr never downloads weights: place the file there")
    return read_state_dict(path), path


class ContrasExtractorLayer(nn.Module):
    """C2-Matching's extractor stem: VGG16 up to ``conv3_1`` (no ReLU after it), ImageNet-normalised input.

    Keys: ``model.conv1_1.weight`` ... ``model.conv3_1.bias``, buffers ``mean`` and ``std``.
    """

    def __init__(self):
        super().__init__()
        names = VGG_LAYERS["vgg16"]
        self.names = names[: names.index("conv3_1") + 1]
        self.model = nn.Sequential(_vgg_layers(self.names))
        self.register_buffer("mean", torch.tensor(_VGG_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_VGG_STD).view(1, 3, 1, 1))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model((batch - self.mean) / self.std)


class ContrasExtractorSep(nn.Module):
    """Two :class:`ContrasExtractorLayer` (``feature_extraction_image1`` for LR-up, ``..._image2`` for Ref)."""

    def __init__(self):
        super().__init__()
        self.feature_extraction_image1 = ContrasExtractorLayer()
        self.feature_extraction_image2 = ContrasExtractorLayer()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"dense_features1": self.feature_extraction_image1(image1),
                "dense_features2": self.feature_extraction_image2(image2)}

    def load_torchvision_vgg16(self, path: str | Path) -> None:
        """Initialise both stems from torchvision's VGG16 file (C2-Matching's starting point, not its trained extractor)."""
        state, path = _read_file(path, "VGG16 weights")
        for layer in (self.feature_extraction_image1, self.feature_extraction_image2):
            _copy_torchvision_vgg(layer.model, layer.names, state, path)


class VGGFeatureExtractor(nn.Module):
    """The authors' VGG feature extractor (BasicSR's), returning the layers of ``layer_name_list``.

    Args:
        layer_name_list: layers returned, e.g. ``("relu1_1", "relu2_1", "relu3_1")``; the network
            stops at the deepest one.
        vgg_type: ``"vgg13"``, ``"vgg16"`` or ``"vgg19"`` (DATSR: vgg19).
        use_input_norm: ImageNet mean/std normalisation of [0, 1] input (buffers ``mean``/``std``).
        requires_grad: train the VGG (DATSR: False).
        remove_pooling: drop the max-pools.
        pooling_stride: stride of the max-pools (2).
    """

    def __init__(self, layer_name_list: Sequence[str], vgg_type: str = "vgg19", use_input_norm: bool = True,
                 requires_grad: bool = False, remove_pooling: bool = False, pooling_stride: int = 2):
        super().__init__()
        if vgg_type not in VGG_LAYERS:
            raise ValueError(f"vgg_type must be one of {sorted(VGG_LAYERS)}, got {vgg_type!r}")
        all_names = VGG_LAYERS[vgg_type]
        unknown = [v for v in layer_name_list if v not in all_names]
        if unknown or not layer_name_list:
            raise ValueError(f"layer_name_list {list(layer_name_list)} must name layers of {vgg_type}: {unknown}")
        self.layer_name_list = tuple(layer_name_list)
        self.use_input_norm = use_input_norm
        self.names = all_names[: max(all_names.index(v) for v in layer_name_list) + 1]
        self.vgg_net = nn.Sequential(_vgg_layers(self.names, pooling_stride, remove_pooling))
        if not requires_grad:
            for param in self.parameters():
                param.requires_grad = False
        if use_input_norm:
            self.register_buffer("mean", torch.tensor(_VGG_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(_VGG_STD).view(1, 3, 1, 1))

    def load_torchvision(self, path: str | Path) -> None:
        """Copy the conv weights of torchvision's VGG file (``vgg19-dcbb9e9d.pth``) into ``vgg_net``."""
        state, path = _read_file(path, "VGG weights")
        _copy_torchvision_vgg(self.vgg_net, self.names, state, path)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        output = {}
        for key, layer in self.vgg_net._modules.items():
            x = layer(x)
            if key in self.layer_name_list:
                output[key] = x
        return output


# ---------------------------------------------------------------------------- correspondence
def feature_match_index(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int = 3,
                        input_stride: int = 1, ref_stride: int = 1, is_norm: bool = True,
                        norm_input: bool = True, chunk_elements: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Best reference patch for every input patch, batched: the authors' ``feature_match_index``.

    The correlation of an input patch and a reference patch is their dot product over
    ``(c, patch, patch)``, the reference patch divided by its L2 norm (+1e-5) when ``is_norm`` and
    the maximum divided by the input patch's norm (+1e-5) when ``norm_input``: a cosine similarity.

    Args:
        feat_input: (b, c, h, w). feat_ref: (b, c, hr, wr).
        patch_size, input_stride, ref_stride: patch side and the strides of the two patch grids.
        is_norm, norm_input: as above.
        chunk_elements: bound on the correlation entries held at once (memory only).

    Returns:
        ``max_idx`` (b, nh, nw) long: row-major index of the best patch in the reference's patch
        grid; ``max_val`` (b, nh, nw): its correlation (differentiable).
    """
    b, c, h, w = feat_input.shape
    nh, nw = (h - patch_size) // input_stride + 1, (w - patch_size) // input_stride + 1
    patches_in = F.unfold(feat_input, patch_size, stride=input_stride)  # (b, c*k*k, nh*nw)
    patches_ref = F.unfold(feat_ref, patch_size, stride=ref_stride)  # (b, c*k*k, n_ref)
    if is_norm:
        patches_ref = patches_ref / (patches_ref.norm(dim=1, keepdim=True) + 1e-5)
    keys = patches_ref.transpose(1, 2)  # (b, n_ref, c*k*k)
    n_ref, n_in = keys.shape[1], patches_in.shape[2]
    chunk = max(1, chunk_elements // max(1, b * n_ref))
    values, indices = [], []
    for start in range(0, n_in, chunk):
        corr = torch.bmm(keys, patches_in[:, :, start:start + chunk])  # (b, n_ref, chunk)
        val, idx = corr.max(dim=1)
        values.append(val)
        indices.append(idx)
    max_val = torch.cat(values, 1).view(b, nh, nw)
    max_idx = torch.cat(indices, 1).view(b, nh, nw)
    if norm_input:
        max_val = max_val / (patches_in.norm(dim=1).view(b, nh, nw) + 1e-5)
    return max_idx, max_val


def index_to_flow(max_idx: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """(b, nh, nw) patch indices -> (b, nh + pad, nw + pad, 2) flow ``[x, y]`` to the matched patch.

    The index is decoded on the input's grid width ``nw`` (the authors' rule; the reference is
    padded to the input's size first), the flow is zero on the last ``pad`` rows and columns.
    """
    b, h, w = max_idx.shape
    grid_y, grid_x = torch.meshgrid(torch.arange(h, device=max_idx.device), torch.arange(w, device=max_idx.device),
                                    indexing="ij")
    flow = torch.stack((max_idx % w - grid_x, max_idx // w - grid_y), dim=3).float()
    return F.pad(flow, (0, 0, 0, pad, 0, pad))


def tensor_shift(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """(b, h, w, c) shifted down by ``shift[0]`` and right by ``shift[1]``, zero-filled (shifts >= 0)."""
    sh, sw = shift
    return F.pad(x, (0, 0, sw, 0, sh, 0))[:, : x.shape[1], : x.shape[2]]


def shifted_offsets(flow: torch.Tensor, step: int) -> torch.Tensor:
    """(b, h, w, 2) -> (b, 9, h, w, 2): the flow shifted by ``(i*step, j*step)`` for the 3x3 kernel points."""
    return torch.stack([tensor_shift(flow, (i * step, j * step)) for i in range(3) for j in range(3)], dim=1)


class FlowSimCorrespondenceGenerationArch(nn.Module):
    """``net_map``: patch matching of the extractor maps, flows, offsets, similarity, and the reference's VGG features.

    Args:
        patch_size: matching patch side (3; the flow padding assumes 3).
        stride: stride of both patch grids (1).
        vgg_layer_list: VGG layers of the reference returned for the transfer.
        vgg_type: the frozen VGG (``"vgg19"``).
    """

    def __init__(self, patch_size: int = 3, stride: int = 1,
                 vgg_layer_list: Sequence[str] = ("relu3_1", "relu2_1", "relu1_1"), vgg_type: str = "vgg19"):
        super().__init__()
        if patch_size != 3 or stride != 1:
            raise ValueError(f"DATSR's flows assume patch_size=3 and stride=1, got {patch_size} and {stride}")
        self.patch_size, self.stride = patch_size, stride
        self.vgg_layer_list = tuple(vgg_layer_list)
        missing = [v for v in TRANSFER_LAYERS if v not in self.vgg_layer_list]
        if missing:
            raise ValueError(f"vgg_layer_list must include {list(TRANSFER_LAYERS)} (what net_g transfers); missing {missing}")
        self.vgg = VGGFeatureExtractor(layer_name_list=self.vgg_layer_list, vgg_type=vgg_type)

    def match(self, dense_features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(max_idx, max_val)`` of the per-pixel channel-normalised extractor maps."""
        feat_in = F.normalize(dense_features["dense_features1"], dim=1)
        feat_ref = F.normalize(dense_features["dense_features2"], dim=1)
        if feat_in.shape != feat_ref.shape:
            raise ValueError(f"net_map needs LR-up and reference features of one size (the authors pad the pair), "
                             f"got {tuple(feat_in.shape)} and {tuple(feat_ref.shape)}")
        return feature_match_index(feat_in, feat_ref, self.patch_size, self.stride, self.stride,
                                   is_norm=True, norm_input=True)

    def forward(self, dense_features: Mapping[str, torch.Tensor], img_ref_hr: torch.Tensor):
        """Returns ``([pre_offset, pre_flow, pre_similarity], img_ref_feat)``, each a dict by VGG layer.

        ``pre_offset[layer]``: (b, 9, h, w, 2) shifted flows; ``pre_flow[layer]``: (b, h, w, 2);
        ``pre_similarity[layer]``: (b, 1, h, w); ``img_ref_feat[layer]``: the reference's VGG features.
        """
        max_idx, max_val = self.match(dense_features)
        flow3 = index_to_flow(max_idx)
        sim3 = F.pad(max_val, (1, 1, 1, 1)).unsqueeze(1)
        flow2 = flow3.repeat_interleave(2, 1).repeat_interleave(2, 2) * 2
        flow1 = flow3.repeat_interleave(4, 1).repeat_interleave(4, 2) * 4
        sim2 = sim3.repeat_interleave(2, 2).repeat_interleave(2, 3)
        sim1 = sim2.repeat_interleave(2, 2).repeat_interleave(2, 3)
        pre_offset = {"relu1_1": shifted_offsets(flow1, 4), "relu2_1": shifted_offsets(flow2, 2),
                      "relu3_1": shifted_offsets(flow3, 1)}
        pre_flow = {"relu3_1": flow3, "relu2_1": flow2, "relu1_1": flow1}
        pre_similarity = {"relu3_1": sim3, "relu2_1": sim2, "relu1_1": sim1}
        return [pre_offset, pre_flow, pre_similarity], self.vgg(img_ref_hr)


# ---------------------------------------------------------------------------- restoration
def flow_warp(x: torch.Tensor, flow: torch.Tensor, interp_mode: str = "bilinear", padding_mode: str = "zeros",
              align_corners: bool = True) -> torch.Tensor:
    """Warp (n, c, h, w) by a pixel flow (n, h, w, 2) ``[x, y]``; DATSR's version (``align_corners=True``)."""
    if x.shape[-2:] != flow.shape[1:3]:
        raise ValueError(f"flow_warp: feature {tuple(x.shape)} and flow {tuple(flow.shape)} differ in size")
    _, _, h, w = x.shape
    grid_y, grid_x = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                                    torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    vgrid = torch.stack((grid_x, grid_y), 2) + flow.to(x.dtype)
    vgrid_x = 2.0 * vgrid[..., 0] / max(w - 1, 1) - 1.0
    vgrid_y = 2.0 * vgrid[..., 1] / max(h - 1, 1) - 1.0
    return F.grid_sample(x, torch.stack((vgrid_x, vgrid_y), dim=3), mode=interp_mode, padding_mode=padding_mode,
                         align_corners=align_corners)


DeformBackend = Literal["auto", "torchvision", "grid_sample"]
_DEFORM_BACKENDS: tuple[str, ...] = get_args(DeformBackend)


def deform_conv2d_sampled(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: int = 1, padding: int = 1, dilation: int = 1,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated deformable convolution by ``grid_sample``: the same result as ``torchvision.ops.deform_conv2d``.

    Every kernel point of every offset group samples the input bilinearly at ``p + p_k + offset``
    (zero outside, ``align_corners=True`` pixel coordinates: torchvision's sampling rule), the
    samples are weighted by the mask and contracted with the weight. Its autograd is PyTorch's,
    which on CPU is about 4x faster than torchvision's deform_conv2d backward (64 channels, 32x32,
    8 groups: 0.68 s vs 2.64 s forward+backward on one core; ``benchmarks`` have no DATSR row), at
    the memory of an unfolded input (``c * k * k`` values per output pixel).
    """
    b, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[-2:]
    ar = {"device": x.device, "dtype": x.dtype}
    base_y = (torch.arange(ho, **ar) * stride - padding).view(1, 1, 1, ho, 1)
    base_x = (torch.arange(wo, **ar) * stride - padding).view(1, 1, 1, 1, wo)
    ky, kx = torch.meshgrid(torch.arange(kh, **ar) * dilation, torch.arange(kw, **ar) * dilation, indexing="ij")
    off = offset.view(b, groups, k, 2, ho, wo)
    py = base_y + ky.reshape(1, 1, k, 1, 1) + off[:, :, :, 0]
    px = base_x + kx.reshape(1, 1, k, 1, 1) + off[:, :, :, 1]
    grid = torch.stack((2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1), -1).view(b * groups, k * ho, wo, 2)
    samples = F.grid_sample(x.reshape(b * groups, c // groups, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True).view(b, groups, c // groups, k, ho, wo)
    if mask is not None:
        samples = samples * mask.view(b, groups, 1, k, ho, wo)
    out = torch.einsum("ock,bckn->bon", weight.reshape(out_ch, c, k), samples.reshape(b, c, k, ho * wo))
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, out_ch, ho, wo)


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
        if deform_backend not in _DEFORM_BACKENDS:
            raise ValueError(f"deform_backend must be one of {_DEFORM_BACKENDS}, got {deform_backend!r}")
        self.deform_backend = deform_backend
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
        # deform_conv2d's layout: per group, per kernel point, (y, x); the flows are (x, y)
        pre = pre_offset.repeat(1, self.deformable_groups, 1, 1, 1).flip(-1)  # (b, 9*groups, h, w, [y, x])
        offset = offset + pre.permute(0, 1, 4, 2, 3).reshape_as(offset).to(offset.dtype)
        mask = torch.sigmoid(mask * pre_sim) if self.use_sim else torch.sigmoid(mask)
        if self.deform_backend == "torchvision" or (self.deform_backend == "auto" and x.is_cuda):
            return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                 dilation=self.dilation, mask=mask)
        return deform_conv2d_sampled(x, offset, self.weight, self.bias, self.stride[0], self.padding[0],
                                     self.dilation[0], mask)


class ContentExtractor(nn.Module):
    """conv + ``n_blocks`` residual blocks on the LR (keys ``conv_first``, ``body.N.conv1``); unused by DATSR's forward.

    Args:
        in_nc: input channels. out_nc: unused (the authors' signature). nf: features. n_blocks: blocks.
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, n_blocks: int = 16):
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.body = make_layer(ResidualBlockNoBN, n_blocks, num_feat=nf)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)
        default_init_weights([self.conv_first], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.lrelu(self.conv_first(x)))


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


def srntt_init_weights(net: nn.Module, init_gain: float = 0.02) -> None:
    """The authors' init of ``net_g``: N(0, 0.02) for every Conv*/Linear* weight, zero biases (by class name, as theirs)."""
    for m in net.modules():
        name = type(m).__name__
        if getattr(m, "weight", None) is not None and ("Conv" in name or "Linear" in name):
            init.normal_(m.weight.data, 0.0, init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias.data, 0.0)


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
        self._init_features(vgg_weights, extractor_weights, random_features)

    def _init_features(self, vgg_weights, extractor_weights, random_features: bool) -> None:
        if vgg_weights is not None:
            self.net_map.vgg.load_torchvision(vgg_weights)
        if extractor_weights is not None:
            state, path = _read_file(extractor_weights, "DATSR feature extractor")
            if any(k.startswith("features.") for k in state):
                self.net_extractor.load_torchvision_vgg16(path)
            else:
                self.net_extractor.load_state_dict(state, strict=True)
        missing = [n for n, v in (("vgg_weights", vgg_weights), ("extractor_weights", extractor_weights)) if v is None]
        if missing and not random_features:
            raise ValueError(
                f"DATSR needs {' and '.join(missing)}: the frozen VGG19 of net_map (torchvision's vgg19-dcbb9e9d.pth) "
                "and C2-Matching's feature_extraction.pth for net_extractor; lit-sr never downloads them. Pass the "
                "paths, or random_features=true for a random frozen stand-in (or to load full DATSR weights next)"
            )
        if missing:
            log.warning("DATSR: %s not given; those frozen features keep a random init (random_features=true): the "
                        "matching runs on random conv features unless weights are loaded next", ", ".join(missing))

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
        if lr.dim() != 4 or ref.dim() != 4 or lr.shape[0] != ref.shape[0] or lr.shape[1] != 3 or ref.shape[1] != 3:
            raise ValueError(f"DATSR needs lr (N, 3, h, w) and ref (N, 3, Hr, Wr) with one N, "
                             f"got {tuple(lr.shape)} and {tuple(ref.shape)}")
        s, ws = self.upscale, self.window_size
        ref = ref[..., : ref.shape[-2] // s * s, : ref.shape[-1] // s * s]
        th = -(-max(lr.shape[-2], ref.shape[-2] // s) // ws) * ws
        tw = -(-max(lr.shape[-1], ref.shape[-1] // s) // ws) * ws
        lr_pad = F.pad(lr, (0, tw - lr.shape[-1], 0, th - lr.shape[-2]))
        ref = F.pad(ref, (0, s * tw - ref.shape[-1], 0, s * th - ref.shape[-2]))
        if lr_up is None:
            lr_up = imresize(lr_pad, float(s)).clamp(0, 1)
        else:
            if lr_up.shape[-2:] != (s * lr.shape[-2], s * lr.shape[-1]):
                raise ValueError(f"lr_up must be x{s} the LR, got {tuple(lr_up.shape)} for LR {tuple(lr.shape)}")
            lr_up = F.pad(lr_up, (0, s * tw - lr_up.shape[-1], 0, s * th - lr_up.shape[-2]))
        return lr_pad, lr_up, ref

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
