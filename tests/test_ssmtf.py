"""SSMTF (lit_sr/archs/ssmtf_arch.py, mambair_blocks.py): the authors' keys and outputs, the selective scan,
training with RefSRModule and RefSR-Adv.

The authors' side is ``tests/data/ssmtf_authors/net_g_ngf32.json``, written by
``tests/data/ssmtf_authors/make_fixture.py`` from THEIR code (edbca/SSMTF's ``RestorationNet``
built by their ``ref_restoration_arch.py`` and ``blocks.py``, with mamba-ssm 2.2.2's own
``selective_scan_ref`` in place of the CUDA kernel): every state_dict key and shape of
``RestorationNet(ngf=32, n_blocks=1, groups=2)`` (their hard-coded bodies: 3 groups of 6 VSS
blocks, d_state 16) and its output on deterministic weights and inputs. Nothing of lit-sr ran
to produce it. The scan is checked against a naive per-timestep loop written here.

The other networks are tiny and random (``random_features``: the frozen VGG19 and extractor are
random); the model trained here sees two batches: the tests check the plumbing and the maths,
not a useful SR model.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from lit_sr.archs import build_arch
from lit_sr.archs.mambair_blocks import SS2D, selective_scan
from lit_sr.archs.ssmtf_arch import SSMTF, RestorationNet, load_ssmtf_authors
from lit_sr.attacks.base import uniform_like
from lit_sr.attacks.refsr_adv import RefSRAdv
from lit_sr.io import WeightsMismatchError
from lit_sr.ops import imresize

FIXTURE = Path(__file__).resolve().parent / "data" / "ssmtf_authors" / "net_g_ngf32.json"
# the generator's deterministic weights and inputs, loaded from its file (tests/ is not a package)
_spec = importlib.util.spec_from_file_location("ssmtf_make_fixture", FIXTURE.parent / "make_fixture.py")
_make_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_make_fixture)
inputs, weights_for = _make_fixture.inputs, _make_fixture.weights_for
TINY = {"ngf": 32, "n_blocks": 1, "groups": 2, "mamba_layers": 1, "mamba_depth": 1, "d_state": 4, "mlp_ratio": 1.0,
        "random_features": True}


def _tiny(**kwargs) -> SSMTF:
    torch.manual_seed(0)
    return build_arch("ssmtf", **{**TINY, **kwargs})


# ---------------------------------------------------------------------------- the authors' network
def test_the_authors_net_g_loads_strictly_and_gives_their_output():
    record = json.loads(FIXTURE.read_text())
    cfg = record["config"]
    net = RestorationNet(cfg["ngf"], cfg["n_blocks"], cfg["groups"]).eval()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == record["shapes"]
    net.load_state_dict(weights_for(record["shapes"]), strict=True)
    lr, pre_offset, ref_feat = inputs()
    with torch.no_grad():
        out = net(lr, pre_offset, ref_feat)
    expected = torch.tensor(record["output"]).view(record["output_shape"])
    # 54 state-space blocks in float32 against their loop of the scan: rounding only (4e-6 measured, outputs up to 7)
    torch.testing.assert_close(out, expected, atol=5e-5, rtol=0)
    base = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
    assert (expected - base).abs().mean() > 0.05  # the restoration branch contributes: not a bilinear-only match


def test_the_authors_files_load_into_the_whole_model(tmp_path):
    # the tiny body (the same key names as the authors', fewer of them: their exact list is pinned above)
    model = _tiny()
    net_g = weights_for({k: list(v.shape) for k, v in model.net_g.state_dict().items()})
    torch.save({f"module.{k}": v for k, v in net_g.items()}, tmp_path / "net_g_445000.pth")  # DataParallel prefix
    torch.manual_seed(1)
    extractor = {k: torch.randn_like(v) for k, v in model.net_extractor.state_dict().items()}
    assert all(k.startswith(("feature_extraction_image1.", "feature_extraction_image2.")) for k in extractor)
    torch.save(extractor, tmp_path / "net_student_latest.pth")
    load_ssmtf_authors(model, tmp_path / "net_g_445000.pth", tmp_path / "net_student_latest.pth")
    own = model.state_dict()
    assert all(torch.equal(own[f"net_g.{k}"], v) for k, v in net_g.items())
    assert all(torch.equal(own[f"net_extractor.{k}"], v) for k, v in extractor.items())
    assert set(model.net_map.state_dict()) == {f"vgg.vgg_net.{c}.{p}" for c in (
        "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1") for p in ("weight", "bias")} | {"vgg.mean", "vgg.std"}
    # a key the network does not have is refused, naming it
    torch.save({**net_g, "dyn_agg_restore.body_small.mamaba.3.conv.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsMismatchError, match="mamaba.3"):
        load_ssmtf_authors(model, tmp_path / "extra.pth")


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="ngf must be an even number >= 30"):
        build_arch("ssmtf", **{**TINY, "ngf": 16})
    with pytest.raises(ValueError, match="vgg_weights and extractor_weights"):
        build_arch("ssmtf", **{**TINY, "random_features": False})
    with pytest.raises(ValueError, match="upscale"):
        build_arch("ssmtf", **{**TINY, "upscale": 2})


# ---------------------------------------------------------------------------- the selective scan
def _naive_scan(u, delta, A, B, C, D, z, delta_bias):
    """Per batch, channel and timestep: h <- exp(delta A) h + delta B u; y = C.h + D u; * silu(z)."""
    b, d, length = u.shape
    n = A.shape[1]
    out = torch.zeros(b, d, length, dtype=torch.float64)
    for i in range(b):
        for c in range(d):
            h = torch.zeros(n, dtype=torch.float64)
            for t in range(length):
                dt = F.softplus(delta[i, c, t].double() + delta_bias[c].double())
                if B.dim() == 2:
                    bt, ct = B[c].double(), C[c].double()
                elif B.dim() == 3:
                    bt, ct = B[i, :, t].double(), C[i, :, t].double()
                else:  # (b, g, n, L): channel c belongs to group c // (d // g)
                    g = c // (d // B.shape[1])
                    bt, ct = B[i, g, :, t].double(), C[i, g, :, t].double()
                h = torch.exp(dt * A[c].double()) * h + dt * bt * u[i, c, t].double()
                y = (ct * h).sum() + D[c].double() * u[i, c, t].double()
                out[i, c, t] = y * F.silu(z[i, c, t].double())
    return out


@pytest.mark.parametrize("form", ["grouped", "shared", "constant"])
def test_selective_scan_equals_a_naive_loop(form):
    torch.manual_seed(0)
    b, d, n, length = 2, 4, 3, 7
    u, delta, z = torch.randn(b, d, length), torch.randn(b, d, length), torch.randn(b, d, length)
    A = -torch.exp(torch.randn(d, n))
    shape = {"grouped": (b, 2, n, length), "shared": (b, n, length), "constant": (d, n)}[form]
    B, C = torch.randn(shape), torch.randn(shape)
    D, bias = torch.randn(d), torch.randn(d)
    expected = _naive_scan(u, delta, A, B, C, D, z, bias)
    for chunk in (None, 1, 2, 3, 7, 100):
        out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, chunk_size=chunk)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5, msg=f"chunk {chunk}")


def test_selective_scan_gradients_match_the_naive_loop_and_autocast_keeps_float32():
    torch.manual_seed(1)
    b, d, n, length = 1, 2, 2, 6
    args = [torch.randn(b, d, length), torch.randn(b, d, length), -torch.exp(torch.randn(d, n)),
            torch.randn(b, 1, n, length), torch.randn(b, 1, n, length), torch.randn(d), torch.randn(b, d, length),
            torch.randn(d)]
    leaves = [a.clone().requires_grad_(True) for a in args]
    ours = selective_scan(*leaves[:7], delta_bias=leaves[7], delta_softplus=True, chunk_size=4)
    g_ours = torch.autograd.grad(ours.square().sum(), leaves)
    leaves64 = [a.double().requires_grad_(True) for a in args]
    ref = _naive_scan(*leaves64[:7], leaves64[7])
    g_ref = torch.autograd.grad(ref.square().sum(), leaves64)
    for name, a, r in zip("u delta A B C D z bias".split(), g_ours, g_ref):
        torch.testing.assert_close(a.double(), r, atol=1e-4, rtol=1e-4, msg=name)
    # under bf16 autocast the scan itself stays float32: the same values as without autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True)
    torch.testing.assert_close(auto, ours.detach(), atol=1e-6, rtol=1e-6)
    # bf16 inputs come back bf16, computed in float32
    half = selective_scan(args[0].bfloat16(), *args[1:7], delta_bias=args[7], delta_softplus=True)
    assert half.dtype == torch.bfloat16


def test_ss2d_runs_under_bf16_autocast():
    torch.manual_seed(0)
    block = SS2D(d_model=8, d_state=4, expand=1.0).eval()
    x = torch.randn(2, 5, 6, 8)
    with torch.no_grad():
        full = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = block(x)
    assert full.shape == auto.shape == x.shape and torch.isfinite(auto).all()
    assert (auto.float() - full).abs().max() < 0.05 * full.abs().max() + 1e-2  # bf16 projections, f32 scan


# ---------------------------------------------------------------------------- the whole network
def _photo_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 8x8 LR crops of scikit-image's astronaut (x4 MATLAB-bicubic) and references shifted by 4 px."""
    from skimage import data

    img = imresize(torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255, 0.25).clamp(0, 1)
    hr = torch.cat([img[..., 8:40, 40:72], img[..., 60:92, 30:62]])
    ref = torch.cat([img[..., 12:44, 44:76], img[..., 64:96, 26:58]])
    return imresize(hr, 0.25).clamp(0, 1), ref


