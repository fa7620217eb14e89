"""C2-Matching's pieces shared by DATSR and SSMTF (both built on Jiang et al.'s C2-Matching, CVPR 2021).

* the VGG stems: :class:`ContrasExtractorSep` (the contrastive feature extractor of LR-up and
  reference, ``net_extractor``) and :class:`VGGFeatureExtractor` (the frozen ImageNet VGG19 whose
  relu1_1/2_1/3_1 features of the reference are transferred);
* the correspondence (``net_map``): normalised 3x3 patches matched by cosine similarity
  (:func:`feature_match_index`), the matched index turned into a flow (:func:`index_to_flow`) and
  nine shifted copies of it, one per kernel point of the deformable convolutions
  (:func:`shifted_offsets`), at relu3_1 and repeated to relu2_1 and relu1_1.
  :class:`CorrespondenceGenerationArch` is C2-Matching's (and SSMTF's) ``net_map`` (offsets);
  :class:`FlowSimCorrespondenceGenerationArch` is DATSR's (offsets, flows and the similarity);
* the modulated deformable convolution with precomputed offsets (:func:`add_pre_offset`,
  :func:`modulated_deform_conv`: ``torchvision.ops.deform_conv2d`` or the same values by
  ``grid_sample``), ``flow_warp``, the content extractor and the authors' ``srntt_init_weights``;
* what the whole models share: the padding of an (LR, reference) pair (:func:`pad_refsr_pair`)
  and the frozen feature files (:func:`init_frozen_features`).

Every module keeps the authors' parameter names (see :mod:`lit_sr.archs.datsr_arch` and
:mod:`lit_sr.archs.ssmtf_arch` for the files they load).
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
from lit_sr.io import read_state_dict
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


class CorrespondenceGenerationArch(FlowSimCorrespondenceGenerationArch):
    """C2-Matching's (and SSMTF's) ``net_map``: the same matching, returning only the shifted flows.

    Same arguments and keys (``vgg.vgg_net.*``, ``vgg.mean``/``vgg.std``) as
    :class:`FlowSimCorrespondenceGenerationArch`. The authors match image by image; here the batch
    at once (the same result, tested against a naive loop in ``tests/test_datsr.py``).
    """

    def forward(self, dense_features: Mapping[str, torch.Tensor], img_ref_hr: torch.Tensor):
        """Returns ``(pre_offset, img_ref_feat)``: (b, 9, h, w, 2) ``[x, y]`` shifted flows by VGG layer, and the features."""
        max_idx, _ = self.match(dense_features)
        flow3 = index_to_flow(max_idx)
        flow2 = flow3.repeat_interleave(2, 1).repeat_interleave(2, 2) * 2
        flow1 = flow3.repeat_interleave(4, 1).repeat_interleave(4, 2) * 4
        pre_offset = {"relu1_1": shifted_offsets(flow1, 4), "relu2_1": shifted_offsets(flow2, 2),
                      "relu3_1": shifted_offsets(flow3, 1)}
        return pre_offset, self.vgg(img_ref_hr)


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


def check_deform_backend(deform_backend: str) -> DeformBackend:
    """``deform_backend`` if it is one of :data:`DeformBackend`, else a ``ValueError`` naming the choices."""
    if deform_backend not in _DEFORM_BACKENDS:
        raise ValueError(f"deform_backend must be one of {_DEFORM_BACKENDS}, got {deform_backend!r}")
    return deform_backend  # type: ignore[return-value]


def add_pre_offset(offset: torch.Tensor, pre_offset: torch.Tensor, groups: int) -> torch.Tensor:
    """The learned offsets (b, 2*9*groups, h, w) plus the precomputed flows (b, 9, h, w, 2) ``[x, y]``.

    ``deform_conv2d``'s layout is, per group and per kernel point, ``(y, x)``; the flows are
    repeated for every group and flipped to it (the authors' ``pre_offset_reorder``).
    """
    pre = pre_offset.repeat(1, groups, 1, 1, 1).flip(-1)  # (b, 9*groups, h, w, [y, x])
    return offset + pre.permute(0, 1, 4, 2, 3).reshape_as(offset).to(offset.dtype)


def modulated_deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None, stride: int = 1, padding: int = 1, dilation: int = 1,
                          backend: DeformBackend = "auto") -> torch.Tensor:
    """DCNv2: ``torchvision.ops.deform_conv2d`` (``"torchvision"``, and ``"auto"`` on CUDA) or
    :func:`deform_conv2d_sampled` (``"grid_sample"``, and ``"auto"`` elsewhere: the same values, a
    faster backward on CPU). Offset groups follow from ``offset.shape[1] // (2 * kh * kw)``."""
    if backend == "torchvision" or (backend == "auto" and x.is_cuda):
        return deform_conv2d(x, offset, weight, bias, stride=(stride, stride), padding=(padding, padding),
                             dilation=(dilation, dilation), mask=mask)
    return deform_conv2d_sampled(x, offset, weight, bias, stride, padding, dilation, mask)


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



def srntt_init_weights(net: nn.Module, init_gain: float = 0.02) -> None:
    """The authors' init of ``net_g``: N(0, 0.02) for every Conv*/Linear* weight, zero biases (by class name, as theirs)."""
    for m in net.modules():
        name = type(m).__name__
        if getattr(m, "weight", None) is not None and ("Conv" in name or "Linear" in name):
            init.normal_(m.weight.data, 0.0, init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias.data, 0.0)




# ---------------------------------------------------------------------------- the whole models
def pad_refsr_pair(lr: torch.Tensor, ref: torch.Tensor, scale: int, multiple: int,
                   lr_up: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lr_pad, lr_up, ref_pad)``: the pair as C2-Matching-style networks need it.

    The reference is mod-cropped to a multiple of ``scale``; LR and reference are zero-padded
    (bottom, right) to one size, LR sides a multiple of ``multiple`` and the reference ``scale``
    times the LR (the authors' test loader pads the pair to a common size). ``lr_up`` (the image
    matched against the reference) is MATLAB-bicubic of the padded LR unless given (then padded).
    """
    if lr.dim() != 4 or ref.dim() != 4 or lr.shape[0] != ref.shape[0] or lr.shape[1] != 3 or ref.shape[1] != 3:
        raise ValueError(f"expected lr (N, 3, h, w) and ref (N, 3, Hr, Wr) with one N, "
                         f"got {tuple(lr.shape)} and {tuple(ref.shape)}")
    s = scale
    ref = ref[..., : ref.shape[-2] // s * s, : ref.shape[-1] // s * s]
    th = -(-max(lr.shape[-2], ref.shape[-2] // s) // multiple) * multiple
    tw = -(-max(lr.shape[-1], ref.shape[-1] // s) // multiple) * multiple
    lr_pad = F.pad(lr, (0, tw - lr.shape[-1], 0, th - lr.shape[-2]))
    ref = F.pad(ref, (0, s * tw - ref.shape[-1], 0, s * th - ref.shape[-2]))
    if lr_up is None:
        lr_up = imresize(lr_pad, float(s)).clamp(0, 1)
    else:
        if lr_up.shape[-2:] != (s * lr.shape[-2], s * lr.shape[-1]):
            raise ValueError(f"lr_up must be x{s} the LR, got {tuple(lr_up.shape)} for LR {tuple(lr.shape)}")
        lr_up = F.pad(lr_up, (0, s * tw - lr_up.shape[-1], 0, s * th - lr_up.shape[-2]))
    return lr_pad, lr_up, ref


def init_frozen_features(model_name: str, net_extractor: ContrasExtractorSep, vgg: VGGFeatureExtractor,
                         vgg_weights: str | Path | None, extractor_weights: str | Path | None,
                         random_features: bool) -> None:
    """Fill the frozen VGG19 (``net_map.vgg``) and the contrastive extractor from their files.

    ``extractor_weights`` is C2-Matching's ``feature_extraction.pth`` (the authors' keys, strict)
    or torchvision's VGG16 file (keys ``features.N``). A missing file raises a ``ValueError``
    naming it, unless ``random_features`` (then a logged warning: the matching runs on random
    conv features until weights are loaded).
    """
    if vgg_weights is not None:
        vgg.load_torchvision(vgg_weights)
    if extractor_weights is not None:
        state, path = _read_file(extractor_weights, f"{model_name} feature extractor")
        if any(k.startswith("features.") for k in state):
            net_extractor.load_torchvision_vgg16(path)
        else:
            net_extractor.load_state_dict(state, strict=True)
    missing = [n for n, v in (("vgg_weights", vgg_weights), ("extractor_weights", extractor_weights)) if v is None]
    if missing and not random_features:
        raise ValueError(
            f"{model_name} needs {' and '.join(missing)}: the frozen VGG19 of net_map (torchvision's "
            "vgg19-dcbb9e9d.pth) and C2-Matching's feature_extraction.pth for net_extractor; lit-sr never downloads "
            "them. Pass the paths, or random_features=true for a random frozen stand-in (or to load full weights next)"
        )
    if missing:
        log.warning("%s: %s not given; those frozen features keep a random init (random_features=true): the "
                    "matching runs on random conv features unless weights are loaded next", model_name, ", ".join(missing))
