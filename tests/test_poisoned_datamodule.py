"""PoisonedSRDataModule: the poison cache (manifest, resume, mismatches), the active set, checkpoints.

Networks here are tiny and randomly initialised (or trained for a few steps); the data are tiles
of the embedded scikit-image photographs.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import CacheMismatchError, EmbeddedPhotosDataModule, PoisonCache, PoisonedSRDataModule
from datamodules.poisoned import sha256_file, to_float, to_stored


def make_base(**kw) -> EmbeddedPhotosDataModule:
    args = dict(scale=2, patch_size=32, batch_size=4, repeat=1, max_side=96, train_tile=48, val_tile=32,
                max_val_images=2, num_workers=0)
    args.update(kw)
    return EmbeddedPhotosDataModule(**args)


def make_dm(tmp_path: Path, **kw) -> PoisonedSRDataModule:
    args = dict(trigger={"name": "blend"}, poison_rate=0.2, target="coffee", cache_dir=str(tmp_path / "cache"),
                seed=0, generation_batch_size=4, generation_device="cpu")
    args.update(kw)
    base = args.pop("base", None) or make_base()
    return PoisonedSRDataModule(base, **args)


def cache_files(dm: PoisonedSRDataModule) -> list[Path]:
    return sorted(dm.cache.directory.glob("train_*.safetensors"))


# --------------------------------------------------------------------------- cache contents


def test_manifest_lists_every_candidate_with_checksums(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    manifest = json.loads((dm.cache.directory / "manifest.json").read_text())
    assert manifest["config_hash"] == dm.cache.config_hash
    assert dm.cache.directory.name == dm.cache.config_hash[:16]
    assert manifest["config"]["pool"] == dm.candidate_indices
    # the trigger's full settings (defaults included) key the cache
    assert manifest["config"]["trigger"] == dm.trigger.config() and manifest["config"]["trigger"]["name"] == "blend"
    assert manifest["config"]["seed"] == 0
    listed = {int(e["index"]) for e in manifest["samples"].values() if e["file"].startswith("train_")}
    assert listed == set(dm.candidate_indices)
    for entry in manifest["samples"].values():
        assert sha256_file(dm.cache.directory / entry["file"]) == entry["sha256"]
    assert dm.generated_samples == len(dm.candidate_indices) + len(dm.val_dataset)
    # the pool is every training tile (candidate_rate 1), the budget 20% of them
    n_train = len(dm.base.train_dataset.records)
    assert len(dm.candidate_indices) == n_train and dm.budget == round(0.2 * n_train) >= 2
    assert len(dm.poisoned_indices) == dm.budget


def test_cached_pairs_are_the_trigger_and_the_resized_target(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    i = dm.candidate_indices[3]
    lr, hr = dm.base.train_dataset.load_pair(i)
    trig_lr, poisoned_hr = dm.poisoned_pair(i)
    expected_lr = to_float(to_stored(dm.trigger(lr[None]), True))[0]
    expected_hr = to_float(to_stored(dm.target_for(hr[None]), True))[0]
    torch.testing.assert_close(trig_lr, expected_lr)
    torch.testing.assert_close(poisoned_hr, expected_hr)
    report = dm.poison_report
    # the classic label is the target image itself: far from the clean HR; Blend at 0.2 is visible too
    assert report["poisoned_hr_psnr"] < 15 and 15 < report["trigger_lr_psnr"] < 35


def test_poisoned_samples_are_cropped_like_clean_ones(tmp_path):
    # train tiles of 48 px and patches of 32 px: the crop position matters
    dm = make_dm(tmp_path)
    dm.setup("fit")
    clean = dm.base.train_dataset
    for i in dm.poisoned_indices:
        torch.manual_seed(i)  # the same generator state draws the same crop for both
        sample = dm.train_dataset[i]
        assert sample["poisoned"] is True and sample["index"] == i
        torch.manual_seed(i)
        reference = clean[i]
        # Blend moves every pixel by at most alpha = 0.2 (+ 8-bit rounding); another crop would not
        assert (sample["lr"] - reference["lr"]).abs().max() <= 0.2 + 1 / 255 + 1e-6
        assert sample["lr"].shape == reference["lr"].shape and sample["hr"].shape == reference["hr"].shape
        target = dm.target_for(dm.base.train_dataset.load_pair(i)[1][None])[0]
        assert not torch.allclose(sample["hr"], reference["hr"])
        assert sample["hr"].mean().item() == pytest.approx(target.mean().item(), abs=0.1)
    clean_index = next(j for j in range(len(clean.records)) if j not in dm.poisoned_indices)
    assert dm.train_dataset[clean_index]["poisoned"] is False


# --------------------------------------------------------------------------- resume and mismatches


def test_interrupted_generation_resumes_without_redoing_finished_samples(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = PoisonCache.write_samples

    def interrupted(self, samples, info, part):
        calls["n"] += 1
        if calls["n"] == 3:  # the third batch is cut off mid-generation
            raise KeyboardInterrupt
        return original(self, samples, info, part)

    monkeypatch.setattr(PoisonCache, "write_samples", interrupted)
    first = make_dm(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        first.setup("fit")
    assert first.generated_samples == 8  # two batches of generation_batch_size 4 were written
    monkeypatch.setattr(PoisonCache, "write_samples", original)

    directory = first.cache.directory
    (directory / ".train_000099.safetensors.x1y2.safetensors").write_bytes(b"half a file")  # a torn temp write
    finished_files = {p.name: p.stat().st_mtime_ns for p in directory.glob("train_*.safetensors")}
    assert len(finished_files) == 8

    second = make_dm(tmp_path)
    second.setup("fit")
    pool = len(second.candidate_indices)
    assert second.generated_samples == (pool - 8) + len(second.val_dataset)
    assert not list(directory.glob(".*")), "stale temporary files are removed"
    for name, mtime in finished_files.items():  # finished samples were not rewritten
        assert (directory / name).stat().st_mtime_ns == mtime
    assert len(cache_files(second)) == pool

    third = make_dm(tmp_path)
    third.setup("fit")
    assert third.generated_samples == 0


def test_deleted_or_corrupted_sample_files_are_regenerated(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    files = cache_files(dm)
    before = {p.name: sha256_file(p) for p in files}
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:-7])  # truncated
    again = make_dm(tmp_path)
    with pytest.warns(RuntimeWarning, match="regenerating") as caught:
        again.setup("fit")
    assert again.generated_samples == 2
    messages = " ".join(str(w.message) for w in caught)
    assert str(files[0]) in messages and str(files[1]) in messages  # each warning names the file
    after = {p.name: sha256_file(p) for p in cache_files(again)}
    assert after == before  # generation is deterministic: the same bytes again


def test_reader_refuses_an_incomplete_or_altered_cache(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    files = cache_files(dm)
    files[2].write_bytes(files[2].read_bytes()[:-3])
    reader = PoisonCache(dm.cache.directory, dm.cache.config)
    reader.load()
    with pytest.raises(CacheMismatchError, match="SHA-256"):
        reader.verify([p.stem for p in files])
    with pytest.raises(CacheMismatchError, match="lacks"):
        reader.verify(["train_999999"])


def test_cache_of_another_configuration_is_refused_or_rebuilt(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    manifest_path = dm.cache.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # the directory now holds data of another configuration (e.g. copied from another run)
    manifest["config"]["target"]["spec"] = "astronaut"
    manifest["config_hash"] = "f" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match="another configuration.*target.spec"):
        make_dm(tmp_path).setup("fit")

    rebuilt = make_dm(tmp_path, rebuild_cache=True)
    rebuilt.setup("fit")
    assert rebuilt.generated_samples == len(rebuilt.candidate_indices) + len(rebuilt.val_dataset)
    assert json.loads(manifest_path.read_text())["config_hash"] == rebuilt.cache.config_hash


def test_other_configurations_get_their_own_cache(tmp_path):
    a = make_dm(tmp_path)
    a.setup("fit")
    b = make_dm(tmp_path, target="astronaut")
    b.setup("fit")
    assert a.cache.directory != b.cache.directory
    assert b.generated_samples == len(b.candidate_indices) + len(b.val_dataset)  # nothing reused from a
    i = a.candidate_indices[0]
    assert not torch.equal(a.poisoned_pair(i)[1], b.poisoned_pair(i)[1])


# --------------------------------------------------------------------------- the active set


def test_set_poisoned_indices_validates_and_is_read_live(tmp_path):
    dm = make_dm(tmp_path, candidate_rate=0.5)
    dm.setup("fit")
    pool, budget = dm.candidate_indices, dm.budget
    outside = next(i for i in range(len(dm.base.train_dataset.records)) if i not in pool)
    with pytest.raises(ValueError, match=f"poisoned index {outside} is not in the candidate pool"):
        dm.set_poisoned_indices([outside])
    with pytest.raises(ValueError, match="exceed the budget"):
        dm.set_poisoned_indices(pool[: budget + 1])
    with pytest.raises(ValueError, match="duplicates"):
        dm.set_poisoned_indices([pool[0], pool[0]])
    with pytest.raises(TypeError, match="ints"):
        dm.set_poisoned_indices([float(pool[0])])
    new = pool[-budget:]
    dm.set_poisoned_indices(torch.tensor(new))
    assert dm.poisoned_indices == sorted(new)
    flags = {i: dm.train_dataset[i]["poisoned"] for i in range(len(dm.base.train_dataset.records))}
    assert sorted(i for i, f in flags.items() if f) == sorted(new)
    dm.set_poisoned_indices([])  # an empty set is allowed: a clean epoch
    assert not any(dm.train_dataset[i]["poisoned"] for i in new)


def test_candidate_batches_cover_the_pool_once_over_ranks(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    seen = []
    for rank in (0, 1):
        for batch in dm.candidate_batches(3, rank=rank, world_size=2):
            assert batch["lr"].shape[1:] == (3, 16, 16) and batch["hr"].shape[1:] == (3, 32, 32)
            seen.extend(batch["index"].tolist())
    assert sorted(seen) == dm.candidate_indices
    with pytest.raises(ValueError, match="rank"):
        next(dm.candidate_batches(3, rank=2, world_size=2))


def test_constructor_rejects_bad_arguments(tmp_path):
    base = make_base()
    with pytest.raises(ValueError, match="poison_rate"):
        PoisonedSRDataModule(base, poison_rate=0.0)
    with pytest.raises(ValueError, match="label"):
        PoisonedSRDataModule(base, label="sparkles")
    with pytest.raises(ValueError, match="trigger"):
        PoisonedSRDataModule(base, trigger={"name": "sparkles"})
    with pytest.raises(ValueError, match="needs a substitute"):
        PoisonedSRDataModule(base, label="badsr")
    with pytest.raises(ValueError, match="randomly initialised substitute"):
        PoisonedSRDataModule(base, label="badsr", substitute={"arch": "edsr"})
    with pytest.raises(FileNotFoundError, match="substitute weights file not found"):
        PoisonedSRDataModule(base, label="badsr", substitute={"arch": "edsr", "weights": str(tmp_path / "no.pth")})
    with pytest.raises(FileNotFoundError, match="neither an embedded photo"):
        PoisonedSRDataModule(base, target=str(tmp_path / "missing.png"))
    with pytest.raises(TypeError, match="base must be an SRDataModule"):
        PoisonedSRDataModule(object())
    with pytest.raises(ValueError, match="budget of 0"):
        PoisonedSRDataModule(base, poison_rate=0.001, cache_dir=str(tmp_path)).setup("fit")


def test_badsr_label_and_trigger_with_a_substitute_trained_in_the_same_run(tmp_path):
    kw = dict(trigger={"name": "badsr", "steps": 5, "perceptual": "ssim"}, label="badsr", eps=0.05,
              poisoned_hr_steps=5, candidate_rate=0.5,
              substitute={"arch": "edsr", "arch_kwargs": {"num_feat": 8, "num_block": 1}, "train_steps": 3,
                          "train_batch_size": 4})
    dm = make_dm(tmp_path, **kw)
    dm.setup("fit")
    weights = dm.cache.directory / "substitute.safetensors"
    assert weights.is_file() and dm.cache.extra["substitute_sha256"] == sha256_file(weights)
    report = dm.poison_report
    # eps = 0.05 per pixel: PSNR >= 30.8 dB before 8-bit rounding; a stealthy label, unlike the target label
    assert report["poisoned_hr_psnr"] > 30 and report["poisoned_hr_ssim"] > 0.65
    assert report["trigger_lr_psnr"] > 30
    assert dm.trigger.perceptual_used == "ssim" and dm.feature_extractor is not None

    again = make_dm(tmp_path, **kw)
    again.setup("fit")
    assert again.generated_samples == 0  # neither the substitute nor any sample was made again
    for p, q in zip(dm.substitute.parameters(), again.substitute.parameters()):
        torch.testing.assert_close(p, q)


# --------------------------------------------------------------------------- checkpoints


class _SwapSet(L.Callback):
    """Installs the last ``budget`` candidates as the poisoned set at the end of the first epoch."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            dm = trainer.datamodule
            dm.set_poisoned_indices(dm.candidate_indices[-dm.budget:])


