"""RefSRModule: the CLI accepts it, full-loss training steps both networks, a 2-process DDP fit and
test of the RefSR quickstart (tiny settings) with the RefSR-Adv table reduced across ranks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.refsr import EmbeddedRefPairsDataModule
from lit_sr.modules.refsr_module import RefSRModule, attack_table_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_feats": 8, "num_res_blocks": [1, 1, 1, 1]}


def test_lightning_cli_builds_the_quickstart_module_and_data():
    from train import main

    cli = main(["--config", str(ROOT / "configs" / "train" / "refsr_quickstart.yaml"), "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model, RefSRModule) and cli.model.hparams.losses == "rec"
    assert isinstance(cli.datamodule, EmbeddedRefPairsDataModule)


@pytest.mark.slow
def test_full_losses_train_generator_and_critic(tmp_path):
    torch.manual_seed(0)
    module = RefSRModule(arch_kwargs=TINY, losses="full", perceptual_pretrained=False, warmup_epochs=0, disc_size=32,
                         export_weights=False)
    data = EmbeddedRefPairsDataModule(max_side=64, patch_size=32, batch_size=2, repeat=1, levels=[1])
    before_d = [p.detach().clone() for p in module.net_d.parameters()]
    before_g = [p.detach().clone() for p in module.net.MainNet.parameters()]
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    for key in ("train/rec", "train/per", "train/tpl", "train/adv", "train/d_loss", "train/d_gp", "val/all/psnr_y"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert trainer.global_step == 2  # one step per iteration, though two optimisers stepped
    assert any(not torch.equal(a, b) for a, b in zip(before_d, module.net_d.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, module.net.MainNet.parameters()))


def test_full_losses_need_the_vgg_file(tmp_path):
    missing = tmp_path / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        RefSRModule(arch_kwargs=TINY, losses="full", vgg_weights=str(missing))
    RefSRModule(arch_kwargs=TINY, losses="rec", vgg_weights=str(missing))  # L1 only: no VGG needed


def test_attack_table_rows_group_by_set():
    values = {"test__embedded_l1__refsr_adv_sr_psnr": 20.0, "test__embedded_l1__psnr_y": 25.0,
              "test__all__psnr_y": 24.0, "test__embedded_l2__lr_pgd_lr_psnr": 31.0}
    rows = attack_table_rows(values)
    assert rows == {"embedded_l1": {"refsr_adv_sr_psnr": 20.0}, "embedded_l2": {"lr_pgd_lr_psnr": 31.0}}


TINY_DDP_ARGS = [
    "--config", str(ROOT / "configs" / "train" / "refsr_quickstart.yaml"),
    "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_fork",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
    "--model.arch_kwargs", '{"n_feats": 8, "num_res_blocks": [1, 1, 1, 1]}',
    "--model.attack_steps", "2", "--model.attack_square_queries", "3",
    "--data.max_side", "64", "--data.patch_size", "32", "--data.batch_size", "2", "--data.repeat", "1",
    "--data.levels", "[1, 4]", "--data.val_photos", '["astronaut", "coffee"]',
]


@pytest.mark.slow  # forked ranks, but over 2.5 s (measured): left out by make test-fast
def test_ddp_fit_and_attack_test_of_the_quickstart(tmp_path, forked_ddp, monkeypatch):
    """The quickstart's LightningCLI built as ``lit-sr fit`` builds it, fitted on two ranks, then tested
    from its ``last.ckpt`` as ``lit-sr test --ckpt_path`` does; the ranks of both calls are forked from
    the test process (conftest.py)."""
    from lightning.pytorch.cli import SaveConfigCallback

    from lit_sr.jobs.train.cli import train_cli

    monkeypatch.setattr("sys.argv", ["lit-sr"])  # the CLI's arguments are ``args``, not pytest's
    cli = train_cli([*TINY_DDP_ARGS, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], run=False)
    # the logger's version is fixed here, before the ranks fork, so that both calls' ranks and this process
    # agree on the run folder: left unset, this process resolves it after the fit, to the next free one
    # (version_1, checked), and its log_dir and the test call's ranks would miss the fit's run
    assert cli.trainer.logger.version == 0
    forked_ddp(cli.trainer, "fit", cli.model, datamodule=cli.datamodule)
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    # the ranks' callbacks are forked copies: this process's config saver never learnt that the fit's rank 0
    # wrote config.yaml, and would refuse it as another run's file (a rank started by the subprocess launcher
    # runs fit and test itself, and its saver remembers)
    (save_config,) = (c for c in cli.trainer.callbacks if isinstance(c, SaveConfigCallback))
    assert not save_config.already_saved and (ckpt.parent.parent / "config.yaml").is_file()
    save_config.already_saved = True
    forked_ddp(cli.trainer, "test", cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt))
    run = tmp_path / "runs" / "refsr_quickstart" / "version_0"
    assert (run / "weights.pth").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    tables = list((tmp_path / "runs" / "refsr_quickstart").glob("version_*/refsr_adv_by_set.md"))
    assert len(tables) == 1  # written once, by rank 0
    text = tables[0].read_text()
    lines = [line for line in text.splitlines() if line.startswith("| embedded_l")]
    assert [line.split("|")[1].strip() for line in lines] == ["embedded_l1", "embedded_l4"]
    # two validation photos split over two ranks: a value per level reduced over both ranks' images
    for line in lines:
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert all(c != "-" for c in cells), line
        assert float(cells[4]) >= 30.0  # reference stealth PSNR >= 20 log10(255/8)


@pytest.mark.parametrize("name", ["refsr_quickstart", "ttsr_rec_cufed", "ttsr_cufed"])
def test_refsr_recipes_parse(name, capsys):
    import yaml

    from train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "train" / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_sr.modules.refsr_module.RefSRModule"
    init = printed["model"]["init_args"]
    assert init["losses"] == ("full" if name == "ttsr_cufed" else "rec")
    if name != "refsr_quickstart":  # the published network: 64 features, 16+16+8+4 blocks, 160 px crops
        assert init["arch_kwargs"]["num_res_blocks"] == [16, 16, 8, 4] and init["arch_kwargs"]["n_feats"] == 64
        assert printed["data"]["init_args"]["patch_size"] == 160
        assert name == "ttsr_rec_cufed" or init["disc_size"] == 160
