"""``lit-sr refsr-claims``: RefSR-Adv's claims (architectures, losses, transfer) on models it trains.

The end-to-end run trains a tiny TTSR and DATSR (8 features, one batch each, random frozen features
for DATSR; TTSR is the network continued twice, the cheaper one) and attacks one small test image: the files, the rows and that every model's
own RefSR-Adv reference beats same-eps noise are tested, not the claims' outcome (that is the
measured run in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lit_sr.__main__ import main as lit_sr_main
from lit_sr.attacks.refsr_adv import RefSRAdv, RefSREnsemble
from lit_sr.jobs.refsr_claims.write import verdict

EPS = 8 / 255


class ToyRefSR(nn.Module):
    """``conv(up(lr)) + conv(ref)``: a two-input x2 model whose output depends on the reference."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.a(nn.functional.interpolate(lr, scale_factor=2)) + torch.tanh(3 * self.b(ref))


def test_the_ensemble_loss_is_the_sum_of_the_models_and_its_attack_hurts_both():
    models = [ToyRefSR(1), ToyRefSR(2)]
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ensemble = RefSREnsemble(models, weights=[1.0, 2.0])
    out = ensemble(lr, ref)
    assert torch.allclose(out, torch.cat([models[0](lr, ref), 2 * models[1](lr, ref)], dim=1))
    adv = RefSRAdv(RefSREnsemble(models), eps=EPS, steps=10, seed=0)(lr, ref)
    assert (adv - ref).abs().max() <= EPS + 1e-6
    noise = (ref + (torch.rand(ref.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * EPS).clamp(0, 1)
    with torch.no_grad():
        for model in models:
            moved = (model(lr, adv) - model(lr, ref)).square().mean()
            assert moved > 2 * (model(lr, noise) - model(lr, ref)).square().mean()
    with pytest.raises(ValueError, match="weights: one per model"):
        RefSREnsemble(models, weights=[1.0])


def test_verdicts_follow_the_paired_interval():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(40, generator=g, dtype=torch.float64) * 0.1
    assert verdict(1.0 + noise, 500, 0)["verdict"] == "holds"
    assert verdict(-1.0 + noise, 500, 0)["verdict"] == "the opposite holds"
    assert verdict(noise - noise.mean(), 500, 0)["verdict"] == "not resolved at this scale"
    assert verdict(0.01 + noise / 100, 500, 0)["verdict"] == "negligible"
    assert verdict(torch.tensor([5.0, 6.0], dtype=torch.float64), 500, 0)["verdict"] == "too few images"
    result = verdict(1.0 + noise, 500, 0)
    assert result["low"] < result["mean"] < result["high"] and result["n"] == 40


TINY = """
models:
  ttsr: {arch: ttsr, arch_kwargs: {n_feats: 8, num_res_blocks: [1, 1, 1, 1]}}
  datsr:
    arch: datsr
    arch_kwargs: {ngf: 8, n_blocks: 1, groups: 2, embed_dim: 8, depths: [1], num_heads: [1], window_size: 4,
                  img_size: 32, random_features: true}
data:
  class_path: datamodules.refsr.EmbeddedRefPairsDataModule
  init_args: {scale: 4, max_side: 64, patch_size: 32, batch_size: 2, repeat: 1}
test_data:
  class_path: datamodules.refsr.EmbeddedRefPairsDataModule
  init_args: {scale: 4, max_side: 40, levels: [1], val_photos: [astronaut]}
loss_model: ttsr
steps: 1
finetune_steps: 1
attack_steps: 3
bootstrap: 50
device: cpu
"""


@pytest.mark.slow
def test_the_claims_command_writes_one_table_and_plot_per_claim(tmp_path, capsys):
    config = tmp_path / "claims.yaml"
    config.write_text(TINY)
    assert lit_sr_main(["refsr-claims", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = tmp_path / "out"
    summary = (out / "claims.md").read_text()
    for heading in ("## (a)", "## (b)", "## (c)"):
        assert heading in summary
    assert "**without** the perceptual term" in summary
    for name in ("claim_a_architectures", "claim_b_losses", "claim_c_transfer"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    for label in ("ttsr", "datsr", "ttsr-rec", "ttsr-full"):
        assert (out / "models" / f"{label}.pth").is_file()
    payload = json.loads((out / "claims.json").read_text())
    rows = payload["rows"]
    assert len(rows["a"]) == 4 and len(rows["b"]) == 4 and len(rows["c"]) == 4 * 2
    floor = 20 * math.log10(255 / 8)
    by = {(r["source"], r["model"]): r for r in rows["c"]}
    for model in ("ttsr", "datsr"):
        assert by[model, model]["ref_psnr"] >= floor - 1e-6 and by["ensemble", model]["ref_psnr"] >= floor - 1e-6
        # the white-box attack moves each model's output further than noise of the same eps
        assert by[model, model]["sr_psnr"] < by["noise", model]["sr_psnr"], model
    assert all(v["verdict"] == "too few images" for claim in payload["verdicts"].values() for v in claim)
    assert "written to" in capsys.readouterr().out
    # measured again from the saved networks: the same clean outputs, no training
    again = tmp_path / "again"
    assert lit_sr_main(["refsr-claims", "--config", str(config), "--out", str(again), "--no-progress",
                        "--weights_dir", str(out / "models"), "--attack_steps", "1"]) == 0
    rows_again = json.loads((again / "claims.json").read_text())["rows"]
    for claim in ("a", "b"):
        assert [r["clean_hr_psnr"] for r in rows_again[claim]] == [r["clean_hr_psnr"] for r in rows[claim]]
    assert not (again / "models").exists()


def test_bad_claims_settings_are_named(tmp_path, capsys):
    config = tmp_path / "claims.yaml"
    config.write_text(TINY.replace("loss_model: ttsr", "loss_model: edsr"))
    assert lit_sr_main(["refsr-claims", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "loss_model: 'edsr' is not a label of models" in capsys.readouterr().err
    config.write_text(TINY + "full_losses: {losses: rec}\n")
    assert lit_sr_main(["refsr-claims", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "full_losses.losses" in capsys.readouterr().err


def test_the_shipped_cpu_config_builds_the_three_claims():
    from pathlib import Path

    from lit_sr.jobs.parser import load_job_config
    from lit_sr.jobs.refsr_claims.cli import build_parser

    path = Path(__file__).resolve().parents[1] / "configs" / "refsr_claims" / "cpu.yaml"
    cfg = load_job_config(build_parser(), path)
    assert list(cfg.models) == ["ttsr", "masa", "datsr"] and cfg.full_reference == ["datsr"]
    assert cfg.loss_model == "datsr" and cfg.ensemble == ["ttsr", "masa", "datsr"]
    assert cfg.eps == pytest.approx(8 / 255) and cfg.test_data is not cfg.data
    assert not cfg.perceptual  # no VGG19 file in the CPU config: the report says the term is left out
