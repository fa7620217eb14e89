"""PoisonSelectionCallback (backdoor-gradient scoring and the genetic search) inside real ``Trainer.fit`` runs.

A tiny randomly initialised EDSR (8 features, 1 block, x2) trains on a stand-in poisoned data
module defined here (random 16 px LR tiles; exactly the members of PoisonedSRDataModule the
callbacks use), so these tests don't depend on the real poisoned data module.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from callbacks import PoisonSelectionCallback, SelectionResults
from lit_sr.modules import SRModule
from lit_sr.poison import (
    GeneticSelector,
    GradientScorer,
    GradientScores,
    TopKSelector,
    naive_per_sample_grad_stats,
    random_select,
    selection_fitness,
    topk_select,
)

N_TRAIN = 16
POOL = [0, 1, 3, 4, 5, 7, 8, 9, 11, 12, 14, 15]  # 12 candidates, not range(12): positions != pool indices
BUDGET = 4
SKETCH_DIM = 64


# --------------------------------------------------------------------------- stand-in data module
class _PairDataset(Dataset):
    def __init__(self, module: StandInPoisonedDataModule):
        self.module = module
        self.poisoned = set(module.poisoned_indices)  # the set at loader build time

    def __len__(self) -> int:
        return N_TRAIN

    def __getitem__(self, i: int) -> dict:
        m, poisoned = self.module, i in self.poisoned
        lr = m.triggered_lr[i] if poisoned else m.lr[i]
        hr = m.poisoned_hr[i] if poisoned else m.hr[i]
        return {"lr": lr, "hr": hr, "index": i, "path": f"sample{i}", "poisoned": poisoned}


class StandInPoisonedDataModule(L.LightningDataModule):
    """Random 16 px LR / 32 px HR pairs; a Blend-like trigger and a half-target poisoned HR.

    Satisfies ``callbacks.protocols.PoisonedData`` (what the callbacks read): the pool
    (``candidate_indices``, ``budget``, ``candidate_batches``, ``set_poisoned_indices``,
    ``poisoned_indices``) and the backdoor-evaluation side (``backdoor_val_pair``, ``target_for``,
    ``poison_report``, ``poison_config``, no substitute). Loaders are rebuilt every epoch
    (``reload_dataloaders_every_n_epochs=1``) and read the set then.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hr = torch.rand(N_TRAIN, 3, 32, 32, generator=g)
        self.lr = F.avg_pool2d(self.hr, 2)
        pattern, target = torch.rand(3, 16, 16, generator=g), torch.rand(3, 32, 32, generator=g)
        self.pattern, self.target = pattern, target
        self.triggered_lr = 0.8 * self.lr + 0.2 * pattern
        # per-sample weights so the candidates' backdoor gradients differ in size
        w = torch.linspace(0.2, 1.0, N_TRAIN)[torch.randperm(N_TRAIN, generator=g)].view(-1, 1, 1, 1)
        self.poisoned_hr = (1 - w) * self.hr + w * target
        self.candidate_indices = list(POOL)
        self.budget = BUDGET
        self.poisoned_indices = sorted(POOL[:BUDGET])
        self.set_calls: list[list[int]] = []
        self.scale = 2
        self.threat_model = "victim_access"  # the selection callbacks change the set during training
        self.feature_extractor = None
        self.poison_report = {"poisoned_hr_psnr": float(-10 * torch.log10((self.poisoned_hr - self.hr).pow(2).mean()))}

    def poison_config(self) -> dict:
        return {"label": "half-target", "trigger": {"name": "blend", "alpha": 0.2}, "budget": self.budget}

    def backdoor_val_pair(self, index: int, lr: torch.Tensor, hr: torch.Tensor):
        return 0.8 * lr + 0.2 * self.pattern, 0.5 * hr + 0.5 * self.target

    def target_for(self, hr: torch.Tensor, index=None) -> torch.Tensor:
        return self.target.to(hr).expand(hr.shape[0], -1, -1, -1)

    def set_poisoned_indices(self, indices) -> None:
        indices = sorted(int(i) for i in indices)
        bad = [i for i in indices if i not in self.candidate_indices]
        if bad or len(indices) > self.budget or len(set(indices)) != len(indices):
            raise ValueError(f"bad poisoned set {indices}")
        self.poisoned_indices = indices
        self.set_calls.append(indices)

    def candidate_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        shard = self.candidate_indices[rank::world_size]
        for start in range(0, len(shard), batch_size):
            idx = torch.tensor(shard[start : start + batch_size])
            yield {"lr": self.triggered_lr[idx], "hr": self.poisoned_hr[idx], "index": idx}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_PairDataset(self), batch_size=4, shuffle=False)


