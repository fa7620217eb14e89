"""DATSR (lit_sr/archs/datsr_arch.py): the authors' keys load strictly, the correspondence equals a
naive loop over patches, the two deformable-convolution paths agree, padding and batching change
nothing, RefSR-Adv beats same-eps noise, and RefSRModule trains it with both loss sets.

Networks are tiny and randomly initialised (``random_features``: the frozen VGG19 and the
extractor are random here; the plumbing and the maths are tested, not a trained model).
"""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import deform_conv2d

from lit_sr.archs import build_arch
from lit_sr.archs.datsr_arch import (
    DATSR,
    datsr_state_from_authors,
    deform_conv2d_sampled,
    feature_match_index,
    load_datsr_authors,
)
from lit_sr.attacks.base import uniform_like
from lit_sr.attacks.refsr_adv import RefSRAdv
from lit_sr.io import WeightsMismatchError
from lit_sr.ops import imresize

TINY = {"ngf": 8, "n_blocks": 1, "groups": 2, "depths": [2], "num_heads": [2], "window_size": 4, "img_size": 32,
        "random_features": True}
STAGES = ("down_large", "down_medium", "up_small", "up_medium", "up_large")
BODIES = ("down_body_large", "down_body_medium", "up_body_small", "up_body_medium", "up_body_large")


def _tiny(**kwargs) -> DATSR:
    torch.manual_seed(0)
    return build_arch("datsr", **{**TINY, **kwargs})


# ---------------------------------------------------------------------------- the authors' keys
def _authors_net_g_keys(n_blocks: int, depths: list[int]) -> set[str]:
    """net_g's state_dict keys as the authors' SwinUnetv3RestorationNet names them (written from their code)."""
    wb = ("weight", "bias")
    keys = {f"content_extractor.conv_first.{p}" for p in wb}
    keys |= {f"content_extractor.body.{i}.conv{j}.{p}" for i in range(n_blocks) for j in (1, 2) for p in wb}
    r = "dyn_agg_restore."
    keys |= {f"{r}unet_head.{p}" for p in wb}
    for stage in STAGES:
        keys |= {f"{r}{stage}_offset_conv{j}.{p}" for j in (1, 2) for p in wb}
        keys |= {f"{r}{stage}_dyn_agg.{p}" for p in ("weight", "bias", "conv_offset_mask.weight", "conv_offset_mask.bias")}
        direction, scale = stage.split("_")
        keys |= {f"{r}{direction}_head_{scale}.0.{p}" for p in wb}
    for body in BODIES:
        keys |= {f"{r}{body}.{m}.{p}" for m in ("patch_embed.norm", "norm") for p in wb}
        for layer, depth in enumerate(depths):
            base = f"{r}{body}.layers.{layer}"
            keys |= {f"{base}.conv.{p}" for p in wb}
            for blk in range(depth):
                b = f"{base}.residual_group.blocks.{blk}"
                keys |= {f"{b}.{m}.{p}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
                         for p in wb}
                keys |= {f"{b}.attn.relative_position_bias_table", f"{b}.attn.relative_position_index"}
                if blk % 2:  # shifted blocks register the mask; the others register None (no key)
                    keys.add(f"{b}.attn_mask")
    keys |= {f"{r}down_tail_large.{p}" for p in wb} | {f"{r}down_tail_medium.{p}" for p in wb}
    keys |= {f"{r}up_tail_{s}.0.{p}" for s in ("small", "medium") for p in wb}
    keys |= {f"{r}up_tail_large.{i}.{p}" for i in (0, 2) for p in wb}
    return keys


def _vgg_keys(prefix: str) -> set[str]:
    convs = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1")
    return {f"{prefix}.{c}.{p}" for c in convs for p in ("weight", "bias")}


