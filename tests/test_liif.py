"""LIIF: the authors' key names and checkpoint layout load strictly, the coordinate query against
independent computations, any output scale from one model, gradients, bf16, and an attack on it.

Networks are tiny (8 features, one residual block, MLP 16-16) and randomly initialised.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lit_sr.archs import build_arch
from lit_sr.archs.liif_arch import LIIF, load_liif_checkpoint, make_coord, read_liif_checkpoint
from lit_sr.attacks.ifgsm import IFGSM

TINY = {"n_resblocks": 1, "n_feats": 8, "hidden_list": [16, 16]}


def tiny_liif(seed: int = 0, **kwargs) -> LIIF:
    torch.manual_seed(seed)
    return build_arch("liif", **{**TINY, **kwargs})


def authors_keys(n_resblocks: int, hidden: int) -> list[str]:
    """The state_dict names of the authors' LIIF(edsr-baseline no_upsampling, mlp), from their code."""
    keys = ["encoder.sub_mean.weight", "encoder.sub_mean.bias", "encoder.add_mean.weight", "encoder.add_mean.bias",
            "encoder.head.0.weight", "encoder.head.0.bias"]
    for i in range(n_resblocks):
        keys += [f"encoder.body.{i}.body.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")]
    keys += [f"encoder.body.{n_resblocks}.weight", f"encoder.body.{n_resblocks}.bias"]
    keys += [f"imnet.layers.{2 * i}.{p}" for i in range(hidden + 1) for p in ("weight", "bias")]
    return keys


def authors_spec(**liif_args) -> dict:
    """The model spec of their ``train_edsr-baseline-liif.yaml``, at the tiny size."""
    return {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}, **liif_args}}


def test_authors_key_names_and_default_size():
    net = tiny_liif()
    assert list(net.state_dict()) == authors_keys(1, 2)
    assert net.imnet.layers[0].in_features == 8 * 9 + 2 + 2  # unfolded code, rel. coord, cell
    big = build_arch("liif")
    assert sum(p.numel() for p in big.parameters()) == 1_567_323  # EDSR-baseline-LIIF
    assert list(big.state_dict())[-2:] == ["imnet.layers.8.weight", "imnet.layers.8.bias"]


@pytest.mark.parametrize("with_module_prefix", [False, True])
def test_authors_checkpoint_file_loads_strictly(tmp_path, with_module_prefix):
    gen = torch.Generator().manual_seed(1)
    shapes = {k: v.shape for k, v in tiny_liif().state_dict().items()}
    sd = {k: torch.randn(shapes[k], generator=gen) for k in authors_keys(1, 2)}
    stored = {("module." + k if with_module_prefix else k): v for k, v in sd.items()}
    spec = {**authors_spec(local_ensemble=True, feat_unfold=True, cell_decode=True), "sd": stored}
    path = tmp_path / "epoch-last.pth"
    torch.save({"model": spec, "optimizer": {"name": "adam", "args": {"lr": 1e-4}, "sd": {}}, "epoch": 3}, path)
    kwargs, state = read_liif_checkpoint(path)
    assert kwargs == {"local_ensemble": True, "feat_unfold": True, "cell_decode": True, "n_resblocks": 1,
                      "n_feats": 8, "out_dim": 3, "hidden_list": [16, 16]}
    net = load_liif_checkpoint(path, upscale=3.5)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    assert net.upscale == 3.5
    # a wrong layout or another architecture is refused, naming what is wrong
    torch.save({"params": sd}, tmp_path / "basicsr.pth")
    with pytest.raises(ValueError, match="'model'"):
        read_liif_checkpoint(tmp_path / "basicsr.pth")
    bad = authors_spec()
    bad["args"]["encoder_spec"] = {"name": "rdn", "args": {"no_upsampling": True}}
    torch.save({"model": {**bad, "sd": sd}}, tmp_path / "rdn.pth")
    with pytest.raises(ValueError, match="'rdn'"):
        read_liif_checkpoint(tmp_path / "rdn.pth")
    with pytest.raises(ValueError, match="n_feats"):
        load_liif_checkpoint(path, n_feats=16)


def test_a_query_at_an_lr_pixel_centre_is_the_mlp_of_that_pixels_feature():
    """No ensemble, no cell, no unfold: the MLP on [feature of that pixel, (0, 0)] (relative coordinate 0)."""
    net = tiny_liif(local_ensemble=False, feat_unfold=False, cell_decode=False).eval()
    lr = torch.rand(2, 3, 5, 7)
    h, w = 5, 7
    pixels = [(0, 0), (2, 3), (4, 6), (1, 5)]
    # pixel (i, j)'s centre, written out: y = -1 + (2 i + 1) / h, x = -1 + (2 j + 1) / w
    coord = torch.tensor([[-1 + (2 * i + 1) / h, -1 + (2 * j + 1) / w] for i, j in pixels]).expand(2, -1, -1)
    with torch.no_grad():
        out = net.query(lr, coord)
        feat = net.encoder(lr * 2 - 1)
        for b in range(2):
            for q, (i, j) in enumerate(pixels):
                x = torch.cat([feat[b, :, i, j], torch.zeros(2)])
                expected = net.imnet.layers(x) * 0.5 + 0.5
                assert torch.allclose(out[b, q], expected, atol=1e-6), (b, i, j)