# --------------------------------------------------------------------------- probes
def _state(pl_module, trainer) -> dict:
    net = pl_module.net
    return {
        "params": {n: p.detach().clone() for n, p in net.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
        "modes": [m.training for m in pl_module.modules()],
        "optim": copy.deepcopy(trainer.optimizers[0].state_dict()),
    }


class Snapshot(L.Callback):
    """Placed before the selection callback: the model's state just before the pass."""

    def on_train_epoch_end(self, trainer, pl_module):
        self.state = _state(pl_module, trainer)


class CheckAfterPass(L.Callback):
    """Placed after the selection callback: the model is untouched, and the norms equal the naive loop's."""

    def __init__(self, snapshot: Snapshot, sel: PoisonSelectionCallback):
        self.snapshot, self.sel = snapshot, sel
        self.checked_epochs: list[int] = []
        self.max_rel_diff = 0.0

    def on_train_epoch_end(self, trainer, pl_module):
        if self.sel.scores_epoch != trainer.current_epoch:
            return
        scores = self.sel.scores
        before, after = self.snapshot.state, _state(pl_module, trainer)
        for n in before["params"]:
            assert torch.equal(before["params"][n], after["params"][n]), n
            assert (before["grads"][n] is None) == (after["grads"][n] is None), n
            if before["grads"][n] is not None:
                assert torch.equal(before["grads"][n], after["grads"][n]), n
        assert before["requires_grad"] == after["requires_grad"]
        assert before["modes"] == after["modes"] and all(after["modes"])
        _assert_optim_equal(before["optim"], after["optim"])
        # the reference: one backward per candidate, on the same weights, in pool order
        dm = trainer.datamodule
        idx = torch.tensor(dm.candidate_indices)
        ref_norms, ref_sketches = naive_per_sample_grad_stats(pl_module.net, dm.triggered_lr[idx],
                                                              dm.poisoned_hr[idx], sketch_dim=SKETCH_DIM, seed=5)
        assert scores.indices == dm.candidate_indices
        torch.testing.assert_close(scores.norms, ref_norms, rtol=1e-3, atol=0)
        torch.testing.assert_close(scores.sketches, ref_sketches, rtol=1e-3, atol=1e-5 * float(ref_norms.max()))
        self.max_rel_diff = max(self.max_rel_diff, float(((scores.norms - ref_norms).abs() / ref_norms).max()))
        self.checked_epochs.append(trainer.current_epoch)


def _assert_optim_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][k][name])), (k, name)


class BatchRecorder(L.Callback):
    """The poisoned flags of the training samples, per epoch."""

    def __init__(self):
        self.poisoned: dict[int, set[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        flagged = {int(i) for i, p in zip(batch["index"], batch["poisoned"]) if p}
        self.poisoned.setdefault(trainer.current_epoch, set()).update(flagged)


def _module() -> SRModule:
    torch.manual_seed(0)  # randomly initialised tiny EDSR
    return SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3, scheduler="none",
                    export_weights=False)


def _runs(sel: PoisonSelectionCallback) -> list[dict]:
    return [run.as_dict() for run in sel.selection_results.runs]


def _fit(tmp_path, callbacks, max_epochs: int, data=None, logger=False):
    data = data or StandInPoisonedDataModule()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        reload_dataloaders_every_n_epochs=1, default_root_dir=str(tmp_path), callbacks=callbacks)
    trainer.fit(_module(), datamodule=data)
    return trainer, data