def test_the_authors_three_state_dicts_load_strictly(tmp_path):
    model = _tiny()
    assert set(model.net_g.state_dict()) == _authors_net_g_keys(1, [2])
    extractor_keys = set()
    for i in (1, 2):
        extractor_keys |= _vgg_keys(f"feature_extraction_image{i}.model") | {f"feature_extraction_image{i}.{b}"
                                                                             for b in ("mean", "std")}
    assert set(model.net_extractor.state_dict()) == extractor_keys
    assert set(model.net_map.state_dict()) == _vgg_keys("vgg.vgg_net") | {"vgg.mean", "vgg.std"}
    # the Swin masks are sized from the fixed stage sizes img_size, /2, /4 (window 4: (size / 4)^2 windows)
    sd = model.net_g.state_dict()
    for body, size in zip(BODIES, (32, 16, 8, 16, 32)):
        mask = sd[f"dyn_agg_restore.{body}.layers.0.residual_group.blocks.1.attn_mask"]
        assert mask.shape == ((size // 4) ** 2, 16, 16)

    # the authors' files: plain state_dicts (DataParallel's module. prefix on net_g), random values
    torch.manual_seed(1)
    files = {}
    for name in ("net_g", "net_extractor", "net_map"):
        state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
                 for k, v in getattr(model, name).state_dict().items()}
        prefix = "module." if name == "net_g" else ""
        torch.save({prefix + k: v for k, v in state.items()}, tmp_path / f"{name}.pth")
        files[name] = state
    fresh = _tiny()
    load_datsr_authors(fresh, tmp_path / "net_g.pth", tmp_path / "net_extractor.pth", tmp_path / "net_map.pth")
    merged = datsr_state_from_authors(**files)
    own = fresh.state_dict()
    assert set(own) == set(merged)
    assert all(torch.equal(own[k], merged[k]) for k in own)
    # one key more than the network has is refused, naming the file and the key
    torch.save({**files["net_extractor"], "feature_extraction_image1.model.conv9_9.weight": torch.zeros(1)},
               tmp_path / "extra.pth")
    with pytest.raises(WeightsMismatchError, match="conv9_9"):
        load_datsr_authors(fresh, tmp_path / "net_g.pth", tmp_path / "extra.pth")


def test_missing_feature_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="vgg_weights and extractor_weights"):
        build_arch("datsr", **{**TINY, "random_features": False})
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        build_arch("datsr", **{**TINY, "vgg_weights": str(tmp_path / "vgg19-dcbb9e9d.pth")})


def test_torchvision_vgg_files_fill_the_frozen_features(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)  # torchvision's own feature stacks (configurations "E" = VGG19, "D" = VGG16)
    vgg19 = {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}
    vgg16 = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    torch.save(vgg19, tmp_path / "vgg19.pth")
    torch.save(vgg16, tmp_path / "vgg16.pth")
    model = build_arch("datsr", **{**TINY, "random_features": False, "vgg_weights": str(tmp_path / "vgg19.pth"),
                                   "extractor_weights": str(tmp_path / "vgg16.pth")})
    # torchvision's index = the position in the layer list: conv3_1 is features.10 in both
    assert torch.equal(model.net_map.vgg.vgg_net.conv3_1.weight, vgg19["features.10.weight"])
    assert torch.equal(model.net_extractor.feature_extraction_image2.model.conv2_2.weight, vgg16["features.7.weight"])
    assert not any(p.requires_grad for p in model.net_map.parameters())
    assert not any(p.requires_grad for p in model.net_extractor.parameters())


# ---------------------------------------------------------------------------- the correspondence
def test_patch_matching_equals_a_naive_loop():
    torch.manual_seed(0)
    feat_in = F.normalize(torch.randn(2, 5, 7, 6), dim=1)
    feat_ref = F.normalize(torch.randn(2, 5, 7, 6), dim=1)
    idx, val = feature_match_index(feat_in, feat_ref, chunk_elements=7)  # several chunks
    for b, i, j in itertools.product(range(2), range(5), range(4)):
        patch = feat_in[b, :, i:i + 3, j:j + 3]
        best, best_val = None, -float("inf")
        for y, x in itertools.product(range(5), range(4)):
            cand = feat_ref[b, :, y:y + 3, x:x + 3]
            score = float((patch * cand).sum() / (cand.norm() + 1e-5))
            if score > best_val:
                best, best_val = (y, x), score
        assert int(idx[b, i, j]) == best[0] * 4 + best[1]
        assert float(val[b, i, j]) == pytest.approx(best_val / (float(patch.norm()) + 1e-5), abs=1e-5)


