"""BadSR's two threat models end to end at toy size (docs/threat_models.md).

``data_only`` (the paper's): the poisoned set is chosen on the attacker's substitute before the
victim trains, written into the poison cache's manifest, read back by a later run and never
changed by training. ``victim_access`` (stronger): the selection callback scores the victim's own
gradients during training and swaps the set. Tiny EDSRs (8 features, 1 block), 48 px tiles.
"""

from __future__ import annotations

import copy
import json

import lightning as L
import numpy as np
import pytest

from callbacks import PoisonSelectionCallback
from datamodules import EmbeddedPhotosDataModule, PoisonedSRDataModule
from lit_sr.modules import SRModule
from lit_sr.poison import AttackerSelection, GradientScorer, TopKSelector, naive_per_sample_grad_norms
from lit_sr.poison.threat_model import paper_selector

TINY = {"num_feat": 8, "num_block": 1}


def make_dm(tmp_path, **kw) -> PoisonedSRDataModule:
    base = EmbeddedPhotosDataModule(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=48,
                                    val_tile=32, max_val_images=2, num_workers=0)
    args = dict(trigger={"name": "blend"}, poison_rate=0.25, target="coffee", cache_dir=str(tmp_path / "cache"),
                seed=0, generation_batch_size=8, generation_device="cpu",
                substitute={"arch": "edsr", "arch_kwargs": TINY, "train_steps": 3, "train_batch_size": 4})
    args.update(kw)
    return PoisonedSRDataModule(base, **args)


def fit(tmp_path, dm, callbacks=(), epochs=2) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(tmp_path),
                        callbacks=list(callbacks))
    trainer.fit(SRModule(arch="edsr", arch_kwargs=TINY, scale=2, loss="l1", lr=1e-3), datamodule=dm)
    return trainer


def substitute_norms(dm: PoisonedSRDataModule) -> np.ndarray:
    """The backdoor-gradient norms of the pool on the attacker's substitute, one sample at a time."""
    batch = next(dm.candidate_batches(len(dm.candidate_indices)))
    net = dm.substitute
    return naive_per_sample_grad_norms(net, batch["lr"], batch["hr"], loss="l1",
                                       params=[n for n, _ in net.named_parameters()]).numpy()


def test_data_only_selects_on_the_substitute_before_training_and_fixes_the_set(tmp_path):
    selection = AttackerSelection(selector=paper_selector(population=10, generations=5))
    dm = make_dm(tmp_path, selection=selection)
    dm.setup("fit")
    assert dm.threat_model == "data_only"
    record = dm.selection_record
    # chosen on the attacker's model: the paper's sum_of_norms fitness with lam 0 is maximised by the
    # top-budget backdoor-gradient norms of the substitute (a victim-side or random choice is not)
    norms = substitute_norms(dm)
    np.testing.assert_allclose(record["norms"], norms, rtol=1e-4)
    top = sorted(dm.candidate_indices[p] for p in np.argsort(-norms, kind="stable")[:dm.budget])
    assert record["indices"] == top == dm.poisoned_indices and len(top) == dm.budget
    assert record["fitness"] == "sum_of_norms" and record["lam"] == 0.0
    assert record["fitness_selected"] > record["fitness_random"]
    # written with the data: the manifest holds it, keyed by the substitute that scored it
    manifest = json.loads(dm.cache.manifest_path.read_text())
    stored = manifest["extra"]["selections"][record["key"]]
    assert stored["indices"] == top and stored["substitute_sha256"] == dm.substitute_sha256
    assert dm.poison_config()["selection"]["fitness_selected"] == record["fitness_selected"]

    # the victim trains: nothing changes the set (data_only), and a victim-side selection is refused
    fit(tmp_path / "victim", dm)
    assert dm.poisoned_indices == top
    with pytest.raises(ValueError, match="threat_model 'data_only'.*victim_access"):
        fit(tmp_path / "refused", dm, [PoisonSelectionCallback(scorer=GradientScorer(sketch_dim=None),
                                                               selector=TopKSelector(fitness="sum_of_norms"))])

    # a later run reads exactly the stored set (edited here to prove it is read, not recomputed)
    other = sorted(set(dm.candidate_indices) - set(top))[: dm.budget]
    stored["indices"] = other
    dm.cache.manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    again = make_dm(tmp_path, selection=AttackerSelection(selector=paper_selector(population=10, generations=5)))
    again.setup("fit")
    assert again.poisoned_indices == other


class WeightsAtEpochEnd(L.Callback):
    """Placed before the selection callback: a copy of the victim at the end of each epoch, by epoch."""

    def __init__(self):
        self.nets = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.nets[trainer.current_epoch] = copy.deepcopy(pl_module.net)


def test_victim_access_swaps_the_set_by_the_victims_gradients_during_training(tmp_path):
    dm = make_dm(tmp_path, threat_model="victim_access")
    dm.setup("fit")
    snapshot = WeightsAtEpochEnd()
    sel = PoisonSelectionCallback(scorer=GradientScorer(batch_size=8, sketch_dim=None),
                                  selector=TopKSelector(fitness="sum_of_norms"), every_n_epochs=1, save_plot=False)
    fit(tmp_path, dm, [snapshot, sel], epochs=2)
    run = sel.selection_results.last
    assert run is not None and run.epoch == 0 and dm.poisoned_indices == run.chosen
    # the top-k of the *victim's* backdoor gradients after epoch 0 (its own L1 loss), installed for epoch 1
    batch = next(dm.candidate_batches(len(dm.candidate_indices)))
    norms = naive_per_sample_grad_norms(snapshot.nets[run.epoch], batch["lr"], batch["hr"], loss="l1").numpy()
    top = sorted(dm.candidate_indices[p] for p in np.argsort(-norms, kind="stable")[:dm.budget])
    assert run.chosen == top and len(top) == dm.budget
    assert dm.poison_config()["threat_model"] == "victim_access"


def test_attacker_selection_refuses_what_the_attacker_cannot_have():
    with pytest.raises(ValueError, match="victim's training loss"):
        AttackerSelection(scorer=GradientScorer(loss="module"))
    with pytest.raises(ValueError, match="sketch_dim"):
        AttackerSelection(scorer=GradientScorer(loss="l1", sketch_dim=None), selector=paper_selector().__class__())


def test_data_only_selection_needs_a_substitute(tmp_path):
    with pytest.raises(ValueError, match="AttackerSelection.*needs a substitute"):
        make_dm(tmp_path, substitute=None, selection=AttackerSelection())
    with pytest.raises(ValueError, match="threat_model must be one of"):
        make_dm(tmp_path, threat_model="insider")
