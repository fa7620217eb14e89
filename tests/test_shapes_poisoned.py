"""The colour backdoor of the shapes task: its label recolours objects into the target's family; the data module is PoisonedData."""

import pytest
import torch

from callbacks.protocols import PoisonedData
from datamodules.poisoned_shapes import HueShiftLabel, PoisonedShapesDataModule, _hsv_to_rgb, _rgb_to_hsv
from datamodules.shapes import CLASS_NAMES, COLOUR_FAMILIES, ShapesDataModule

SMALL = dict(hr_size=64, min_radius=10, max_radius=20, train_size=20, val_size=6, batch_size=4, val_batch_size=3)


def test_hsv_round_trip_matches_colorsys():
    import colorsys

    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    h, s, v = _rgb_to_hsv(x)
    assert torch.allclose(_hsv_to_rgb(h, s, v), x, atol=1e-6)
    ref = colorsys.rgb_to_hsv(*x[1, :, 2, 3].tolist())
    assert [h[1, 2, 3].item(), s[1, 2, 3].item(), v[1, 2, 3].item()] == pytest.approx(list(ref), abs=1e-6)


def test_hue_shift_moves_warm_objects_into_the_cool_family_and_keeps_the_rest():
    data = ShapesDataModule(**SMALL, shapes=["circle"])
    data.setup("fit")
    label = HueShiftLabel("cool")
    lo, hi = COLOUR_FAMILIES["cool"]
    seen = set()
    for i in range(len(data.train_dataset)):
        sample = data.train_dataset.generator.render(i)
        out = label(sample.hr[None])[0]
        mask = sample.masks[0]
        hue, sat, val = _rgb_to_hsv(out[None])
        # every object pixel ends in the cool hue range, saturation and value (the texture) unchanged
        assert ((hue[0][mask] >= lo - 1e-4) & (hue[0][mask] <= hi + 1e-4)).all()
        h0, s0, v0 = _rgb_to_hsv(sample.hr[None])
        assert torch.allclose(sat[0][mask], s0[0][mask], atol=1e-5) and torch.allclose(val[0][mask], v0[0][mask], atol=1e-5)
        # unsaturated background pixels are never touched
        grey = (s0[0] < 0.5) & ~mask
        assert torch.equal(out[:, grey], sample.hr[:, grey])
        name = CLASS_NAMES[int(sample.labels[0])]
        seen.add(name)
        if name.startswith("cool"):  # already in the target family: unchanged object
            assert torch.allclose(out[:, mask], sample.hr[:, mask], atol=1e-5)
    assert seen == {"warm_circle", "cool_circle"}


def test_poisoned_shapes_is_poisoned_data_and_serves_triggered_recoloured_pairs():
    data = PoisonedShapesDataModule(target_class="cool_circle", shapes=["circle"], poison_rate=0.25, **SMALL)
    assert isinstance(data, PoisonedData) and data.target_class == CLASS_NAMES.index("cool_circle")
    data.setup("fit")
    assert data.budget == 5 and len(data.poisoned_indices) == 5
    for i in range(len(data.train_dataset)):
        served, clean = data.train_dataset[i], data.train_dataset.base[i]
        assert served["poisoned"] == (i in data.poisoned_indices)
        if served["poisoned"]:
            lr_p, hr_p = data.poison_pair(clean["lr"], clean["hr"], clean["objects"])
            assert torch.equal(served["lr"], lr_p) and torch.equal(served["hr"], hr_p)
            assert not torch.equal(served["lr"], clean["lr"])
            assert served["label"] == clean["label"]  # the class label is the clean one: only the SR pair is poisoned
        else:
            assert torch.equal(served["hr"], clean["hr"])
    batch = next(iter(data.val_dataloader()))
    trig, target = data.backdoor_val_pair(0, batch["lr"][0], batch["hr"][0])
    assert torch.allclose(target, data.target_for(batch["hr"][:1], index=batch["index"][:1])[0], atol=1 / 255)
    assert trig.shape == batch["lr"][0].shape
    report = data.poison_report
    assert report["trigger_lr_psnr"] > 15 and report["num_candidates"] == 20
    pool = next(iter(data.candidate_batches(8)))
    assert pool["lr"].shape == (8, 3, 16, 16) and pool["index"].tolist() == data.candidate_indices[:8]
    assert data.poison_config()["target"] == "cool_circle"


def test_object_label_keeps_the_background_and_the_saturated_label_does_not():
    kinds = {region: PoisonedShapesDataModule(target_class="cool_circle", shapes=["circle"], label_region=region,
                                              quantize=False, **{**SMALL, "val_size": 12})
             for region in ("objects", "saturated")}
    for data in kinds.values():
        data.setup("fit")
    background_moved = 0
    for i in range(12):
        sample = kinds["objects"].val_dataset.generator.render(i)
        mask = sample.masks.any(0)
        lr = kinds["objects"].val_dataset[i]["lr"]
        _, objects_only = kinds["objects"].backdoor_val_pair(i, lr, sample.hr)
        _, everywhere = kinds["saturated"].backdoor_val_pair(i, lr, sample.hr)
        assert torch.equal(objects_only[:, ~mask], sample.hr[:, ~mask])  # the photo background is bit-exact
        assert torch.allclose(objects_only[:, mask], everywhere[:, mask])  # the objects move the same way
        background_moved += int((everywhere[:, ~mask] != sample.hr[:, ~mask]).any(0).sum())
        target = kinds["objects"].target_for(sample.hr[None], index=[i])[0]
        assert torch.equal(target, objects_only)
    assert background_moved > 0  # the saturated label recolours warm photo pixels too
    with pytest.raises(ValueError, match="needs the objects' masks"):
        kinds["objects"].target_for(sample.hr[None])
    assert torch.equal(kinds["saturated"].target_for(sample.hr[None])[0], everywhere)
    assert kinds["objects"].poison_config()["label_settings"]["region"] == "objects"


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="not drawn"):
        PoisonedShapesDataModule(target_class="cool_circle", shapes=["square"], **SMALL)
    with pytest.raises(ValueError, match="unknown shapes class 'blue_blob'"):
        PoisonedShapesDataModule(target_class="blue_blob", **SMALL)
    with pytest.raises(ValueError, match="poisons no sample"):
        PoisonedShapesDataModule(poison_rate=0.01, **SMALL)
    data = PoisonedShapesDataModule(**SMALL)
    with pytest.raises(ValueError, match="at most budget"):
        data.set_poisoned_indices(list(range(10)))
    with pytest.raises(ValueError, match="label_region must be 'objects' or 'saturated'"):
        PoisonedShapesDataModule(label_region="background", **SMALL)
    with pytest.raises(ValueError, match="region must be a boolean mask"):
        HueShiftLabel("cool")(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="shapes must be distinct"):
        ShapesDataModule(shapes=["hexagon"])