def test_output_shape_padding_and_batch_independence():
    model = _tiny().eval()
    torch.manual_seed(1)
    lr, ref = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 22, 27)  # ref mod-cropped to 20x24, the pair padded
    with torch.no_grad():
        out = model(lr, ref)
        assert out.shape == (2, 3, 20, 24) and torch.isfinite(out).all()
        torch.testing.assert_close(model(lr[1:], ref[1:]), out[1:], atol=1e-5, rtol=1e-5)
        other = model(lr, ref.flip(-1))
    assert (other - out).abs().max() > 1e-4  # the reference shapes the output
    with pytest.raises(ValueError, match="3x3"):
        model(torch.rand(1, 3, 2, 2), torch.rand(1, 3, 8, 8))


@pytest.mark.slow
def test_refsr_module_trains_ssmtf_and_refsr_adv_beats_same_eps_noise(tmp_path):
    from datamodules.refsr import EmbeddedRefPairsDataModule
    from lit_sr.modules.refsr_module import RefSRModule

    torch.manual_seed(0)
    module = RefSRModule(arch="ssmtf", arch_kwargs=TINY, losses="rec", lr=1e-3,
                         lr_groups={"*small*offset*": 1e-6}, export_weights=False)
    data = EmbeddedRefPairsDataModule(max_side=64, patch_size=32, batch_size=2, repeat=1, levels=[1], train_levels=[1],
                                      train_photos=("chelsea", "rocket", "retina"), val_photos=("astronaut",))
    body = module.net.net_g.dyn_agg_restore.body_large.mamaba[0].residual_group.blocks[0].self_attention
    a_logs = body.A_logs.detach().clone()
    frozen = {n: p.detach().clone() for n, p in module.net.named_parameters() if not p.requires_grad}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, data)
    for key in ("train/rec", "val/all/psnr_y"):
        assert key in trainer.callback_metrics and math.isfinite(float(trainer.callback_metrics[key])), key
    assert not torch.equal(a_logs, body.A_logs)  # the state-space parameters get gradients
    assert frozen and all(torch.equal(p, dict(module.net.named_parameters())[n]) for n, p in frozen.items())
    rates = {id(p): g["lr"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert rates[id(module.net.net_g.dyn_agg_restore.small_offset_conv1.weight)] == 1e-6

    # RefSR-Adv on the (briefly) trained network against uniform sign noise of the same eps
    model = module.net.eval()
    lr, ref = _photo_pairs()
    eps = 8 / 255
    with torch.no_grad():
        clean = model(lr, ref)
        noise_ref = (ref + eps * torch.sign(uniform_like(ref, -1, 1, torch.Generator().manual_seed(0)))).clamp(0, 1)
        noise_dist = (model(lr, noise_ref) - clean).square().mean()
    adv_ref = RefSRAdv(model, eps=eps, steps=3, seed=0)(lr, ref)
    assert (adv_ref - ref).abs().max() <= eps + 1e-6
    with torch.no_grad():
        adv_dist = (model(lr, adv_ref) - clean).square().mean()
    assert adv_dist > 3 * noise_dist, (float(adv_dist), float(noise_dist))


def test_ssmtf_quickstart_parses(capsys):
    import yaml

    from train import main

    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "ssmtf_quickstart.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    init = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert init["arch"] == "ssmtf" and init["arch_kwargs"]["ngf"] >= 30