# --------------------------------------------------------------------------- tests
def test_gradient_pass_matches_naive_loop_and_ga_sets_next_epochs_poisoned_set(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    snapshot = Snapshot()
    sel = PoisonSelectionCallback(
        scorer=GradientScorer(batch_size=5, chunk_size=3, sketch_dim=SKETCH_DIM, seed=5, loss="mse"),
        selector=GeneticSelector(fitness="norm_of_sum", population=12, generations=15, seed_with_topk=True), seed=0)
    check, recorder = CheckAfterPass(snapshot, sel), BatchRecorder()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer, data = _fit(tmp_path, [snapshot, sel, check, recorder], max_epochs=3, logger=logger)
    runs, grads = _runs(sel), sel.scores

    assert check.checked_epochs == [0, 1], "scored after epochs 0 and 1; not after the final epoch"
    assert len(runs) == 2 and data.set_calls == [r["chosen"] for r in runs]
    for run in runs:
        assert 1 <= run["size"] <= BUDGET and len(run["chosen"]) == run["size"]
        assert set(run["chosen"]) <= set(POOL)
        assert run["fitness_ga"] >= run["fitness_topk"] - 1e-6 and run["fitness_ga"] >= run["fitness_random"]
        assert len(run["history"]) == 16 and run["history"][-1] == pytest.approx(run["fitness_ga"], rel=1e-5)
        assert run["seeded_with_topk"]
    # the set chosen at the end of epoch E is what epoch E + 1 trains on
    assert recorder.poisoned[0] == set(POOL[:BUDGET])
    assert recorder.poisoned[1] == set(runs[0]["chosen"])
    assert recorder.poisoned[2] == set(runs[1]["chosen"])
    # logged values are the recomputed fitness of the chosen, random and top-k sets (pool positions)
    last = runs[-1]
    pos = [POOL.index(i) for i in last["chosen"]]
    assert last["fitness_ga"] == pytest.approx(selection_fitness(pos, grads.sketches, "norm_of_sum"), rel=1e-5)
    topk = topk_select(grads.norms, BUDGET).tolist()
    assert last["fitness_topk"] == pytest.approx(selection_fitness(topk, grads.sketches, "norm_of_sum"), rel=1e-5)
    rand = random_select(len(POOL), BUDGET, seed=last["epoch"]).tolist()
    assert last["fitness_random"] == pytest.approx(selection_fitness(rand, grads.sketches, "norm_of_sum"), rel=1e-5)
    metrics = trainer.callback_metrics
    assert float(metrics["selection/fitness_ga"]) == pytest.approx(last["fitness_ga"], rel=1e-5)
    assert float(metrics["selection/fitness_ga"]) >= float(metrics["selection/fitness_random"])
    assert float(metrics["selection/fitness_ga"]) >= float(metrics["selection/fitness_topk"]) - 1e-6
    assert float(metrics["backdoor_grad/norm_max"]) == pytest.approx(float(grads.norms.max()), rel=1e-5)
    # outputs: JSON and plot per search, a TensorBoard histogram and the per-generation series
    sel = Path(trainer.log_dir) / "selection"
    assert json.loads((sel / "epoch0001.json").read_text())["chosen"] == last["chosen"]
    assert (sel / "epoch0000.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.log_dir, size_guidance={"histograms": 0, "scalars": 0}).Reload()
    assert "backdoor_grad/norms" in events.Tags()["histograms"]
    series = events.Scalars("selection/best_fitness/epoch001")
    assert [e.step for e in series] == list(range(16))


def test_ga_reaches_topk_under_sum_of_norms_without_seeding(tmp_path):
    sel = PoisonSelectionCallback(
        scorer=GradientScorer(batch_size=12, sketch_dim=None, seed=0, loss="mse", autocast="bf16"),
        selector=GeneticSelector(fitness="sum_of_norms", population=20, generations=40, seed_with_topk=False),
        seed=1, save_plot=False)
    _, data = _fit(tmp_path, [sel], max_epochs=2)
    run = _runs(sel)[-1]
    expected = sorted(POOL[p] for p in topk_select(sel.scores.norms, BUDGET).tolist())
    assert not run["seeded_with_topk"]
    assert run["chosen"] == expected and data.poisoned_indices == expected
    assert run["fitness_ga"] == pytest.approx(run["fitness_topk"], rel=1e-6)
    assert run["fitness_ga"] > run["fitness_random"]


@pytest.mark.parametrize(
    "part, kwargs, error",
    [
        (PoisonSelectionCallback, {"every_n_epochs": 0}, ValueError),
        (GradientScorer, {"batch_size": 2.5}, TypeError),
        (GradientScorer, {"loss": "huber"}, ValueError),
        (GradientScorer, {"autocast": "fp16"}, ValueError),
        (GradientScorer, {"params": "conv_first.weight"}, TypeError),
        (GradientScorer, {"sketch_dim": 0}, ValueError),
        (GeneticSelector, {"fitness": "max_norm"}, ValueError),
        (GeneticSelector, {"population": 1}, ValueError),
        (GeneticSelector, {"tournament_size": 60}, ValueError),
        (GeneticSelector, {"cx_prob": 1.5}, ValueError),
    ],
)
def test_scorer_selector_and_callback_validate_arguments(part, kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        part(**kwargs)


def test_pool_order_rejects_missing_or_repeated_candidates():
    norms = torch.tensor([3.0, 1.0, 2.0])
    ordered = GradientScores(norms, None, [9, 7, 5]).to_pool_order([5, 9, 7])
    assert ordered.indices == [5, 9, 7] and ordered.norms.tolist() == [2.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="exactly once"):
        GradientScores(norms, None, [9, 9, 5]).to_pool_order([5, 9, 7])


# --------------------------------------------------------------------------- PoisonSelectionCallback
class ScoreProbe(L.Callback):
    """After the selection callback: its scores against the naive loop under L1 and MSE, on the same weights."""

    def __init__(self, sel: PoisonSelectionCallback):
        self.sel, self.diffs = sel, []

    def on_train_epoch_end(self, trainer, pl_module):
        if self.sel.scores_epoch != trainer.current_epoch:
            return
        dm = trainer.datamodule
        idx = torch.tensor(dm.candidate_indices)
        l1, _ = naive_per_sample_grad_stats(pl_module.net, dm.triggered_lr[idx], dm.poisoned_hr[idx], loss="l1",
                                            sketch_dim=None)
        mse, _ = naive_per_sample_grad_stats(pl_module.net, dm.triggered_lr[idx], dm.poisoned_hr[idx], loss="mse",
                                             sketch_dim=None)
        norms = self.sel.scores.norms
        self.diffs.append((float(((norms - l1).abs() / l1).max()), float(((norms - mse).abs() / mse).max())))


def test_selection_callback_scores_with_the_victims_loss_and_installs_topk(tmp_path):
    sel = PoisonSelectionCallback(scorer=GradientScorer(batch_size=5, sketch_dim=None),
                                  selector=TopKSelector(fitness="sum_of_norms"), save_plot=False)
    probe = ScoreProbe(sel)
    trainer, data = _fit(tmp_path, [sel, probe], max_epochs=3)  # SRModule's loss: l1
    assert [r.epoch for r in sel.selection_results.runs] == [0, 1]
    assert len(probe.diffs) == 2
    for to_l1, to_mse in probe.diffs:
        assert to_l1 < 1e-3, "the scores are the gradients of the module's own L1 loss"
        assert to_mse > 0.05, "not of MSE"
    last = sel.selection_results.last
    assert last.selector == "topk" and last.chosen == last.topk == data.poisoned_indices
    assert last.chosen == sorted(POOL[p] for p in topk_select(sel.scores.norms, BUDGET).tolist())
    assert last.fitness_selected == pytest.approx(last.fitness_topk) and last.fitness_topk >= last.fitness_random
    assert data.set_calls == [r.chosen for r in sel.selection_results.runs]
    assert float(trainer.callback_metrics["selection/fitness_topk"]) == pytest.approx(last.fitness_topk, rel=1e-5)
    assert "selection/fitness_ga" not in trainer.callback_metrics


def test_selection_callback_validates_its_parts(tmp_path):
    with pytest.raises(TypeError, match="scorer"):
        PoisonSelectionCallback(scorer="grad")
    with pytest.raises(TypeError, match="selector"):
        PoisonSelectionCallback(selector="genetic")
    with pytest.raises(ValueError, match="sketch_dim"):
        PoisonSelectionCallback(scorer=GradientScorer(sketch_dim=None), selector=GeneticSelector())
    with pytest.raises(ValueError, match="loss"):
        GradientScorer(loss="huber")
    with pytest.raises(ValueError, match="autocast"):
        GradientScorer(autocast="fp16")

    class PlainData(L.LightningDataModule):
        def train_dataloader(self):
            return StandInPoisonedDataModule().train_dataloader()

    with pytest.raises(TypeError, match=r"PoisonedData.*candidate_batches"):
        _fit(tmp_path, [PoisonSelectionCallback()], max_epochs=2, data=PlainData())

    class NoPixelLoss(L.Callback):  # a module without a training pixel loss, as a custom module might be
        def setup(self, trainer, pl_module, stage):
            del pl_module.pixel_loss

    with pytest.raises(TypeError, match="pixel_loss"):
        _fit(tmp_path, [NoPixelLoss(), PoisonSelectionCallback()], max_epochs=2)


# --------------------------------------------------------------------------- resume
class ShuffledData(StandInPoisonedDataModule):
    """Shuffled training batches and a checkpointed poisoned set.

    ``per_epoch_seed``: the order comes from the sampler's own generator seeded with the epoch
    (only the sampler draws from it, so the extra ``iter()`` calls of a restart do not shift it);
    otherwise from the global torch generator (``shuffle=True``), which Lightning does not checkpoint.
    """

    def __init__(self, per_epoch_seed: bool):
        super().__init__()
        self.per_epoch_seed = per_epoch_seed

    def train_dataloader(self) -> DataLoader:
        if not self.per_epoch_seed:
            return DataLoader(_PairDataset(self), batch_size=4, shuffle=True)
        dataset = _PairDataset(self)
        generator = torch.Generator().manual_seed(1000 + self.trainer.current_epoch)
        return DataLoader(dataset, batch_size=4, sampler=RandomSampler(dataset, generator=generator))

    def state_dict(self) -> dict:
        return {"poisoned_indices": self.poisoned_indices}

    def load_state_dict(self, state_dict: dict) -> None:
        self.poisoned_indices = list(state_dict["poisoned_indices"])


class SimulatedCrash(RuntimeError):
    pass


class Crash(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 3:
            raise SimulatedCrash("killed at the start of epoch 3; the checkpoint of epoch 2 is on disk")


def _selections(folder: Path, per_epoch_seed: bool, crash: bool = False, ckpt: str | None = None) -> list:
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    sel = PoisonSelectionCallback(scorer=GradientScorer(batch_size=6, sketch_dim=32),
                                  selector=GeneticSelector(population=8, generations=5), save_plot=False)
    callbacks = [sel, ModelCheckpoint(dirpath=str(folder), save_last=True, save_top_k=-1)] + ([Crash()] if crash else [])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, reload_dataloaders_every_n_epochs=1, default_root_dir=str(folder),
                        callbacks=callbacks)
    try:
        trainer.fit(_module(), datamodule=ShuffledData(per_epoch_seed), ckpt_path=ckpt)
    except SimulatedCrash:
        assert crash
    return [(r.epoch, r.chosen, r.fitness_selected, r.fitness_random, r.history) for r in sel.selection_results.runs]


@pytest.mark.parametrize("per_epoch_seed", [True, False])
def test_interrupted_and_resumed_selections_equal_the_uninterrupted_ones(tmp_path, per_epoch_seed):
    full = _selections(tmp_path / "full", per_epoch_seed)
    partial = _selections(tmp_path / "part", per_epoch_seed, crash=True)
    assert [r[0] for r in full] == [0, 1, 2, 3, 4] and [r[0] for r in partial] == [0, 1, 2]
    resumed = _selections(tmp_path / "resumed", per_epoch_seed, ckpt=str(tmp_path / "part" / "last.ckpt"))
    assert resumed[:3] == full[:3], "the selections made before the crash come back from the checkpoint"
    if per_epoch_seed:
        assert resumed == full, "same schedule, seeds, scorer and training order: the same selections"
    else:  # what a resume does not reproduce (README): an order drawn from the global generator
        assert [r[2] for r in resumed[3:]] != [r[2] for r in full[3:]]


# --------------------------------------------------------------------------- BackdoorSummary / BackdoorEvalCallback
class _RecordingExtractor(torch.nn.Module):
    """A feature extractor that records any attempt to move or cast it (``Module._apply``)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.moves = 0

    def _apply(self, fn, recurse=True):
        self.moves += 1
        return super()._apply(fn, recurse)

    def forward(self, x):
        return self.conv(x)


class ValData(StandInPoisonedDataModule):
    def __init__(self):
        super().__init__()
        self.feature_extractor = _RecordingExtractor().requires_grad_(False)
        self.feature_extractor.moves = 0

    def val_dataloader(self) -> DataLoader:
        pairs = [{"lr": self.lr[i], "hr": self.hr[i], "index": i, "path": f"val{i}"} for i in range(4)]
        return DataLoader(pairs, batch_size=2)


def test_summary_reads_the_selection_results_and_the_poison_config(tmp_path):
    from callbacks import BackdoorEvalCallback, BackdoorSummary

    sel = PoisonSelectionCallback(scorer=GradientScorer(batch_size=6, sketch_dim=16),
                                  selector=GeneticSelector(population=6, generations=3), save_plot=False)
    evaluation, summary = BackdoorEvalCallback(num_grid_images=0), BackdoorSummary()
    trainer, data = _fit(tmp_path, [sel, evaluation, summary], max_epochs=2, data=ValData())
    last = sel.selection_results.last
    s = summary.results["selection"]
    assert s["epoch"] == last.epoch == 0 and s["selector"] == "genetic"
    assert s["fitness_selected"] == s["fitness_ga"] == last.fitness_selected
    assert s["fitness_random"] == last.fitness_random and s["fitness_topk"] == last.fitness_topk
    config = summary.results["config"]
    assert config["label"] == "half-target" and config["trigger"] == {"name": "blend", "alpha": 0.2}
    assert config["poisoned_indices"] == data.poisoned_indices == last.chosen
    assert "GA" in summary.table() and f"{last.fitness_selected:.4g}" in summary.table()
    assert "backdoor/asr_feature" in trainer.callback_metrics, "the substitute's features were used"
    assert data.feature_extractor.moves == 0, "the callbacks used the extractor where it was, never moved it"
    # passed by reference instead of looked up
    other = SelectionResults([replace(last, epoch=7)])
    assert BackdoorSummary(selection=other)._selection(trainer)["epoch"] == 7
    with pytest.raises(TypeError, match="selection"):
        BackdoorSummary(selection={"epoch": 1})


# --------------------------------------------------------------------------- DDP
class _DDPReport(L.Callback):
    def __init__(self, out: Path, sel: PoisonSelectionCallback):
        self.out, self.sel = out, sel
        self.report: dict = {"max_rel_diff": None, "epoch1_poisoned": set(), "epoch1_seen": set()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1:
            self.report["epoch1_seen"].update(int(i) for i in batch["index"])
            self.report["epoch1_poisoned"].update(int(i) for i, p in zip(batch["index"], batch["poisoned"]) if p)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.sel.scores_epoch != trainer.current_epoch:
            return
        dm = trainer.datamodule
        idx = torch.tensor(dm.candidate_indices)
        ref, _ = naive_per_sample_grad_stats(pl_module.net, dm.triggered_lr[idx], dm.poisoned_hr[idx], sketch_dim=None)
        self.report["max_rel_diff"] = float(((self.sel.scores.norms - ref).abs() / ref).max())
        self.report["shard"] = [int(i) for b in dm.candidate_batches(100, trainer.global_rank, trainer.world_size)
                                for i in b["index"]]

    def on_fit_end(self, trainer, pl_module):
        r = self.report
        r.update(world_size=trainer.world_size, norms=self.sel.scores.norms.tolist(), indices=self.sel.scores.indices,
                 chosen=self.sel.selection_results.last.as_dict()["chosen"], poisoned_indices=trainer.datamodule.poisoned_indices,
                 epoch1_poisoned=sorted(r["epoch1_poisoned"]), epoch1_seen=sorted(r["epoch1_seen"]))
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(r))


def test_ddp_ranks_gather_the_same_norms_and_install_the_same_set(tmp_path, forked_ddp):
    """A 2-process gloo fit, its ranks forked from the test process (conftest.py)."""
    sel = PoisonSelectionCallback(scorer=GradientScorer(batch_size=4, sketch_dim=32, loss="mse"),
                                  selector=GeneticSelector(population=10, generations=10), save_plot=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        reload_dataloaders_every_n_epochs=1, default_root_dir=str(tmp_path),
                        callbacks=[sel, _DDPReport(tmp_path, sel)])
    forked_ddp(trainer, "fit", _module(), datamodule=StandInPoisonedDataModule())
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["shard"] != r1["shard"] and sorted(r0["shard"] + r1["shard"]) == sorted(POOL), "each rank scored half"
    assert r0["norms"] == r1["norms"] and r0["indices"] == r1["indices"] == POOL
    assert r0["max_rel_diff"] < 1e-3 and r1["max_rel_diff"] < 1e-3, "gathered norms sit at the right pool positions"
    assert r0["chosen"] == r1["chosen"] == r0["poisoned_indices"] == r1["poisoned_indices"]
    assert r0["epoch1_poisoned"] == sorted(set(r0["chosen"]) & set(r0["epoch1_seen"]))
    assert r1["epoch1_poisoned"] == sorted(set(r1["chosen"]) & set(r1["epoch1_seen"]))