def test_flows_offsets_and_similarity_follow_the_match():
    model = _tiny()
    torch.manual_seed(3)
    lr_up, ref = torch.rand(2, 3, 32, 24), torch.rand(2, 3, 32, 24)
    features = model.net_extractor(lr_up, ref)
    (offset, flow, sim), ref_feat = model.net_map(features, ref)
    idx, val = model.net_map.match(features)
    h, w = 8, 6  # relu3_1 of a 32x24 image
    assert flow["relu3_1"].shape == (2, h, w, 2) and offset["relu3_1"].shape == (2, 9, h, w, 2)
    for b, i, j in itertools.product(range(2), range(h), range(w)):
        if i < h - 2 and j < w - 2:  # the flow points from the patch's top-left corner to its match's
            y, x = divmod(int(idx[b, i, j]), w - 2)
            assert flow["relu3_1"][b, i, j].tolist() == [x - j, y - i]
            assert float(sim["relu3_1"][b, 0, i + 1, j + 1]) == pytest.approx(float(val[b, i, j]))
        else:  # zero on the last two rows and columns
            assert flow["relu3_1"][b, i, j].tolist() == [0, 0]
        for k, (a, c) in enumerate(itertools.product(range(3), range(3))):  # kernel point (a, c): shifted by it
            expect = flow["relu3_1"][b, i - a, j - c] if i >= a and j >= c else torch.zeros(2)
            assert torch.equal(offset["relu3_1"][b, k, i, j], expect)
    # relu2_1 / relu1_1: the relu3_1 flow repeated and scaled by 2 / 4, shifted by 2 / 4 per kernel point
    assert torch.equal(flow["relu2_1"][:, 5, 3], 2 * flow["relu3_1"][:, 2, 1])
    assert torch.equal(flow["relu1_1"][:, 13, 9], 4 * flow["relu3_1"][:, 3, 2])
    assert torch.equal(offset["relu1_1"][:, 8, 13, 9], flow["relu1_1"][:, 5, 1])
    assert sim["relu1_1"].shape == (2, 1, 32, 24) and torch.equal(sim["relu1_1"][:, :, 13, 9], sim["relu3_1"][:, :, 3, 2])
    assert {k: tuple(v.shape[1:]) for k, v in ref_feat.items()} == {
        "relu1_1": (64, 32, 24), "relu2_1": (128, 16, 12), "relu3_1": (256, 8, 6)}


def test_the_two_deformable_convolutions_agree_with_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7, requires_grad=True)
    offset = (3 * torch.randn(2, 2 * 2 * 9, 9, 7)).requires_grad_(True)
    mask = torch.rand(2, 2 * 9, 9, 7, requires_grad=True)
    weight, bias = torch.randn(6, 8, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)
    ours = deform_conv2d_sampled(x, offset, weight, bias, 1, 1, 1, mask)
    ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    g_ours = torch.autograd.grad(ours.square().sum(), (x, offset, mask, weight, bias))
    g_ref = torch.autograd.grad(ref.square().sum(), (x, offset, mask, weight, bias))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------- the whole network
def test_output_shape_padding_and_batch_independence():
    model = _tiny().eval()
    torch.manual_seed(1)
    lr, ref = torch.rand(2, 3, 6, 5), torch.rand(2, 3, 30, 19)  # neither a window multiple; ref mod-cropped to 28x16
    with torch.no_grad():
        out = model(lr, ref)
        assert out.shape == (2, 3, 24, 20) and torch.isfinite(out).all()
        # the authors' call on the padded pair, cropped, is the same output
        lr_pad, lr_up, ref_pad = model.pad_inputs(lr, ref)
        assert lr_pad.shape[-2:] == (8, 8) and ref_pad.shape[-2:] == (32, 32)
        torch.testing.assert_close(model.forward_authors(lr_pad, lr_up, ref_pad)[..., :24, :20], out)
        # each image is matched against its own reference only
        torch.testing.assert_close(model(lr[1:], ref[1:]), out[1:], atol=1e-5, rtol=1e-5)
        # the output is the bilinear base plus a residual the reference shapes
        base = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        other = model(lr, ref.flip(-1))
        assert (out - base).abs().max() > 1e-3 and (other - out).abs().max() > 1e-4


def _photo_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 8x8 LR crops of scikit-image's astronaut (x4 MATLAB-bicubic) and references shifted by 4 px."""
    from skimage import data

    img = imresize(torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255, 0.25).clamp(0, 1)
    hr = torch.cat([img[..., 8:40, 40:72], img[..., 60:92, 30:62]])
    ref = torch.cat([img[..., 12:44, 44:76], img[..., 64:96, 26:58]])
    return imresize(hr, 0.25).clamp(0, 1), ref


