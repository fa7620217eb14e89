"""Model-zoo networks: shapes, parameter counts, BasicSR / official checkpoint layouts, SwinIR sizes.

All networks here are randomly initialised (no pretrained weights). The checkpoint-layout tests
build state_dicts from the published key names and shapes, written out below independently of
the implementation, and load them with ``strict=True``.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lit_sr.archs import build_arch, count_parameters
from lit_sr.archs.swinir_arch import WindowAttention, calculate_mask

# ------------------------------------------------------------------------------------------------
# Tiny configurations
# ------------------------------------------------------------------------------------------------

TINY = {
    "rcan": dict(num_feat=8, num_group=1, num_block=1, squeeze_factor=4),
    "rrdbnet": dict(num_feat=8, num_block=1, num_grow_ch=4),
    "swinir": dict(img_size=8, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                   upsampler="pixelshuffle"),
    "carn": dict(num_feat=8),
    "carn_m": dict(num_feat=8),
}
SCALE_ARG = {"rcan": "upscale", "rrdbnet": "scale", "swinir": "upscale", "carn": "scale", "carn_m": "scale"}
SCALES = {"rcan": (2, 3, 4), "rrdbnet": (1, 2, 4), "swinir": (2, 3, 4), "carn": (2, 3, 4), "carn_m": (2, 3, 4)}


@pytest.mark.parametrize("name,scale", [(n, s) for n, scales in SCALES.items() for s in scales])
def test_output_shape_every_scale(name, scale):
    torch.manual_seed(0)
    net = build_arch(name, **TINY[name], **{SCALE_ARG[name]: scale}).eval()
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 8 * scale, 12 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "upsampler,upscale,resi",
    [("pixelshuffledirect", 3, "1conv"), ("nearest+conv", 4, "3conv"), ("", 1, "1conv"), ("pixelshuffle", 8, "3conv")],
)
def test_swinir_upsamplers(upsampler, upscale, resi):
    torch.manual_seed(0)
    cfg = dict(TINY["swinir"], upsampler=upsampler, upscale=upscale, resi_connection=resi)
    net = build_arch("swinir", **cfg).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 3, 8, 8))
    assert y.shape == (1, 3, 8 * upscale, 8 * upscale)


def test_carn_multi_scale_branches():
    torch.manual_seed(0)
    for name in ("carn", "carn_m"):
        net = build_arch(name, num_feat=8, multi_scale=True, scale=3).eval()
        x = torch.rand(1, 3, 6, 5)
        with torch.no_grad():
            assert net(x).shape == (1, 3, 18, 15)  # default branch = scale
            for s in (2, 3, 4):
                assert net(x, scale=s).shape == (1, 3, 6 * s, 5 * s)
        with pytest.raises(ValueError, match="scale"):
            net(x, scale=8)
    single = build_arch("carn", num_feat=8, scale=2)
    with pytest.raises(ValueError, match="scale"):
        single(torch.rand(1, 3, 4, 4), scale=4)


def test_invalid_configurations_raise():
    with pytest.raises(ValueError, match="scale"):
        build_arch("rrdbnet", scale=3)
    with pytest.raises(ValueError, match="multiple of 2"):
        build_arch("rrdbnet", **TINY["rrdbnet"], scale=2)(torch.rand(1, 3, 7, 8))
    with pytest.raises(ValueError, match="upsampler"):
        build_arch("swinir", **dict(TINY["swinir"], upsampler="bilinear"))
    with pytest.raises(ValueError, match="img_size"):
        build_arch("swinir", **dict(TINY["swinir"], img_size=10))
    with pytest.raises(ValueError, match="num_heads"):
        build_arch("swinir", **dict(TINY["swinir"], num_heads=[5]))
    with pytest.raises(ValueError, match="group"):
        build_arch("carn_m", num_feat=10, group=4)
    with pytest.raises(ValueError, match="upscale"):
        build_arch("rcan", **TINY["rcan"], upscale=5)
    with pytest.raises(TypeError, match="unknown arguments"):
        build_arch("rcan", num_feats=8)


# ------------------------------------------------------------------------------------------------
# Parameter counts at the standard configurations (instantiated on CPU, no forward pass)
# ------------------------------------------------------------------------------------------------

SWINIR_M_X4 = dict(upscale=4, img_size=48, window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180,
                   num_heads=[6] * 6, mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")


@pytest.fixture(scope="module")
def standard_nets():
    torch.manual_seed(0)
    return {
        "rcan": build_arch("rcan", num_group=10, num_block=20, upscale=4),
        "rrdbnet": build_arch("rrdbnet", scale=4, num_block=23),
        "swinir": build_arch("swinir", **SWINIR_M_X4),
    }


def test_standard_parameter_counts(standard_nets):
    assert count_parameters(standard_nets["rcan"]) == 15_592_355
    assert count_parameters(standard_nets["rrdbnet"]) == 16_697_987
    assert count_parameters(standard_nets["swinir"]) == 11_900_199
    # SwinIR's parameters do not depend on img_size (only the attn_mask buffers do).
    assert count_parameters(build_arch("swinir", **dict(SWINIR_M_X4, img_size=64))) == 11_900_199


@pytest.mark.parametrize(
    "name,kwargs,count",
    [
        ("carn", dict(multi_scale=True), 1_591_939),  # the paper's 1,592K
        ("carn", dict(scale=4), 1_111_875),
        ("carn", dict(scale=2), 964_163),
        ("carn", dict(scale=3), 1_148_803),
        ("carn_m", dict(multi_scale=True), 414_787),  # the paper's 412K
        ("carn_m", dict(scale=4), 294_147),
        ("vgg_discriminator", dict(), 14_499_401),
        ("vgg_discriminator", dict(input_size=256), 21_055_049),
        ("unet_discriminator", dict(), 4_376_897),
    ],
)
def test_small_parameter_counts(name, kwargs, count):
    assert count_parameters(build_arch(name, **kwargs)) == count


# ------------------------------------------------------------------------------------------------
# Checkpoint layouts, written from the published key names and shapes
# ------------------------------------------------------------------------------------------------


def _conv(prefix, out_ch, in_ch, k, bias=True):
    keys = {f"{prefix}.weight": (out_ch, in_ch, k, k)}
    if bias:
        keys[f"{prefix}.bias"] = (out_ch,)
    return keys


def _linear(prefix, out_f, in_f, bias=True):
    keys = {f"{prefix}.weight": (out_f, in_f)}
    if bias:
        keys[f"{prefix}.bias"] = (out_f,)
    return keys


def _norm(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _pixelshuffle_upsample(prefix, f, scale):
    if scale == 3:
        return _conv(f"{prefix}.0", 9 * f, f, 3)
    keys = {}
    for i in range(scale.bit_length() - 1):
        keys.update(_conv(f"{prefix}.{2 * i}", 4 * f, f, 3))
    return keys


def basicsr_rcan_layout(f, groups, blocks, squeeze, scale):
    keys = _conv("conv_first", f, 3, 3)
    for g in range(groups):
        for b in range(blocks):
            p = f"body.{g}.residual_group.{b}.rcab"
            keys.update(_conv(f"{p}.0", f, f, 3))
            keys.update(_conv(f"{p}.2", f, f, 3))
            keys.update(_conv(f"{p}.3.attention.1", f // squeeze, f, 1))
            keys.update(_conv(f"{p}.3.attention.3", f, f // squeeze, 1))
        keys.update(_conv(f"body.{g}.conv", f, f, 3))
    keys.update(_conv("conv_after_body", f, f, 3))
    keys.update(_pixelshuffle_upsample("upsample", f, scale))
    keys.update(_conv("conv_last", 3, f, 3))
    return keys


def basicsr_rrdbnet_layout(f, blocks, grow, scale):
    fold = {1: 16, 2: 4, 4: 1}[scale]
    keys = _conv("conv_first", f, 3 * fold, 3)
    for i in range(blocks):
        for r in (1, 2, 3):
            for k in range(1, 5):
                keys.update(_conv(f"body.{i}.rdb{r}.conv{k}", grow, f + (k - 1) * grow, 3))
            keys.update(_conv(f"body.{i}.rdb{r}.conv5", f, f + 4 * grow, 3))
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        keys.update(_conv(name, f, f, 3))
    keys.update(_conv("conv_last", 3, f, 3))
    return keys


def basicsr_swinir_layout(embed, depths, heads, window, img_size, mlp_ratio, scale):
    n = window * window
    num_windows = (img_size // window) ** 2
    keys = _conv("conv_first", embed, 3, 3)
    keys.update(_norm("patch_embed.norm", embed))
    for i, (depth, h) in enumerate(zip(depths, heads)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            keys.update(_norm(f"{p}.norm1", embed))
            keys[f"{p}.attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, h)
            keys[f"{p}.attn.relative_position_index"] = (n, n)
            keys.update(_linear(f"{p}.attn.qkv", 3 * embed, embed))
            keys.update(_linear(f"{p}.attn.proj", embed, embed))
            keys.update(_norm(f"{p}.norm2", embed))
            keys.update(_linear(f"{p}.mlp.fc1", int(embed * mlp_ratio), embed))
            keys.update(_linear(f"{p}.mlp.fc2", embed, int(embed * mlp_ratio)))
            if j % 2 == 1:
                keys[f"{p}.attn_mask"] = (num_windows, n, n)
        keys.update(_conv(f"layers.{i}.conv", embed, embed, 3))
    keys.update(_norm("norm", embed))
    keys.update(_conv("conv_after_body", embed, embed, 3))
    keys.update(_conv("conv_before_upsample.0", 64, embed, 3))
    keys.update(_pixelshuffle_upsample("upsample", 64, scale))
    keys.update(_conv("conv_last", 3, 64, 3))
    return keys


def official_carn_layout(f, scales, mobile, group):
    """nmhkahn/CARN-pytorch ``carn.Net`` / ``carn_m.Net`` keys (multi-scale when len(scales) > 1)."""
    keys = {}
    for shift in ("sub_mean", "add_mean"):
        keys.update(_conv(f"{shift}.shifter", 3, 3, 1))
    keys.update(_conv("entry", f, 3, 3))
    for b in (1, 2, 3):
        if mobile:
            keys.update(_conv(f"b{b}.b1.body.0", f, f // group, 3))
            keys.update(_conv(f"b{b}.b1.body.2", f, f // group, 3))
            keys.update(_conv(f"b{b}.b1.body.4", f, f, 1))
        else:
            for u in (1, 2, 3):
                keys.update(_conv(f"b{b}.b{u}.body.0", f, f, 3))
                keys.update(_conv(f"b{b}.b{u}.body.2", f, f, 3))
        for c in (1, 2, 3):
            keys.update(_conv(f"b{b}.c{c}.body.0", f, f * (c + 1), 1))
    for c in (1, 2, 3):
        keys.update(_conv(f"c{c}.body.0", f, f * (c + 1), 1))
    g = group if mobile else 1
    for s in scales:
        branch = f"upsample.up{s}" if len(scales) > 1 else "upsample.up"
        if s == 3:
            keys.update(_conv(f"{branch}.body.0", 9 * f, f // g, 3))
        else:
            for i in range(s.bit_length() - 1):
                keys.update(_conv(f"{branch}.body.{3 * i}", 4 * f, f // g, 3))
    keys.update(_conv("exit", 3, f, 3))
    return keys


def basicsr_vgg_discriminator_layout(f, input_size):
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    keys = _conv("conv0_0", f, 3, 3)
    keys.update(_conv("conv0_1", f, f, 4, bias=False))
    keys.update(bn("bn0_1", f))
    widths = [f, 2 * f, 4 * f, 8 * f, 8 * f] + ([8 * f] if input_size == 256 else [])
    for i in range(1, len(widths)):
        keys.update(_conv(f"conv{i}_0", widths[i], widths[i - 1], 3, bias=False))
        keys.update(bn(f"bn{i}_0", widths[i]))
        keys.update(_conv(f"conv{i}_1", widths[i], widths[i], 4, bias=False))
        keys.update(bn(f"bn{i}_1", widths[i]))
    keys.update(_linear("linear1", 100, 8 * f * 16))
    keys.update(_linear("linear2", 1, 100))
    return keys


def realesrgan_unet_layout(f):
    def sn_conv(prefix, out_ch, in_ch, k):
        return {f"{prefix}.weight_orig": (out_ch, in_ch, k, k), f"{prefix}.weight_u": (out_ch,),
                f"{prefix}.weight_v": (in_ch * k * k,)}

    keys = _conv("conv0", f, 3, 3)
    for name, out_ch, in_ch, k in [("conv1", 2 * f, f, 4), ("conv2", 4 * f, 2 * f, 4), ("conv3", 8 * f, 4 * f, 4),
                                   ("conv4", 4 * f, 8 * f, 3), ("conv5", 2 * f, 4 * f, 3), ("conv6", f, 2 * f, 3),
                                   ("conv7", f, f, 3), ("conv8", f, f, 3)]:
        keys.update(sn_conv(name, out_ch, in_ch, k))
    keys.update(_conv("conv9", 1, f, 3))
    return keys


def filled_state_dict(layout):
    """Tensors of the published shapes (constant values: only names, shapes and dtypes matter here)."""
    state = {}
    for key, shape in layout.items():
        if key.endswith(("relative_position_index", "num_batches_tracked")):
            state[key] = torch.zeros(shape, dtype=torch.long)
        else:
            state[key] = torch.full(shape, 0.01)
    return state


def assert_loads_strictly(net, layout):
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert set(ours) == set(layout), (sorted(set(ours) - set(layout)), sorted(set(layout) - set(ours)))
    assert ours == layout
    net.load_state_dict(filled_state_dict(layout), strict=True)


def test_published_keys_literally():
    """A few keys and shapes exactly as they appear in the BasicSR model-zoo files."""
    rcan = basicsr_rcan_layout(64, 10, 20, 16, 4)
    assert rcan["body.0.residual_group.0.rcab.0.weight"] == (64, 64, 3, 3)
    assert rcan["body.9.residual_group.19.rcab.3.attention.1.weight"] == (4, 64, 1, 1)
    rrdb = basicsr_rrdbnet_layout(64, 23, 32, 4)
    assert rrdb["body.0.rdb1.conv1.weight"] == (32, 64, 3, 3)
    assert rrdb["body.22.rdb3.conv5.weight"] == (64, 192, 3, 3)
    swin = basicsr_swinir_layout(180, [6] * 6, [6] * 6, 8, 48, 2, 4)
    assert swin["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"] == (225, 6)
    assert swin["layers.5.residual_group.blocks.5.attn_mask"] == (36, 64, 64)
    assert swin["upsample.2.weight"] == (256, 64, 3, 3)


def test_standard_networks_load_basicsr_layout(standard_nets):
    assert_loads_strictly(standard_nets["rcan"], basicsr_rcan_layout(64, 10, 20, 16, 4))
    assert_loads_strictly(standard_nets["rrdbnet"], basicsr_rrdbnet_layout(64, 23, 32, 4))
    assert_loads_strictly(standard_nets["swinir"], basicsr_swinir_layout(180, [6] * 6, [6] * 6, 8, 48, 2, 4))


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_rrdbnet_unshuffle_layouts(scale):
    net = build_arch("rrdbnet", **TINY["rrdbnet"], scale=scale)
    assert_loads_strictly(net, basicsr_rrdbnet_layout(8, 1, 4, scale))


@pytest.mark.parametrize("scale", [2, 3])
def test_tiny_layouts_other_scales(scale):
    assert_loads_strictly(build_arch("rcan", **TINY["rcan"], upscale=scale), basicsr_rcan_layout(8, 1, 1, 4, scale))
    swin = build_arch("swinir", **TINY["swinir"], upscale=scale)
    assert_loads_strictly(swin, basicsr_swinir_layout(12, [2], [2], 4, 8, 2, scale))


def test_loaded_network_runs_and_changes_output():
    torch.manual_seed(0)
    net = build_arch("swinir", **TINY["swinir"], upscale=2).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
        state = net.state_dict()
        state["conv_last.bias"] = state["conv_last.bias"] + 0.5
        net.load_state_dict(state, strict=True)
        after = net(x)
    assert torch.allclose(after - before, torch.full_like(before, 0.5), atol=1e-5)


def test_rrdbnet_unshuffle_matches_basicsr_channel_order():
    """BasicSR folds x2 inputs with view(b, c, h/2, 2, w/2, 2).permute(0, 1, 3, 5, 2, 4)."""
    x = torch.rand(2, 3, 8, 6)
    b, c, h, w = x.shape
    basicsr = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    net = build_arch("rrdbnet", **TINY["rrdbnet"], scale=2)
    assert torch.equal(net._fold(x), basicsr)


@pytest.mark.parametrize("name,mobile,group", [("carn", False, 1), ("carn_m", True, 4)])
def test_carn_official_layout(name, mobile, group):
    f = 16
    multi = build_arch(name, num_feat=f, multi_scale=True)
    layout = official_carn_layout(f, (2, 3, 4), mobile, group)
    state = filled_state_dict(layout)
    mean = torch.tensor([0.4488, 0.4371, 0.4040])
    state["sub_mean.shifter.weight"] = torch.eye(3).view(3, 3, 1, 1)
    state["sub_mean.shifter.bias"] = -mean
    state["add_mean.shifter.weight"] = torch.eye(3).view(3, 3, 1, 1)
    state["add_mean.shifter.bias"] = mean.clone()
    # The mean-shift keys are accepted (and checked) by a load hook; everything else must match.
    ours = {k: tuple(v.shape) for k, v in multi.state_dict().items()}
    assert ours == {k: v for k, v in layout.items() if "_mean." not in k}
    multi.load_state_dict(state, strict=True)
    assert torch.equal(multi.exit.weight, state["exit.weight"])
    bad = dict(state, **{"add_mean.shifter.bias": mean + 0.1})
    with pytest.raises(ValueError, match="add_mean"):
        multi.load_state_dict(bad, strict=True)
    single = build_arch(name, num_feat=f, scale=4)
    single_layout = {k: v for k, v in official_carn_layout(f, (4,), mobile, group).items() if "_mean." not in k}
    assert_loads_strictly(single, single_layout)


def test_carn_m_shares_one_unit_per_block():
    net = build_arch("carn_m", num_feat=8)
    keys = net.state_dict().keys()
    assert not any(".b2." in k or ".b3." in k for k in keys if k.startswith("b1."))
    # The one unit runs at all three positions of the cascading block.
    x = torch.rand(1, 8, 5, 5)
    unit = net.b1.b1
    calls = []
    handle = unit.register_forward_hook(lambda *_: calls.append(1))
    net.b1(x)
    handle.remove()
    assert len(calls) == 3


@pytest.mark.parametrize("input_size", [128, 256])
def test_vgg_discriminator(input_size):
    torch.manual_seed(0)
    net = build_arch("vgg_discriminator", num_feat=4, input_size=input_size)
    assert_loads_strictly(net, basicsr_vgg_discriminator_layout(4, input_size))
    assert net(torch.rand(2, 3, input_size, input_size)).shape == (2, 1)
    with pytest.raises(ValueError, match=f"input_size={input_size}"):
        net(torch.rand(2, 3, 96, 96))
    with pytest.raises(ValueError, match="input_size"):
        build_arch("vgg_discriminator", input_size=192)


def test_unet_discriminator():
    torch.manual_seed(0)
    net = build_arch("unet_discriminator", num_feat=8)
    assert_loads_strictly(net, realesrgan_unet_layout(8))
    assert net(torch.rand(2, 3, 32, 40)).shape == (2, 1, 32, 40)
    no_skip = build_arch("unet_discriminator", num_feat=8, skip_connection=False)
    assert no_skip(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 3, 30, 32))


# ------------------------------------------------------------------------------------------------
# SwinIR: window attention, shift masks, sizes
# ------------------------------------------------------------------------------------------------


def test_window_attention_matches_explicit_softmax():
    """The fused SDPA path equals the reference formula softmax(q k^T * scale + bias + mask) v."""
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, window_size=(4, 4), num_heads=2).eval()
    mask = calculate_mask((8, 12), 4, 2)  # 6 windows
    x = torch.randn(2 * 6, 16, 8)  # batch 2
    with torch.no_grad():
        ours = attn(x, mask)
        q, k, v = attn.qkv(x).reshape(12, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)
        logits = (q * attn.scale) @ k.transpose(-2, -1) + attn.relative_position_bias().unsqueeze(0)
        logits = logits.view(2, 6, 2, 16, 16) + mask.unsqueeze(1).unsqueeze(0)
        ref = (logits.view(12, 2, 16, 16).softmax(-1) @ v).transpose(1, 2).reshape(12, 16, 8)
        ref = attn.proj(ref)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_shift_mask_separates_wrapped_tokens():
    """After the cyclic shift, two tokens of a window may attend iff neither or both wrapped around
    in each direction (i.e. they were neighbours in the unshifted image)."""
    h, w, ws, shift = 8, 12, 4, 2
    mask = calculate_mask((h, w), ws, shift)
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    wrapped = torch.stack([(rows + shift) >= h, (cols + shift) >= w], -1)  # (h, w, 2)
    windows = wrapped.view(h // ws, ws, w // ws, ws, 2).permute(0, 2, 1, 3, 4).reshape(-1, ws * ws, 2)
    same = (windows.unsqueeze(1) == windows.unsqueeze(2)).all(-1)
    assert torch.equal(mask == 0, same)
    assert (mask[~same] == -100).all()


def test_swinir_odd_input_size_is_reflect_pad_then_crop():
    torch.manual_seed(0)
    net = build_arch("swinir", **TINY["swinir"], upscale=2).eval()
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        y = net(x)
        padded = F.pad(x, (0, 3, 0, 3), mode="reflect")  # to 16 x 20, multiples of window 4
        ref = net(padded)[..., :26, :34]
        zero_padded = net(F.pad(x, (0, 3, 0, 3)))[..., :26, :34]
    assert y.shape == (2, 3, 26, 34)
    assert torch.allclose(y, ref, atol=1e-6)
    assert not torch.allclose(y, zero_padded, atol=1e-4)  # the padding mode matters near the border


def test_swinir_size_other_than_img_size_recomputes_masks():
    """A model built for 8 px run on 16 px equals the same weights built for 16 px (stored masks)."""
    torch.manual_seed(0)
    small = build_arch("swinir", **dict(TINY["swinir"], img_size=8), upscale=2).eval()
    big = build_arch("swinir", **dict(TINY["swinir"], img_size=16), upscale=2).eval()
    weights = {k: v for k, v in small.state_dict().items() if not k.endswith("attn_mask")}
    missing, unexpected = big.load_state_dict(weights, strict=False)
    assert all(k.endswith("attn_mask") for k in missing) and missing and not unexpected
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(small(x), big(x), atol=1e-5)
        assert small(torch.rand(1, 3, 24, 20)).shape == (1, 3, 48, 40)


def test_swinir_too_small_input_is_a_clear_error():
    net = build_arch("swinir", **TINY["swinir"], upscale=2)
    with pytest.raises(ValueError, match="too small"):
        net(torch.rand(1, 3, 2, 8))


def test_swinir_gradients_and_checkpointing():
    torch.manual_seed(0)
    cfg = dict(TINY["swinir"], upscale=2, drop_path_rate=0.0)
    plain = build_arch("swinir", **cfg).train()
    ckpt = build_arch("swinir", **cfg, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 12, 8)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    table = "layers.0.residual_group.blocks.1.attn.relative_position_bias_table"
    g_plain = dict(plain.named_parameters())[table].grad
    g_ckpt = dict(ckpt.named_parameters())[table].grad
    assert g_plain.abs().sum() > 0
    assert torch.allclose(g_plain, g_ckpt, atol=1e-6)


def test_swinir_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    net = build_arch("swinir", **TINY["swinir"], upscale=2).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.05
