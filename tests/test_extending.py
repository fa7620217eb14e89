"""docs/extending.md, done once: a toy attack registered here, in a test file, reaches the eval callback,
robust fine-tuning and the reports without any of them being edited.

The toy attack is one FGSM step against the HR image (the smallest real attack there is). It is
registered for the duration of each test and removed afterwards, so the registry the other tests
see is the library's own. Tiny randomly initialised EDSR x2 on 32-64 px photographs throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from callbacks import AdversarialEvalCallback
from datamodules import EmbeddedPhotosDataModule, export_embedded_photos
from lit_sr.archs import build_arch
from lit_sr.attacks import ATTACKS, Attack, plain_kinds, register_attack
from lit_sr.attacks.spec import parse_attacks
from lit_sr.errors import ConfigError
from lit_sr.io import save_weights
from lit_sr.jobs.evaluate import load_config, run_report
from lit_sr.jobs.evaluate.runner import load_pairs
from lit_sr.jobs.robust.cli import evaluate_models
from lit_sr.modules import RobustFinetuneModule, SRModule

TINY = {"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1}, "scale": 2}


class ToyFGSM(Attack):
    """One signed gradient step of size eps away from the HR image (FGSM on the SR loss)."""

    name = "toy_fgsm"
    plain = True

    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None) -> torch.Tensor:
        if hr is None:
            raise ValueError("ToyFGSM needs the HR batch: call atk(lr, hr=hr)")
        x0 = self.prepare(lr, "lr", self.device_for(lr))
        ref = self.prepare(hr, "hr", x0.device)
        return self.project(x0 + self.eps * self.input_gradient(x0, ref).sign(), x0).detach()


@pytest.fixture
def toy():
    """ToyFGSM in the registry for one test (the line a user adds is the decorator)."""
    register_attack(ToyFGSM)
    yield ToyFGSM
    del ATTACKS[ToyFGSM.name]


def test_the_registry_takes_it_by_its_own_name_and_rejects_clashes(toy):
    assert ATTACKS["toy_fgsm"] is ToyFGSM and "toy_fgsm" in plain_kinds()
    assert parse_attacks({"toy_fgsm": {"loss": "mse"}})[0].kind == "toy_fgsm"

    class Clash(Attack):
        name = "pgd"

    class Unnamed(ToyFGSM):  # inherits the name: registering it would silently replace ToyFGSM
        pass

    with pytest.raises(ValueError, match="'pgd' is already registered by PGD"):
        register_attack(Clash)
    with pytest.raises(ValueError, match="Unnamed must declare its own name"):
        register_attack(Unnamed)
    # a misspelt name is rejected up front, naming the key and every registered name
    with pytest.raises(ConfigError, match=r"attacks\.toy_fgsn: unknown attack 'toy_fgsn'; expected one of .*'toy_fgsm'"):
        parse_attacks({"toy_fgsn": {}})


def test_it_reaches_the_eval_callback(toy, tmp_path):
    callback = AdversarialEvalCallback(attacks={"toy_fgsm": {}}, eps=["4/255"], num_images=2, log_images=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback], max_epochs=1,
                        limit_train_batches=1, num_sanity_val_steps=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    torch.manual_seed(0)
    module = SRModule(**TINY, lr=1e-3, scheduler="none", export_weights=False)
    data = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=2, repeat=1, max_side=64, max_val_images=2)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    lr_psnr, sr_psnr = float(metrics["attack/toy_fgsm/eps4/lr_psnr"]), float(metrics["attack/toy_fgsm/eps4/sr_psnr"])
    assert 20 * torch.log10(torch.tensor(255 / 4)).item() - 1e-3 <= lr_psnr < 60  # the budget is used, not exceeded
    assert sr_psnr < 80  # and the output moved


def test_it_reaches_robust_fine_tuning(toy, tmp_path):
    torch.manual_seed(0)
    module = RobustFinetuneModule(attack="toy_fgsm", eps=4 / 255, attack_kwargs={"loss": "l2"},
                                  scheduler="none", export_weights=False, **TINY)
    attack = module.build_attack(4 / 255)
    assert isinstance(attack, ToyFGSM) and attack.loss == "l2"
    data = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=2, repeat=1, max_side=64, max_val_images=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, max_steps=2, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2 and 0 < float(trainer.callback_metrics["train/attack_seconds"])
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    adv, _ = module.craft(lr, hr)
    assert 0.9 * 4 / 255 < (adv - lr).abs().amax() <= 4 / 255 + 1e-6
    # a keyword the toy attack does not take is named at construction
    with pytest.raises(ValueError, match=r"attack_kwargs: \['steps'\]"):
        RobustFinetuneModule(attack="toy_fgsm", attack_kwargs={"steps": 3}, **TINY)


@pytest.fixture(scope="module")
def report_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending")
    export_embedded_photos(root / "photos", "val", max_side=32)
    torch.manual_seed(0)
    save_weights(build_arch("edsr", upscale=2, num_feat=8, num_block=1), root / "edsr.pth")
    return root


def test_it_reaches_the_reports(toy, report_assets, tmp_path):
    raw = {"scale": 2, "device": "cpu", "batch_size": 2, "max_images": 2,
           "datasets": {"photos": str(report_assets / "photos")},
           "models": {"edsr": {"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1},
                               "weights": str(report_assets / "edsr.pth")}, "bicubic": {"arch": "bicubic"}},
           "eps": ["4/255"], "attacks": {"toy_fgsm": {}},
           "transfer": {"eps": "4/255", "attack": "toy_fgsm"},
           "defenses": {"attack": "toy_fgsm", "eps": ["4/255"], "methods": {"resize": {"shrink": 1}}}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_report(load_config(path), tmp_path / "report", progress=False)
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["rows"]
    assert {(r["model"], r["attack"]) for r in rows} == {("edsr", "toy_fgsm"), ("bicubic", "toy_fgsm")}
    assert result["transfer"] and {d["attack"] for d in result["defenses"]} == {"toy_fgsm"}
    assert "toy_fgsm" in Path(result["files"]["summary"]).read_text()
    # lit-sr robust's worst case takes an attacks block of registered attacks too
    models = {"edsr": build_arch("edsr", upscale=2, num_feat=8, num_block=1).eval()}
    pairs = [(p.lr, p.hr) for p in load_pairs(report_assets / "photos", 2)][:1]
    table = evaluate_models(models, pairs, 2, 4 / 255, attacks={"toy_fgsm": {}})
    assert table["edsr"]["worst/sr_psnr"] == table["edsr"]["toy_fgsm/sr_psnr"]


def test_the_guides_name_files_that_exist():
    """docs/extending.md and docs/design.md send people to files: every concrete path they name is there."""
    import re

    root = Path(__file__).resolve().parents[1]
    for page in ("extending.md", "design.md"):
        text = (root / "docs" / page).read_text()
        paths = {p for p in re.findall(r"`([\w./-]+\.(?:py|md|yaml))`", text) if "/" in p}
        paths |= set(re.findall(r"\*\*`([\w./-]+\.py)`\*\*", text))
        assert paths, page
        missing = sorted(p for p in paths if not (root / p).exists())
        assert not missing, f"docs/{page} names missing files: {missing}"
