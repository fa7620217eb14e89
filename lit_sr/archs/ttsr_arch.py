"""TTSR (Yang et al., "Learning Texture Transformer Network for Image Super-Resolution", CVPR 2020).

A learnable texture extractor (LTE, VGG19 up to relu3_1), a relevance embedding between unfolded
3x3 patches of LR-up and Ref-down-up features, hard attention (the most relevant reference patch
transferred at x1, x2 and x4) and soft attention (its relevance as a weight), and cross-scale
feature integration, with the module and parameter names of the authors' ``researchmm/TTSR`` code
(``LTE.slice1.0``, ``MainNet.SFE.conv_head``, ``MainNet.RB11.0.conv1``, ...).

Two deliberate differences from the authors' code, both needed for attacks on the reference:

* the reference is **not** detached before the extractor, so the output is differentiable with
  respect to ``ref`` (through the transferred textures and the soft-attention map; the hard
  attention's argmax itself is piecewise constant, as any argmax);
* inputs and outputs are in [0, 1] (the authors use [-1, 1] and clamp the output, which would
  zero the gradient of saturated pixels); the [-1, 1] mapping happens inside, the output is not
  clamped (the modules clamp for evaluation, as for every other network).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lit_sr.ops import imresize

log = logging.getLogger(__name__)

# torchvision's vgg19 ``features`` indices of the layers up to relu3_1, split as TTSR's LTE does:
# slice1 = conv1_1, relu1_1; slice2 = conv1_2, relu1_2, pool1, conv2_1, relu2_1;
# slice3 = conv2_2, relu2_2, pool2, conv3_1, relu3_1.
_VGG19_LAYERS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256)}
_SLICES = ((0, 2), (2, 7), (7, 12))
_VGG_MEAN = (0.485, 0.456, 0.406)
_VGG_STD = (0.229, 0.224, 0.225)
TEXTURE_CHANNELS = (64, 128, 256)  # lv1 (x1 ref resolution), lv2 (/2), lv3 (/4)
DEFAULT_VGG19_FILE = "vgg19-dcbb9e9d.pth"


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=True)


def _conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=True)


def _vgg_layer(index: int) -> nn.Module:
    if index in _VGG19_LAYERS:
        return nn.Conv2d(*_VGG19_LAYERS[index], 3, 1, 1)
    if index in (4, 9):
        return nn.MaxPool2d(2, 2)
    return nn.ReLU(inplace=False)


def parse_num_res_blocks(num_res_blocks: Sequence[int] | str) -> tuple[int, int, int, int]:
    """``"16+16+8+4"`` (TTSR's command-line form) or a sequence of four block counts >= 1."""
    if isinstance(num_res_blocks, str):
        try:
            num_res_blocks = [int(v) for v in num_res_blocks.split("+")]
        except ValueError as exc:
            raise ValueError(f"num_res_blocks must look like '16+16+8+4', got {num_res_blocks!r}") from exc
    blocks = tuple(num_res_blocks)
    if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
        raise ValueError(
            f"num_res_blocks must be four integers >= 1 (SFE, stage 1, stage 2, stage 3), got {num_res_blocks!r}"
        )
    return blocks  # type: ignore[return-value]


def _accept_authors_mean_shift(module, state_dict, prefix, *_args) -> None:
    """Take the authors' ``sub_mean.weight`` / ``sub_mean.bias`` out of ``state_dict``, checked.

    The authors' LTE normalises with a frozen 1x1 conv (``utils.MeanShift``: weight diag(1/std),
    bias -mean/std, ``requires_grad=False``), which their trainer saves; lit-sr normalises with the
    same constants held as non-persistent buffers. A file's conv is accepted when it is that
    frozen conv (to 1e-5) and refused otherwise, naming the key: a different conv cannot be
    expressed as a per-channel mean/std.
    """
    expected = {
        "weight": torch.diag(1 / torch.tensor(_VGG_STD)).view(3, 3, 1, 1),
        "bias": -torch.tensor(_VGG_MEAN) / torch.tensor(_VGG_STD),
    }
    for name, value in expected.items():
        key = f"{prefix}sub_mean.{name}"
        if key not in state_dict:
            continue
        given = state_dict.pop(key)
        if tuple(given.shape) != tuple(value.shape) or not torch.allclose(given.float().cpu(), value, atol=1e-5):
            raise ValueError(
                f"{key}: expected the authors' frozen ImageNet mean-shift conv ({name} {value.flatten().tolist()}), "
                f"got shape {tuple(given.shape)} values {given.flatten()[:9].tolist()}; lit-sr's texture "
                "extractor normalises with that fixed mean/std and cannot load another conv"
            )


def _accept_authors_lte_copy(module, state_dict, prefix, *_args) -> None:
    """Accept the ``LTE_copy.*`` entries of a full authors' ``nn.Module`` state, checked, then drop them.

    The authors' TTSR holds a second extractor, ``LTE_copy``, for the transferal perceptual loss,
    and overwrites it with ``LTE``'s weights (``load_state_dict``) before every use: its stored
    values are never read (and lag ``LTE`` by one optimiser step), and their trainer leaves it out
    of the files it saves. lit-sr has no copy (:meth:`TTSR.texture_features` runs ``LTE`` with
    detached weights), so the entries are accepted when they are exactly ``LTE``'s key set with
    ``LTE``'s shapes (the same network) and dropped; anything else is refused, naming the keys.
    """
    copy_prefix = f"{prefix}LTE_copy."
    keys = [k for k in state_dict if k.startswith(copy_prefix)]
    if not keys:
        return
    own = {f"{copy_prefix}{k}": v.shape for k, v in module.LTE.state_dict().items()}
    own.update({f"{copy_prefix}sub_mean.weight": torch.Size((3, 3, 1, 1)), f"{copy_prefix}sub_mean.bias": torch.Size((3,))})
    unknown = sorted(k for k in keys if k not in own)
    wrong = sorted(k for k in keys if k in own and tuple(state_dict[k].shape) != tuple(own[k]))
    missing = sorted(k for k in own if k not in state_dict and not k.startswith(f"{copy_prefix}sub_mean."))
    if unknown or wrong or missing:
        raise ValueError(
            f"the authors' LTE_copy entries do not describe TTSR's texture extractor: unknown {unknown[:5]}, "
            f"other shapes {wrong[:5]}, missing {missing[:5]}. LTE_copy is the authors' frozen copy of LTE "
            "for the transferal perceptual loss (re-copied from LTE before each use), so it must mirror LTE"
        )
    for key in keys:
        del state_dict[key]


class LTE(nn.Module):
    """Learnable texture extractor: VGG19's layers up to relu3_1, returning relu1_1, relu2_1, relu3_1.

    Loads the authors' state too: their frozen mean-shift conv ``sub_mean.weight``/``.bias`` is
    checked against the constants and accepted (see :func:`_accept_authors_mean_shift`).

    Args:
        vgg_weights: torchvision's VGG19 state_dict file (``vgg19-dcbb9e9d.pth``, keys
            ``features.N.*``) to initialise from. ``None`` keeps PyTorch's random init and logs a
            warning: TTSR trains the extractor with the network, so a random start is a
            documented choice (it learns its own texture features), not a silent stand-in.
    """

    def __init__(self, vgg_weights: str | Path | None = None):
        super().__init__()
        for name, (start, stop) in zip(("slice1", "slice2", "slice3"), _SLICES):
            block = nn.Sequential()
            for index in range(start, stop):
                block.add_module(str(index), _vgg_layer(index))
            setattr(self, name, block)
        self.register_buffer("mean", torch.tensor(_VGG_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_VGG_STD).view(1, 3, 1, 1), persistent=False)
        self.register_load_state_dict_pre_hook(_accept_authors_mean_shift)
        if vgg_weights is not None:
            self.load_vgg19(vgg_weights)
        else:
            log.warning(
                "TTSR texture extractor: no vgg_weights given, starting from a random init (it is trained "
                "with the network). Pass vgg_weights='/path/to/%s' for the ImageNet start of the paper.",
                DEFAULT_VGG19_FILE,
            )

    def load_vgg19(self, path: str | Path) -> None:
        """Copy ``features.{0,2,5,7,10}`` of a torchvision VGG19 state_dict into the three slices."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"VGG19 weights not found at {path}; lit-sr never downloads them: place torchvision's "
                f"{DEFAULT_VGG19_FILE} there, or pass vgg_weights=None for a random init"
            )
        from lit_sr.io import load_checkpoint  # io is the leaf that reads weights safely (named errors)

        state = load_checkpoint(path)
        own = {}
        for slice_name in ("slice1", "slice2", "slice3"):
            for index, layer in getattr(self, slice_name).named_children():
                for key in layer.state_dict():
                    source = f"features.{index}.{key}"
                    if source not in state:
                        raise ValueError(f"{path} has no key {source!r}: expected torchvision's vgg19 state_dict")
                    own[f"{slice_name}.{index}.{key}"] = state[source]
        self.load_state_dict(own, strict=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[0, 1] images -> (lv1 at x1, lv2 at /2, lv3 at /4) features (64, 128, 256 channels)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        lv1 = self.slice1(x)
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3


def _batch_index_select(unfolded: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``unfolded[n, :, index[n, p]]`` for every image n and query position p: (N, D, L) -> (N, D, P)."""
    return torch.gather(unfolded, 2, index.unsqueeze(1).expand(-1, unfolded.shape[1], -1))


class SearchTransfer(nn.Module):
    """Relevance embedding, hard attention and soft attention (TTSR Sec. 3.1, Eq. 1-6).

    Every 3x3 patch of the LR-up features (the queries, H x W of them) is compared by normalised
    inner product with every 3x3 patch of the Ref-down-up features (the keys, Hr x Wr at /4 of the
    reference); the best key's index is the hard attention and its relevance the soft attention
    ``S``. The reference features at the same index are then folded back at three scales
    (3x3 at lv3, 6x6 stride 2 at lv2, 12x12 stride 4 at lv1), averaged over the overlaps.

    Memory: the full relevance matrix is ``N x (Hr*Wr) x (H*W)`` floats (4 bytes each); it is
    never materialised. The argmax is searched without gradient over chunks of ``chunk_size``
    reference positions (at most ``N x chunk_size x H*W`` floats alive at once), and the relevance
    of the chosen patch is recomputed as one differentiable inner product per query
    (``N x 2304 x H*W`` floats), so the backward pass needs no relevance matrix either. The
    transferred textures cost ``N x (64*144 + 128*36 + 256*9) x H*W`` floats, plus the unfolded
    reference features, ``N x (64*144 + 128*36 + 256*9) x Hr*Wr``.

    Args:
        chunk_size: reference positions per chunk of the argmax search.
    """

    def __init__(self, chunk_size: int = 4096):
        super().__init__()
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        self.chunk_size = chunk_size

    @torch.no_grad()
    def hard_attention(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Index of the most relevant key for each query: (N, D, P) x (N, D, L) normalised -> (N, P)."""
        best_value = torch.full(query.shape[::2], -float("inf"), device=query.device, dtype=torch.float32)
        best_index = torch.zeros(query.shape[::2], device=query.device, dtype=torch.long)
        for start in range(0, keys.shape[2], self.chunk_size):
            chunk = keys[:, :, start : start + self.chunk_size]
            relevance = torch.bmm(chunk.transpose(1, 2), query).float()  # (N, chunk, P)
            value, index = relevance.max(dim=1)
            better = value > best_value  # strict: ties keep the first (lowest) index, as torch.max
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
        return best_index

    def forward(
        self,
        lrsr_lv3: torch.Tensor,
        refsr_lv3: torch.Tensor,
        ref_lv1: torch.Tensor,
        ref_lv2: torch.Tensor,
        ref_lv3: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(S, T_lv3, T_lv2, T_lv1, index)``: soft attention (N,1,H,W), textures, hard attention (N,H*W)."""
        h, w = lrsr_lv3.shape[-2:]
        query = F.normalize(F.unfold(lrsr_lv3, kernel_size=3, padding=1), dim=1)  # (N, C*9, H*W)
        keys = F.normalize(F.unfold(refsr_lv3, kernel_size=3, padding=1), dim=1)  # (N, C*9, Hr*Wr)
        index = self.hard_attention(query, keys)
        soft = (_batch_index_select(keys, index) * query).sum(dim=1)  # relevance of the chosen patch
        t_lv3 = _batch_index_select(F.unfold(ref_lv3, kernel_size=3, padding=1), index)
        t_lv2 = _batch_index_select(F.unfold(ref_lv2, kernel_size=6, padding=2, stride=2), index)
        t_lv1 = _batch_index_select(F.unfold(ref_lv1, kernel_size=12, padding=4, stride=4), index)
        # Divided by 9 as in the authors' code: each output pixel is covered by 3x3 folded patches.
        t_lv3 = F.fold(t_lv3, (h, w), kernel_size=3, padding=1) / 9.0
        t_lv2 = F.fold(t_lv2, (2 * h, 2 * w), kernel_size=6, padding=2, stride=2) / 9.0
        t_lv1 = F.fold(t_lv1, (4 * h, 4 * w), kernel_size=12, padding=4, stride=4) / 9.0
        return soft.view(-1, 1, h, w), t_lv3, t_lv2, t_lv1, index


class ResBlock(nn.Module):
    """conv3x3-ReLU-conv3x3 with an identity skip, the residual scaled by ``res_scale``."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = _conv3x3(n_feats, n_feats)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


def _res_blocks(count: int, n_feats: int, res_scale: float) -> nn.ModuleList:
    return nn.ModuleList([ResBlock(n_feats, res_scale) for _ in range(count)])


def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


class SFE(nn.Module):
    """Shallow feature extractor of the LR image: conv head, residual blocks, conv tail, long skip."""

    def __init__(self, num_res_blocks: int, n_feats: int, res_scale: float):
        super().__init__()
        self.conv_head = _conv3x3(3, n_feats)
        self.RBs = _res_blocks(num_res_blocks, n_feats, res_scale)
        self.conv_tail = _conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_head(x))
        return self.conv_tail(_run(self.RBs, x)) + x


class CSFI2(nn.Module):
    """Cross-scale feature integration between the x1 and x2 branches."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv12 = _conv1x1(n_feats, n_feats)
        self.conv21 = _conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = _conv3x3(n_feats * 2, n_feats)
        self.conv_merge2 = _conv3x3(n_feats * 2, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x12 = F.relu(self.conv12(_up(x1, 2)))
        x21 = F.relu(self.conv21(x2))
        return (F.relu(self.conv_merge1(torch.cat((x1, x21), 1))), F.relu(self.conv_merge2(torch.cat((x2, x12), 1))))


class CSFI3(nn.Module):
    """Cross-scale feature integration between the x1, x2 and x4 branches."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv12 = _conv1x1(n_feats, n_feats)
        self.conv13 = _conv1x1(n_feats, n_feats)
        self.conv21 = _conv3x3(n_feats, n_feats, 2)
        self.conv23 = _conv1x1(n_feats, n_feats)
        self.conv31_1 = _conv3x3(n_feats, n_feats, 2)
        self.conv31_2 = _conv3x3(n_feats, n_feats, 2)
        self.conv32 = _conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = _conv3x3(n_feats * 3, n_feats)
        self.conv_merge2 = _conv3x3(n_feats * 3, n_feats)
        self.conv_merge3 = _conv3x3(n_feats * 3, n_feats)

    def forward(self, x1, x2, x3):
        x12 = F.relu(self.conv12(_up(x1, 2)))
        x13 = F.relu(self.conv13(_up(x1, 4)))
        x21 = F.relu(self.conv21(x2))
        x23 = F.relu(self.conv23(_up(x2, 2)))
        x31 = F.relu(self.conv31_2(F.relu(self.conv31_1(x3))))
        x32 = F.relu(self.conv32(x3))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21, x31), 1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12, x32), 1)))
        x3 = F.relu(self.conv_merge3(torch.cat((x3, x13, x23), 1)))
        return x1, x2, x3


class MergeTail(nn.Module):
    """Merge the three branches at x4 and map to RGB (no clamp: see the module docstring)."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.conv13 = _conv1x1(n_feats, n_feats)
        self.conv23 = _conv1x1(n_feats, n_feats)
        self.conv_merge = _conv3x3(n_feats * 3, n_feats)
        self.conv_tail1 = _conv3x3(n_feats, n_feats // 2)
        self.conv_tail2 = _conv1x1(n_feats // 2, 3)

    def forward(self, x1, x2, x3):
        x13 = F.relu(self.conv13(_up(x1, 4)))
        x23 = F.relu(self.conv23(_up(x2, 2)))
        x = F.relu(self.conv_merge(torch.cat((x3, x13, x23), 1)))
        return self.conv_tail2(self.conv_tail1(x))


class MainNet(nn.Module):
    """The SR backbone: SFE, then three stages (x1, x2, x4) each fusing the transferred texture
    weighted by the soft attention, with CSFI between the scales and a merge tail."""

    def __init__(self, num_res_blocks: tuple[int, int, int, int], n_feats: int, res_scale: float):
        super().__init__()
        self.SFE = SFE(num_res_blocks[0], n_feats, res_scale)
        self.conv11_head = _conv3x3(TEXTURE_CHANNELS[2] + n_feats, n_feats)
        self.RB11 = _res_blocks(num_res_blocks[1], n_feats, res_scale)
        self.conv11_tail = _conv3x3(n_feats, n_feats)
        self.conv12 = _conv3x3(n_feats, n_feats * 4)
        self.ps12 = nn.PixelShuffle(2)
        self.conv22_head = _conv3x3(TEXTURE_CHANNELS[1] + n_feats, n_feats)
        self.ex12 = CSFI2(n_feats)
        self.RB21 = _res_blocks(num_res_blocks[2], n_feats, res_scale)
        self.RB22 = _res_blocks(num_res_blocks[2], n_feats, res_scale)
        self.conv21_tail = _conv3x3(n_feats, n_feats)
        self.conv22_tail = _conv3x3(n_feats, n_feats)
        self.conv23 = _conv3x3(n_feats, n_feats * 4)
        self.ps23 = nn.PixelShuffle(2)
        self.conv33_head = _conv3x3(TEXTURE_CHANNELS[0] + n_feats, n_feats)
        self.ex123 = CSFI3(n_feats)
        self.RB31 = _res_blocks(num_res_blocks[3], n_feats, res_scale)
        self.RB32 = _res_blocks(num_res_blocks[3], n_feats, res_scale)
        self.RB33 = _res_blocks(num_res_blocks[3], n_feats, res_scale)
        self.conv31_tail = _conv3x3(n_feats, n_feats)
        self.conv32_tail = _conv3x3(n_feats, n_feats)
        self.conv33_tail = _conv3x3(n_feats, n_feats)
        self.merge_tail = MergeTail(n_feats)

    def forward(self, x, S, T_lv3, T_lv2, T_lv1):
        x11 = self.SFE(x)
        # stage 1 (x1): soft-attention-weighted fusion of the lv3 texture
        x11 = x11 + self.conv11_head(torch.cat((x11, T_lv3), 1)) * S
        x11 = x11 + self.conv11_tail(_run(self.RB11, x11))
        # stage 2 (x1, x2)
        x21 = x11
        x22 = F.relu(self.ps12(self.conv12(x11)))
        x22 = x22 + self.conv22_head(torch.cat((x22, T_lv2), 1)) * _up(S, 2)
        x21_res, x22_res = self.ex12(x21, x22)
        for rb21, rb22 in zip(self.RB21, self.RB22):
            x21_res, x22_res = rb21(x21_res), rb22(x22_res)
        x21 = x21 + self.conv21_tail(x21_res)
        x22 = x22 + self.conv22_tail(x22_res)
        # stage 3 (x1, x2, x4)
        x31, x32 = x21, x22
        x33 = F.relu(self.ps23(self.conv23(x22)))
        x33 = x33 + self.conv33_head(torch.cat((x33, T_lv1), 1)) * _up(S, 4)
        x31_res, x32_res, x33_res = self.ex123(x31, x32, x33)
        for rb31, rb32, rb33 in zip(self.RB31, self.RB32, self.RB33):
            x31_res, x32_res, x33_res = rb31(x31_res), rb32(x32_res), rb33(x33_res)
        x31 = x31 + self.conv31_tail(x31_res)
        x32 = x32 + self.conv32_tail(x32_res)
        x33 = x33 + self.conv33_tail(x33_res)
        return self.merge_tail(x31, x32, x33)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of ``x`` so both sides are multiples of ``multiple``.

    Replicated edge pixels only add reference patches that repeat the border, which can be matched
    like any other patch; nothing of the reference is lost.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class TTSR(nn.Module):
    """Texture Transformer Network for x4 reference-based SR, called as ``net(lr, ref)``.

    ``lr``: (N, 3, h, w) in [0, 1]; ``ref``: (N, 3, Hr, Wr) in [0, 1], any size (padded at the
    bottom/right to a multiple of 4, by replication); output (N, 3, 4h, 4w), not clamped. LR-up
    and Ref-down-up are made with MATLAB bicubic (:func:`lit_sr.ops.imresize`), as the CUFED data
    of the paper. The output is differentiable w.r.t. ``lr`` and ``ref`` (see the module docstring).

    Memory of the attention: see :class:`SearchTransfer`; with a 40x40 LR (160 px output) and a
    160x160 reference, the relevance would be 1600 x 1600 floats (10 MB) per image; ``chunk_size``
    bounds the part alive at once for larger references.

    Args:
        n_feats: feature channels of the backbone (64).
        num_res_blocks: residual blocks of SFE and of the three stages, four integers or TTSR's
            string form (``"16+16+8+4"``, the paper's default).
        res_scale: residual scaling of the blocks (1).
        upscale: must be 4 (TTSR transfers textures at x1, x2, x4 only); present so the modules'
            scale can be checked against the network.
        vgg_weights: torchvision VGG19 file to initialise the texture extractor from (see
            :class:`LTE`); ``None`` is a random init with a logged warning.
        chunk_size: reference positions per chunk of the hard-attention search.

    Parameter count (n_feats 64, 16+16+8+4): 6,729,603, of which 555,328 in the extractor (the
    paper: 6.7 M).

    The authors' files load strictly (``lit_sr.io.load_weights(net, path)``): the ``model_*.pt``
    their trainer saves (a flat state_dict with ``LTE.sub_mean.weight``/``.bias``, the frozen
    mean-shift conv, accepted when it holds the ImageNet constants) and the full ``nn.Module``
    state with the ``LTE_copy.*`` entries (accepted when they mirror ``LTE``, then dropped: the
    authors re-copy ``LTE`` into it before each use, so the stored values are never read).
    Anything else in those names is refused with a ``ValueError`` naming the keys.

    Resizing: lit-sr makes LR-up and Ref-down-up with MATLAB bicubic (:func:`lit_sr.ops.imresize`,
    antialiased when downscaling) on float tensors, inside the network; the authors' CUFED loader
    makes them with PIL bicubic on uint8 images. MATLAB's because it is differentiable and batched
    on the model's device (an attack on ``ref`` goes through Ref-down-up), it is the resize that
    made the benchmarks' LR images (CUFED5 included), and it is lit-sr's one resize everywhere.
    Measured on 160 px crops of the scikit-image photos (``benchmarks/resize_pil_vs_matlab.py``,
    [0, 1] scale): /4 differs by at most 0.016 inside (mean 0.0004 after uint8 rounding: PIL
    rounds to uint8 between its two passes) and up to 0.071 in the 2-px border (PIL renormalises
    the truncated kernel, MATLAB mirrors the image); /4 then x4 by up to 0.047 inside and 0.082 at
    the border. So weights trained on the authors' pipeline see slightly other inputs here.
    """

    def __init__(
        self,
        n_feats: int = 64,
        num_res_blocks: Sequence[int] | str = (16, 16, 8, 4),
        res_scale: float = 1.0,
        upscale: int = 4,
        vgg_weights: str | None = None,
        chunk_size: int = 4096,
    ):
        super().__init__()
        if upscale != 4:
            raise ValueError(f"TTSR is a x4 network (textures at x1, x2, x4); got upscale={upscale!r}")
        if isinstance(n_feats, bool) or not isinstance(n_feats, int) or n_feats < 2:
            raise ValueError(f"n_feats must be an integer >= 2, got {n_feats!r}")
        self.upscale = upscale
        self.num_res_blocks = parse_num_res_blocks(num_res_blocks)
        self.LTE = LTE(vgg_weights)
        self.SearchTransfer = SearchTransfer(chunk_size)
        self.MainNet = MainNet(self.num_res_blocks, n_feats, res_scale)
        self.register_load_state_dict_pre_hook(_accept_authors_lte_copy)

    def texture_features(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LTE features of ``img`` (e.g. the SR output) with the extractor's weights held constant.

        This is the authors' ``LTE_copy`` of the transferal perceptual loss: the gradient reaches
        ``img`` but not the extractor. Done with detached parameters instead of a second copy.
        """
        params = {k: v.detach() for k, v in self.LTE.named_parameters()}
        buffers = dict(self.LTE.named_buffers())
        return functional_call(self.LTE, {**params, **buffers}, (img,))

    def search(self, lr: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(S, T_lv3, T_lv2, T_lv1, index)`` of :class:`SearchTransfer` for a [0, 1] batch."""
        if lr.dim() != 4 or ref.dim() != 4 or lr.shape[0] != ref.shape[0] or lr.shape[1] != 3 or ref.shape[1] != 3:
            raise ValueError(
                f"TTSR needs lr (N, 3, h, w) and ref (N, 3, Hr, Wr) with one N, got {tuple(lr.shape)} and {tuple(ref.shape)}"
            )
        ref = pad_to_multiple(ref, 4)
        lrsr = imresize(lr, 4)
        refsr = imresize(imresize(ref, 1 / 4), 4)
        # One extractor pass over the three inputs when they share a size (CUFED's 160 px crops).
        if lrsr.shape == ref.shape:
            feats = self.LTE(torch.cat((lrsr, refsr, ref)))
            n = lr.shape[0]
            lrsr_lv3, refsr_lv3 = feats[2][:n], feats[2][n : 2 * n]
            ref_lv1, ref_lv2, ref_lv3 = (f[2 * n :] for f in feats)
        else:
            lrsr_lv3 = self.LTE(lrsr)[2]
            refsr_lv3 = self.LTE(refsr)[2]
            ref_lv1, ref_lv2, ref_lv3 = self.LTE(ref)
        return self.SearchTransfer(lrsr_lv3, refsr_lv3, ref_lv1, ref_lv2, ref_lv3)

    def forward_with_textures(self, lr: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(sr, S, T_lv3, T_lv2, T_lv1)``: the output and what the transferal perceptual loss needs."""
        S, t_lv3, t_lv2, t_lv1, _ = self.search(lr, ref)
        sr = self.MainNet(lr * 2 - 1, S, t_lv3, t_lv2, t_lv1)
        return (sr + 1) / 2, S, t_lv3, t_lv2, t_lv1

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.forward_with_textures(lr, ref)[0]


class TTSRDiscriminator(nn.Module):
    """TTSR's discriminator for the WGAN-GP loss: ten 3x3 convs (every second one stride 2) with
    LeakyReLU(0.2), then two linear layers to one score per image. No normalisation layer, as the
    gradient penalty needs (a batch norm would couple the images of a batch).

    Args:
        in_size: square input side, a multiple of 32 (TTSR: 160, its training crop).
        num_feat: channels of the first conv (32); doubled every two convs up to 16x.
    """

    def __init__(self, in_size: int = 160, num_feat: int = 32):
        super().__init__()
        if isinstance(in_size, bool) or not isinstance(in_size, int) or in_size < 32 or in_size % 32:
            raise ValueError(f"in_size must be a positive multiple of 32, got {in_size!r}")
        self.in_size = in_size
        widths = [num_feat * 2**k for k in range(5)]
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [_conv3x3(in_ch, width), nn.LeakyReLU(0.2), _conv3x3(width, width, 2), nn.LeakyReLU(0.2)]
            in_ch = width
        self.body = nn.Sequential(*layers)
        self.fc1 = nn.Linear((in_size // 32) ** 2 * widths[-1], 1024)
        self.lrelu = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, in_size, in_size) in [0, 1] -> (N, 1) scores."""
        if x.shape[-2:] != (self.in_size, self.in_size):
            raise ValueError(
                f"TTSRDiscriminator(in_size={self.in_size}) needs {self.in_size}x{self.in_size} inputs, "
                f"got {tuple(x.shape[-2:])}; set in_size to the training patch size"
            )
        return self.fc2(self.lrelu(self.fc1(self.body(x * 2 - 1).flatten(1))))