def authors_query_rgb(net: LIIF, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """The authors' ``LIIF.query_rgb`` (yinboc/liif, models/liif.py) re-written from their code: grid_sample
    'nearest' on the features and on a coordinate map, the four shifted codes, the swapped areas."""
    if net.feat_unfold:
        feat = F.unfold(feat, 3, padding=1).view(feat.shape[0], feat.shape[1] * 9, *feat.shape[-2:])
    h, w = feat.shape[-2:]
    feat_coord = make_coord((h, w), flatten=False).permute(2, 0, 1).unsqueeze(0).expand(feat.shape[0], 2, h, w)
    preds, areas = [], []
    for vx in (-1, 1):
        for vy in (-1, 1):
            c = coord.clone()
            c[:, :, 0] += vx / h + 1e-6
            c[:, :, 1] += vy / w + 1e-6
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c.flip(-1).unsqueeze(1)
            q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
            rel = coord - q_coord
            rel[:, :, 0] *= h
            rel[:, :, 1] *= w
            rel_cell = cell.clone()
            rel_cell[:, :, 0] *= h
            rel_cell[:, :, 1] *= w
            preds.append(net.imnet.layers(torch.cat([q_feat, rel, rel_cell], dim=-1)))
            areas.append(torch.abs(rel[:, :, 0] * rel[:, :, 1]) + 1e-9)
    tot = torch.stack(areas).sum(dim=0)
    areas[0], areas[3], areas[1], areas[2] = areas[3], areas[0], areas[2], areas[1]
    return sum(p * (a / tot).unsqueeze(-1) for p, a in zip(preds, areas))


def test_whole_image_output_equals_the_authors_query_with_ensemble_unfold_and_cell():
    net = tiny_liif(query_chunk=37).eval()  # chunked: 37 does not divide the query count
    lr = torch.rand(2, 3, 6, 5)
    with torch.no_grad():
        sr = net(lr, scale=3.5)
        hh, ww = 21, 18  # round(6 * 3.5), round(5 * 3.5)
        coord = make_coord((hh, ww)).expand(2, -1, -1)
        cell = torch.tensor([2 / hh, 2 / ww]).expand(2, hh * ww, 2)
        ref = authors_query_rgb(net, net.encoder((lr - 0.5) / 0.5), coord, cell) * 0.5 + 0.5
    assert sr.shape == (2, 3, hh, ww)
    assert torch.allclose(sr, ref.transpose(1, 2).reshape(2, 3, hh, ww), atol=1e-5)


def test_one_model_gives_every_scale_and_the_fixed_scale_wrapper_shares_it():
    net = tiny_liif().eval()
    lr = torch.rand(2, 3, 8, 10)
    with torch.no_grad():
        sizes = {s: tuple(net(lr, scale=s).shape) for s in (2, 3.5, 4)}
        assert sizes == {2: (2, 3, 16, 20), 3.5: (2, 3, 28, 35), 4: (2, 3, 32, 40)}
        assert net(lr).shape == (2, 3, 32, 40)  # upscale 4 by default
        assert net(lr, size=(13, 17)).shape == (2, 3, 13, 17)
        fixed = net.at_scale(3.5)
        assert torch.equal(fixed(lr), net(lr, scale=3.5))
    assert {id(p) for p in fixed.parameters()} == {id(p) for p in net.parameters()}


def test_gradient_reaches_the_input_and_bf16_autocast_runs():
    net = tiny_liif()
    lr = torch.rand(1, 3, 6, 6, requires_grad=True)
    net(lr, scale=2.5).square().mean().backward()
    assert lr.grad.abs().sum() > 0 and all(p.grad is not None for p in net.imnet.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.rand(1, 3, 6, 6), scale=3)
    assert out.shape == (1, 3, 18, 18) and torch.isfinite(out).all()


def test_ifgsm_on_liif_at_a_fixed_scale_beats_noise_of_the_same_budget():
    torch.manual_seed(0)
    net = tiny_liif().eval()
    model = net.at_scale(3.5)
    lr = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        clean = model(lr)
    attack = IFGSM(model, eps=4 / 255, steps=10, random_start=True, seed=0)
    adv = attack(lr)
    assert (adv - lr).abs().max() <= 4 / 255 + 1e-6
    noise = (lr + (torch.rand(lr.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 4 / 255).clamp(0, 1)
    with torch.no_grad():
        attacked = (model(adv) - clean).square().mean()
        noisy = (model(noise) - clean).square().mean()
    assert attacked > 3 * noisy, (attacked, noisy)


def test_arguments_are_validated():
    for bad in ({"upscale": 0}, {"upscale": float("nan")}, {"n_feats": 0}, {"hidden_list": [16, 0]},
                {"query_chunk": 0}):
        with pytest.raises(ValueError):
            build_arch("liif", **{**TINY, **bad})
    net = tiny_liif()
    with pytest.raises(ValueError, match="scale or size"):
        net(torch.rand(1, 3, 4, 4), scale=2, size=(8, 8))
    with pytest.raises(ValueError, match="cell"):
        net.query(torch.rand(1, 3, 4, 4), torch.zeros(1, 3, 2))
