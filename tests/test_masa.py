"""MASA-SR: shapes, matching (against naive re-implementations and at a known offset), chunking,
gradients, transfer, RefSR-Adv on it, and the state_dict round trip.

Networks are tiny (8 features, one block per stage) and randomly initialised (with the authors'
init); matching on random features is still exact matching of identical content.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lit_sr.archs import build_arch, count_parameters
from lit_sr.archs.masa_arch import MASA, Match, MatchExtract
from lit_sr.attacks.refsr_adv import RefSRAdv
from lit_sr.io import load_weights, save_weights
from lit_sr.ops import imresize

EPS = 8 / 255
TINY = {"n_feats": 8, "n_blks": [1, 1, 1], "n_blks_dec": [1, 1, 1, 1, 1, 1]}


def tiny_masa(seed: int = 0, **kwargs) -> MASA:
    torch.manual_seed(seed)
    return build_arch("masa", **{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("lr_hw", "ref_hw"),
    [((8, 8), (32, 32)), ((10, 13), (37, 50)), ((9, 7), (64, 20)), ((16, 16), (3, 5)), ((12, 20), (100, 44))],
)
def test_masa_output_shape_for_any_lr_and_reference_size(lr_hw, ref_hw):
    net = tiny_masa().eval()
    lr, ref = torch.rand(2, 3, *lr_hw), torch.rand(2, 3, *ref_hw)
    with torch.no_grad():
        sr = net(lr, ref)
    assert sr.shape == (2, 3, 4 * lr_hw[0], 4 * lr_hw[1])
    assert torch.isfinite(sr).all()


def test_masa_defaults_are_the_published_network():
    net = build_arch("masa")
    assert (net.n_feats, net.n_blks, net.n_blks_dec) == (64, (4, 4, 4), (2, 2, 2, 12, 8, 4))
    me = net.match_extract
    assert (me.lr_block_size, me.ref_down_block_size, me.dilations) == (8, 1.5, (1, 2, 3))
    assert count_parameters(net) == 4_028_291  # the paper: 4.03 M
    # the authors' parameter names, so their state_dicts map one to one
    keys = set(net.state_dict())
    for key in ("enc.conv_L1.weight", "enc.blk_L3.3.conv2.bias", "decoder.pAda.conv_shared.0.weight",
                "decoder.pAda.conv_gamma.weight", "decoder.dram_x4.conv_up_b.weight", "decoder.blk_x1.11.conv1.weight",
                "decoder.merge_warp_x1.weight", "decoder.conv_out.weight"):
        assert key in keys, key


def _features(net: MASA, lr: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lr, ref = net.pad_inputs(lr, ref)
    with torch.no_grad():
        return net.enc(lr)[0], net.enc(imresize(ref, 1 / 4))[0]


def naive_coarse(lr_feat: torch.Tensor, reflr: torch.Tensor, k: int, dilations) -> torch.Tensor:
    """The authors' ``MASA.forward`` + ``MASA.search`` (dvlab-research/MASA-SR, models/archs/MASA_arch.py),
    re-written from their definition, not from ours: the replicate-padded features are unfolded
    into (k+2) x (k+2) blocks at stride k and ``search`` is given those blocks, so the centre it
    takes, ``k_y // 2`` of the block it receives, is ``(k + 2) // 2``; the reference is unfolded
    at each dilation (zero padding = dilation) and the cosine scores are summed; one block at a time.
    """
    n, c, h, w = lr_feat.shape
    padded = F.pad(lr_feat, (1, 1, 1, 1), mode="replicate")
    blocks = F.unfold(padded, kernel_size=(k + 2, k + 2), stride=(k, k))  # (N, C*(k+2)^2, P)
    blocks = blocks.view(n, c, k + 2, k + 2, -1).permute(0, 4, 1, 2, 3)  # (N, P, C, k+2, k+2)
    k_y, k_x = blocks.shape[-2:]
    y, x = k_y // 2, k_x // 2  # the authors' centre of the block they are given
    best = torch.empty(n, blocks.shape[1], dtype=torch.long)
    for i in range(n):
        for b in range(blocks.shape[1]):
            score = 0
            for d in dilations:
                keys = F.normalize(F.unfold(reflr[i : i + 1], 3, padding=d, dilation=d)[0], dim=0)  # (9C, Hr*Wr)
                query = blocks[i, b, :, y - d : y + d + 1 : d, x - d : x + d + 1 : d].reshape(-1)
                score = score + F.normalize(query, dim=0) @ keys
            best[i, b] = score.argmax()
    return best


def naive_fine(lr_feat, reflr, match: Match, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every image and block: crop the region, unfold both sides, argmax, in Python loops."""
    n, c, h, w = lr_feat.shape
    padded = F.pad(lr_feat, (1, 1, 1, 1), mode="replicate")
    ry, rx = match.region
    tops, lefts = torch.zeros_like(match.patch_top), torch.zeros_like(match.patch_left)
    blocks_x = w // k
    for i in range(n):
        for b in range(match.top.shape[1]):
            by, bx = divmod(b, blocks_x)
            t, lft = int(match.top[i, b]), int(match.left[i, b])
            keys = F.normalize(F.unfold(reflr[i : i + 1, :, t : t + ry, lft : lft + rx], 3), dim=1)[0]
            block = padded[i : i + 1, :, by * k : by * k + k + 2, bx * k : bx * k + k + 2]
            queries = F.normalize(F.unfold(block, 3), dim=1)[0]  # (9C, k*k)
            index = (queries.T @ keys).argmax(dim=1)
            tops[i, b] = t + index // (rx - 2)
            lefts[i, b] = lft + index % (rx - 2)
    return tops, lefts