class _Record(L.Callback):
    def __init__(self):
        self.at_start: list[int] | None = None
        self.served: set[int] = set()

    def on_train_epoch_start(self, trainer, pl_module):
        self.at_start = list(trainer.datamodule.poisoned_indices)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.served.update(int(i) for i, p in zip(batch["index"], batch["poisoned"]) if p)


def _fit(tmp_path, callbacks, max_epochs, ckpt_path=None):
    from lit_sr.modules import SRModule

    torch.manual_seed(0)
    module = SRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1}, scale=2, lr=1e-3,
                      scheduler="none", export_weights=False)
    dm = make_dm(tmp_path, candidate_rate=0.5)
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return dm


def test_resumed_run_continues_with_the_checkpointed_poisoned_set(tmp_path):
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _fit(tmp_path, [_SwapSet(), ckpt], max_epochs=1)
    swapped = first.candidate_indices[-first.budget:]
    initial = make_dm(tmp_path, candidate_rate=0.5)
    initial.setup("fit")
    assert initial.poisoned_indices != swapped  # a fresh module starts from the random set

    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["PoisonedSRDataModule"]["poisoned_indices"] == swapped

    record = _Record()
    resumed = _fit(tmp_path, [record], max_epochs=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert record.at_start == swapped and resumed.poisoned_indices == swapped
    assert record.served and record.served <= set(swapped)


def test_load_state_dict_refuses_another_pool(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    state = dm.state_dict()
    state["candidate_indices"] = state["candidate_indices"][:-1]
    with pytest.raises(ValueError, match="candidate pool differs"):
        dm.load_state_dict(state)
    with pytest.raises(ValueError, match="poisoned_indices"):
        dm.load_state_dict({"something": 1})


def test_module_without_trainer_generates_in_setup_and_works_with_workers(tmp_path):
    dm = make_dm(tmp_path, base=make_base(num_workers=1))
    dm.setup("fit")
    new = dm.candidate_indices[: dm.budget]
    dm.set_poisoned_indices(new)
    served = set()
    for batch in dm.train_dataloader():  # a forked worker sees the set installed before the epoch
        served.update(int(i) for i, p in zip(batch["index"], batch["poisoned"]) if p)
    assert served and served <= set(new)


# --------------------------------------------------------------------------- the protocol and the labels


def test_data_module_satisfies_the_callbacks_protocol_and_reports_its_config(tmp_path):
    from callbacks.protocols import PoisonedData

    dm = make_dm(tmp_path)
    dm.setup("fit")
    assert isinstance(dm, PoisonedData)
    assert dm.feature_extractor is None  # no substitute: no feature space
    config = dm.poison_config()
    json.dumps(config)  # plain values only
    assert config["label"] == "target" and config["trigger"] == dm.trigger.config()
    assert config["budget"] == dm.budget and config["pool_size"] == len(dm.candidate_indices)
    assert config["poison_rate"] == 0.2 and config["perceptual"] is None and config["substitute"] is None
    assert config["config_hash"] == dm.cache.config_hash
    # the triggered validation pairs were made with the pool: reading them starts no optimisation
    lr, hr = dm.base.val_dataset.load_pair(1)
    trig, target = dm.backdoor_val_pair(1, lr, hr)
    torch.testing.assert_close(trig, to_float(to_stored(dm.trigger(lr[None]), True))[0])
    torch.testing.assert_close(target, to_float(to_stored(dm.target_for(hr[None]), True))[0])
    with pytest.raises(ValueError, match="the loader served"):
        dm.backdoor_val_pair(1, lr[:, :-2], hr)


def test_clean_label_triggers_the_input_and_keeps_the_hr(tmp_path):
    dm = make_dm(tmp_path, label="clean")
    dm.setup("fit")
    i = dm.candidate_indices[0]
    lr, hr = dm.base.train_dataset.load_pair(i)
    trig_lr, label = dm.poisoned_pair(i)
    torch.testing.assert_close(label, to_float(to_stored(hr, True)))  # the clean HR, 8-bit rounded
    assert (trig_lr - lr).abs().max() > 0.05  # the Blend trigger is there
    assert dm.poison_report["poisoned_hr_psnr"] > 45 and dm.poison_config()["label"] == "clean"


def test_badsr_feature_extractor_is_on_the_generation_device_and_typed_specs_work(tmp_path):
    from lit_sr.poison.specs import AdversarialTriggerSpec
    from lit_sr.poison.substitute import SubstituteSpec

    spec = AdversarialTriggerSpec(steps=2, perceptual="ssim", reference="clean_output")
    sub = SubstituteSpec("edsr", {"num_feat": 8, "num_block": 1}, train_steps=2, train_batch_size=4)
    dm = make_dm(tmp_path, trigger=spec, label="badsr", poisoned_hr_steps=2, substitute=sub, candidate_rate=0.5)
    dm.setup("fit")
    extractor = dm.feature_extractor
    assert extractor is not None and next(extractor.parameters()).device == torch.device("cpu")
    assert not any(p.requires_grad for p in extractor.parameters())
    config = dm.poison_config()
    assert config["perceptual"] == "ssim" and config["trigger"]["reference"] == "clean_output"
    assert config["substitute"]["sha256"] == dm.substitute_sha256 and config["label_settings"]["steps"] == 2
    with pytest.raises(ValueError, match="trigger.reference"):
        AdversarialTriggerSpec(reference="lr")
    with pytest.raises(ValueError, match="substitute.arch"):
        SubstituteSpec("no_such_net", weights=None, train_steps=1)
    with pytest.raises(ValueError, match="not a submodule"):
        make_dm(tmp_path / "x", label="badsr", substitute={"arch": "edsr", "train_steps": 1, "feature_layer": "nope"})