@pytest.mark.slow
def test_refsr_adv_on_datsr_beats_same_eps_noise_and_the_reference_gets_gradient():
    # photographs, not noise images: on uniform-noise references a third of the random-feature
    # matches flip under any +-eps noise, and the piecewise-constant matching hides from gradients
    model = _tiny().eval()
    lr, ref = _photo_pairs()
    ref_var = ref.clone().requires_grad_(True)
    model(lr, ref_var).square().sum().backward()
    assert torch.isfinite(ref_var.grad).all() and ref_var.grad.abs().sum() > 0
    eps = 8 / 255
    with torch.no_grad():
        clean = model(lr, ref)
        noise_ref = (ref + eps * torch.sign(uniform_like(ref, -1, 1, torch.Generator().manual_seed(0)))).clamp(0, 1)
        noise_dist = (model(lr, noise_ref) - clean).square().mean()
    adv_ref = RefSRAdv(model, eps=eps, steps=4, seed=0)(lr, ref)
    assert (adv_ref - ref).abs().max() <= eps + 1e-6
    with torch.no_grad():
        adv_dist = (model(lr, adv_ref) - clean).square().mean()
    assert adv_dist > 3 * noise_dist, (float(adv_dist), float(noise_dist))


@pytest.mark.slow
def test_refsr_module_trains_datsr_with_both_loss_sets(tmp_path):
    from datamodules.refsr import EmbeddedRefPairsDataModule
    from lit_sr.modules.refsr_module import RefSRModule

    for losses in ("rec", "full"):
        torch.manual_seed(0)
        module = RefSRModule(arch="datsr", arch_kwargs=TINY, losses=losses, perceptual_pretrained=False,
                             warmup_epochs=0, tpl_weight=0.0, disc_arch="image_discriminator", disc_kwargs={"ndf": 4},
                             lr_groups={"*small*offset*": 1e-6}, export_weights=False)
        data = EmbeddedRefPairsDataModule(max_side=64, patch_size=32, batch_size=2, repeat=1, levels=[1],
                                          train_levels=[1], train_photos=("chelsea", "rocket", "retina"),
                                          val_photos=("astronaut",))
        frozen = {n: p.detach().clone() for n, p in module.net.named_parameters() if not p.requires_grad}
        head = module.net.net_g.dyn_agg_restore.unet_head.weight.detach().clone()
        trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path, num_sanity_val_steps=0)
        trainer.fit(module, data)
        metrics = trainer.callback_metrics
        expected = ("train/rec", "val/all/psnr_y") + (("train/per", "train/adv", "train/d_loss") if losses == "full" else ())
        for key in expected:
            assert key in metrics and torch.isfinite(metrics[key]), (losses, key)
        assert not torch.equal(head, module.net.net_g.dyn_agg_restore.unet_head.weight)
        # the frozen VGG19, extractor and unused content extractor stay as they were
        assert frozen and all(torch.equal(p, dict(module.net.named_parameters())[n]) for n, p in frozen.items())
        opt = trainer.optimizers[0]
        rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        assert rates[id(module.net.net_g.dyn_agg_restore.up_small_offset_conv1.weight)] == 1e-6
        assert rates[id(module.net.net_g.dyn_agg_restore.up_medium_offset_conv1.weight)] == module.hparams.lr


@pytest.mark.parametrize("name", ["datsr_quickstart", "datsr_rec_cufed", "datsr_cufed"])
def test_datsr_recipes_parse(name, capsys):
    from pathlib import Path

    import yaml

    from train import main

    config = Path(__file__).resolve().parents[1] / "configs" / "train" / f"{name}.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    init = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert init["arch"] == "datsr"
    assert init["losses"] == ("full" if name == "datsr_cufed" else "rec")
    if name != "datsr_quickstart":  # the authors' CUFED network and optimiser
        kwargs = init["arch_kwargs"]
        assert (kwargs["ngf"], kwargs["n_blocks"], kwargs["groups"], kwargs["depths"], kwargs["num_heads"]) == (
            128, 8, 8, [4, 4], [4, 4])
        assert init["lr_groups"] == {"*small*offset*": 1e-6, "*medium*offset*": 1e-5}
    if name == "datsr_cufed":
        assert (init["disc_arch"], init["perceptual_criterion"], init["adv_weight"]) == ("image_discriminator", "fro", 1e-6)