@pytest.mark.parametrize(("lr_hw", "ref_hw"), [((16, 24), (64, 80)), ((16, 16), (120, 40))])
def test_coarse_and_fine_search_equal_naive_loops(lr_hw, ref_hw):
    net = tiny_masa().eval()
    torch.manual_seed(3)
    lr_feat, reflr = _features(net, torch.rand(2, 3, *lr_hw), torch.rand(2, 3, *ref_hw))
    me = net.match_extract
    match = me.match(lr_feat, reflr)
    assert torch.equal(match.centre, naive_coarse(lr_feat, reflr, 8, me.dilations))
    # the region: the published side 2*int((Wr // (2*blocks)) * 1.5) + 1, plus the patch border
    hr, wr = reflr.shape[-2:]
    expected = tuple(min(2 * int((s // (2 * (lr_s // 8))) * 1.5) + 3, s) for s, lr_s in zip((hr, wr), lr_hw))
    assert match.region == expected
    # centred on the coarse match, shifted inside the reference where it would cross its border
    ry, rx = match.region
    assert (match.top >= 0).all() and (match.top + ry <= hr).all()
    assert (match.left >= 0).all() and (match.left + rx <= wr).all()
    centre_y, centre_x = match.centre // wr, match.centre % wr
    inside_y = (centre_y - ry // 2 >= 0) & (centre_y + ry // 2 < hr)
    inside_x = (centre_x - rx // 2 >= 0) & (centre_x + rx // 2 < wr)
    assert torch.equal(match.top[inside_y], (centre_y - ry // 2)[inside_y])
    assert torch.equal(match.left[inside_x], (centre_x - rx // 2)[inside_x])
    assert (~inside_y).any() or (~inside_x).any()  # the clamped case is exercised too
    # every fine match lies inside its block's region, and it is that region's argmax
    assert (match.patch_top >= match.top[..., None]).all() and (match.patch_top <= (match.top + ry - 3)[..., None]).all()
    assert (match.patch_left >= match.left[..., None]).all()
    assert (match.patch_left <= (match.left + rx - 3)[..., None]).all()
    tops, lefts = naive_fine(lr_feat, reflr, match, 8)
    assert torch.equal(match.patch_top, tops) and torch.equal(match.patch_left, lefts)


def test_matching_finds_the_lr_content_at_its_offset_in_the_reference(photos):
    net = tiny_masa().eval()
    img = imresize(photos["astronaut"][None], 0.5).clamp(0, 1)  # 256 px
    hr = img[..., 64:192, 48:176]  # 128 px HR, LR 32 px: 4 x 4 blocks of 8
    lr = imresize(hr, 1 / 4)
    ref = img[..., 32:224, 0:192].contiguous()  # the HR at (+32, +48) px: (+8, +12) in Ref-down
    with torch.no_grad():
        match = net.match(lr, ref)
    wr, (oy, ox) = ref.shape[-1] // 4, (8, 12)
    blocks = torch.arange(16)
    # block centres (LR px k//2 = 4 within the block, the authors' (k+2)//2 of the padded block)
    # found at their place (interior blocks:
    # at the LR border MATLAB's symmetric padding makes LR differ from the crop of a larger image)
    cy, cx = (blocks // 4) * 8 + 4 + oy, (blocks % 4) * 8 + 4 + ox
    interior = ((blocks // 4) % 3 != 0) & ((blocks % 4) % 3 != 0)
    assert torch.equal(match.centre[0][interior], (cy * wr + cx)[interior])
    # ... so their regions hold the true place, and every position of those blocks finds its own
    # patch (relevance ~1: not exactly, the bicubic kernels reach past the crop)
    qy = (blocks // 4)[:, None] * 8 + torch.arange(64) // 8  # LR row of every query, (P, k*k)
    qx = (blocks % 4)[:, None] * 8 + torch.arange(64) % 8
    hit = (match.patch_top[0] + 1 == qy + oy) & (match.patch_left[0] + 1 == qx + ox)  # patch centre = query + offset
    assert hit[interior].all(), hit.int()
    assert (match.soft[0][interior] > 0.99).all()
    # border blocks: matched within their own region whatever it is (the search is restricted)
    ry, rx = match.region
    assert ((match.patch_top[0] >= match.top[0][:, None]) & (match.patch_top[0] <= match.top[0][:, None] + ry - 3)).all()
    assert hit.float().mean() > 0.4


def naive_transfer(ref_feat, match: Match, s: int, k: int, lr_hw) -> torch.Tensor:
    """The authors' per-block transfer: crop the region at scale s, unfold, gather, fold, divide, weight."""
    n, c = ref_feat.shape[:2]
    ry, rx = match.region
    blocks_x = lr_hw[1] // k
    out = torch.zeros(n, c, lr_hw[0] * s, lr_hw[1] * s)
    for i in range(n):
        for b in range(match.top.shape[1]):
            by, bx = divmod(b, blocks_x)
            t, lft = int(match.top[i, b]), int(match.left[i, b])
            crop = ref_feat[i : i + 1, :, t * s : (t + ry) * s, lft * s : (lft + rx) * s]
            unfolded = F.unfold(crop, 3 * s, stride=s)  # (1, C*9s^2, (ry-2)*(rx-2))
            index = (match.patch_top[i, b] - t) * (rx - 2) + (match.patch_left[i, b] - lft)
            picked = unfolded[:, :, index]
            kw = dict(output_size=(k * s, k * s), kernel_size=3 * s, padding=s, stride=s)
            folded = F.fold(picked, **kw) / F.fold(torch.ones_like(picked), **kw)
            soft = F.interpolate(match.soft[i, b].view(1, 1, k, k), size=(k * s, k * s), mode="bilinear",
                                 align_corners=False)
            out[i, :, by * k * s : (by + 1) * k * s, bx * k * s : (bx + 1) * k * s] = (folded * soft)[0]
    return out


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_transfer_equals_the_per_block_crop_unfold_fold(scale):
    net = tiny_masa().eval()
    torch.manual_seed(4)
    lr, ref = torch.rand(2, 3, 16, 24), torch.rand(2, 3, 72, 64)
    lr_feat, reflr = _features(net, lr, ref)
    with torch.no_grad():
        match = net.match_extract.match(lr_feat, reflr)
        ref_feat = torch.rand(2, 5, reflr.shape[-2] * scale, reflr.shape[-1] * scale)
        fast = net.match_extract.transfer(ref_feat, match, scale, (16, 24))
    assert torch.allclose(fast, naive_transfer(ref_feat, match, scale, 8, (16, 24)), atol=1e-6)


def test_chunked_matching_gives_identical_outputs():
    torch.manual_seed(1)
    lr, ref = torch.rand(2, 3, 24, 16), torch.rand(2, 3, 90, 70)  # 6 blocks per image
    whole, chunked = tiny_masa(chunk_size=10_000).eval(), tiny_masa(chunk_size=1).eval()
    with torch.no_grad():
        a, b = whole.match(lr, ref), chunked.match(lr, ref)
        for name in ("centre", "top", "left", "patch_top", "patch_left"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.soft, b.soft)
        assert torch.equal(whole(lr, ref), chunked(lr, ref))


def test_gradient_with_respect_to_the_reference_is_nonzero():
    net = tiny_masa().eval()
    lr = torch.rand(2, 3, 16, 16, requires_grad=True)
    ref = torch.rand(2, 3, 64, 64, requires_grad=True)
    net(lr, ref).square().sum().backward()
    assert torch.isfinite(ref.grad).all() and torch.isfinite(lr.grad).all()
    # every image's reference receives gradient, through the gathered features and through Ref-down
    assert (ref.grad.flatten(1).abs().sum(dim=1) > 0).all()
    assert (lr.grad.flatten(1).abs().sum(dim=1) > 0).all()
    # the soft attention alone is differentiable too (the index is not: it is an argmax)
    ref2 = ref.detach().clone().requires_grad_(True)
    net.match(lr.detach(), ref2).soft.sum().backward()
    assert ref2.grad.abs().sum() > 0


def test_bf16_autocast_forward_and_backward():
    net = tiny_masa().eval()
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(lr, ref)
    out.float().square().sum().backward()
    assert torch.isfinite(out.float()).all() and ref.grad.abs().sum() > 0
    with torch.no_grad():
        full = net(lr, ref)
    assert (out.float() - full).abs().mean() < 0.05  # close to float32 (same matches: searched in float32)


def test_masa_arguments_are_validated():
    with pytest.raises(ValueError, match="x4"):
        build_arch("masa", upscale=2)
    with pytest.raises(ValueError, match="n_blks_dec"):
        build_arch("masa", n_blks_dec=[1, 1, 1])
    with pytest.raises(ValueError, match="lr_block_size"):
        MatchExtract(lr_block_size=4, dilations=(1, 2, 3))
    with pytest.raises(ValueError, match="ref_down_block_size"):
        MatchExtract(ref_down_block_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        MatchExtract(chunk_size=0)
    with pytest.raises(ValueError, match="one N"):
        tiny_masa()(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 32, 32))


def test_refsr_adv_runs_on_masa_and_leaves_lr_untouched():
    net = tiny_masa().train()
    torch.manual_seed(2)
    lr, ref = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 64, 64)
    lr_before = lr.clone()
    ref_adv = RefSRAdv(net, eps=EPS, steps=3, seed=0)(lr, ref)
    assert torch.equal(lr, lr_before)  # bit-identical
    assert (ref_adv - ref).abs().max() <= EPS + 1e-6 and ref_adv.min() >= 0 and ref_adv.max() <= 1
    assert net.training and all(p.grad is None for p in net.parameters())  # mode restored, no gradient left
    with torch.no_grad():
        clean, attacked = net.eval()(lr, ref), net(lr, ref_adv)
    # it pushed the output away from the clean one, further than uniform noise of the same budget
    noise = (ref + torch.empty_like(ref).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        noisy = net(lr, noise)
    assert (attacked - clean).square().sum() > (noisy - clean).square().sum()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dict_round_trip_through_the_weights_files(tmp_path, suffix):
    net = tiny_masa(seed=0).eval()
    path = save_weights(net, tmp_path / f"masa{suffix}")
    other = tiny_masa(seed=1).eval()
    lr, ref = torch.rand(1, 3, 8, 16), torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert not torch.equal(other(lr, ref), net(lr, ref))
        load_weights(other, path, strict=True)
        assert torch.equal(other(lr, ref), net(lr, ref))
