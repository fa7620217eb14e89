"""MASA-SR through RefSRModule: the recipe parses and builds the published network, a tiny MASA
trains a few steps on the embedded reference pairs, its checkpoint reloads, and the RefSR-Adv
test loop runs on it. Tiny network (8 features, one block per stage), random init."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from datamodules.refsr import EmbeddedRefPairsDataModule
from lit_sr.archs import build_arch, count_parameters
from lit_sr.archs.masa_arch import MASA
from lit_sr.io import load_weights
from lit_sr.modules.refsr_module import RefSRModule

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_feats": 8, "n_blks": [1, 1, 1], "n_blks_dec": [1, 1, 1, 1, 1, 1]}


def test_masa_recipe_parses_and_builds_the_published_network(capsys):
    from train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "train" / "masa_cufed.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    init = printed["model"]["init_args"]
    assert printed["model"]["class_path"] == "lit_sr.modules.refsr_module.RefSRModule"
    assert init["arch"] == "masa" and init["losses"] == "rec" and init["lr"] == 1e-4
    assert printed["data"]["init_args"]["patch_size"] == 160 and printed["data"]["init_args"]["batch_size"] == 9
    module = RefSRModule(arch=init["arch"], arch_kwargs=init["arch_kwargs"], scale=init["scale"], losses="rec")
    assert isinstance(module.net, MASA) and count_parameters(module.net) == 4_028_291


def test_every_masa_parameter_takes_part_in_the_loss():
    # what DDP without find_unused_parameters (the recipe's strategy: ddp) needs
    torch.manual_seed(0)
    net = build_arch("masa", **TINY)
    net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 48)).abs().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


@pytest.mark.slow
def test_refsr_module_trains_masa_on_the_embedded_pairs_and_reloads_it(tmp_path):
    torch.manual_seed(0)
    module = RefSRModule(arch="masa", arch_kwargs=TINY, lr=1e-3, export_weights=False, test_attack=True,
                         attack_steps=2)
    data = EmbeddedRefPairsDataModule(max_side=128, patch_size=64, batch_size=2, repeat=1, levels=[1],
                                      val_photos=("astronaut",))
    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, limit_test_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0, val_check_interval=3)
    trainer.fit(module, data)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    for key in ("train/rec", "val/all/psnr_y"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    # it trained: the encoder, the SAM's learned gamma and the decoder's last conv all moved
    for name in ("enc.conv_L1.weight", "decoder.pAda.conv_gamma.weight", "decoder.conv_out.weight"):
        assert not torch.equal(before[name], module.net.state_dict()[name]), name
    # the Lightning checkpoint reloads into a bare MASA and into a new module (pretrained=)
    ckpt = tmp_path / "masa.ckpt"
    trainer.save_checkpoint(ckpt)
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = module.net.eval()(lr, ref)
        bare = load_weights(build_arch("masa", **TINY), ckpt).eval()
        reloaded = RefSRModule(arch="masa", arch_kwargs=TINY, pretrained=str(ckpt)).net.eval()
        assert torch.equal(bare(lr, ref), expected) and torch.equal(reloaded(lr, ref), expected)
    # the RefSR-Adv test loop runs on it: the reference attack row next to the clean one
    trainer.test(module, data)
    names = set(trainer.callback_metrics)
    assert any(n.startswith("test/embedded_l1/refsr_adv") for n in names), sorted(names)
    stealth = [v for n, v in trainer.callback_metrics.items() if n.endswith("refsr_adv/ref_psnr")]
    assert stealth and all(v >= 20 * torch.log10(torch.tensor(255 / 8)) - 1e-4 for v in stealth)


@pytest.mark.slow
def test_full_losses_without_the_transferal_term_train_masa_and_its_critic(tmp_path):
    # MASA has no texture extractor, so its full model is L1 + perceptual + WGAN-GP (tpl_weight 0)
    torch.manual_seed(0)
    module = RefSRModule(arch="masa", arch_kwargs=TINY, losses="full", tpl_weight=0.0, perceptual_pretrained=False,
                         warmup_epochs=0, disc_size=64, export_weights=False)
    data = EmbeddedRefPairsDataModule(max_side=128, patch_size=64, batch_size=2, repeat=1, levels=[1],
                                      val_photos=("astronaut",))
    before_d = [p.detach().clone() for p in module.net_d.parameters()]
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    for key in ("train/rec", "train/per", "train/adv", "train/d_loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert "train/tpl" not in metrics
    assert any(not torch.equal(a, b) for a, b in zip(before_d, module.net_d.parameters()))
