"""The procedural shapes task: seeded, exact boxes, non-overlapping objects, LR = bicubic HR."""

import pytest
import torch

from datamodules.shapes import CLASS_NAMES, ShapesDataModule, ShapesGenerator, class_index, collate_shapes
from lit_sr.ops import imresize


def backgrounds():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 80, 90, generator=g), torch.rand(3, 70, 70, generator=g)]


def gen(seed=0, **kw):
    kw = {"hr_size": 64, "max_objects": 3, "min_radius": 6, "max_radius": 14, **kw}
    return ShapesGenerator(backgrounds(), seed=seed, **kw)


def test_same_seed_same_samples_other_seed_other_samples():
    a, b, c = gen(0), gen(0), gen(1)
    for i in range(6):
        sa, sb = a.render(i), b.render(i)
        assert torch.equal(sa.hr, sb.hr) and torch.equal(sa.boxes, sb.boxes) and torch.equal(sa.labels, sb.labels)
    assert any(not torch.equal(a.render(i).hr, c.render(i).hr) for i in range(6))
    # train and val streams of one seed differ
    assert not torch.equal(gen(0, split_id=0).render(0).hr, gen(0, split_id=1).render(0).hr)


def test_every_box_encloses_its_drawn_shape_exactly():
    g = gen(3)
    seen_multi = False
    for i in range(40):
        s = g.render(i)
        assert len(s.boxes) == len(s.labels) == len(s.masks) >= 1
        seen_multi |= len(s.boxes) > 1
        for box, mask in zip(s.boxes, s.masks):
            rows = torch.nonzero(mask.any(1)).flatten()
            cols = torch.nonzero(mask.any(0)).flatten()
            # tight: pixel-edge box from the first to one past the last drawn row/column
            assert box.tolist() == [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
        # objects never overlap, and the image differs from the background only where a shape was drawn
        union = s.masks.sum(0)
        assert int(union.max()) == 1
        changed = (s.hr != s.background).any(0)
        assert not changed[union == 0].any()
    assert seen_multi


def test_classes_are_shape_times_colour_family():
    assert len(CLASS_NAMES) == 6 and len(set(CLASS_NAMES)) == 6
    assert class_index("circle", "warm") != class_index("circle", "cool")
    g = gen(5, max_objects=1)
    labels = {int(g.render(i).labels[0]) for i in range(60)}
    assert labels == set(range(6))  # every class is generated


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="at least 64 px"):
        ShapesGenerator([torch.rand(3, 40, 40)], hr_size=64, min_radius=6, max_radius=14)
    with pytest.raises(ValueError, match="max_radius"):
        ShapesGenerator(backgrounds(), hr_size=64, min_radius=6, max_radius=40)
    with pytest.raises(ValueError, match="multiple of scale"):
        ShapesDataModule(scale=4, hr_size=66)


def test_data_module_serves_lr_hr_labels_and_boxes():
    dm = ShapesDataModule(scale=4, hr_size=64, train_size=8, val_size=4, max_objects=2, min_radius=6,
                          max_radius=14, batch_size=4, val_batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["hr"].shape == (4, 3, 64, 64) and batch["lr"].shape == (4, 3, 16, 16)
    assert torch.allclose(batch["lr"], imresize(batch["hr"], 1 / 4).clamp(0, 1))
    for label, boxes, labels in zip(batch["label"], batch["boxes"], batch["labels"]):
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert int(label) == int(labels[areas.argmax()])
    again = collate_shapes([dm.val_dataset[i] for i in range(4)])
    assert torch.equal(again["hr"], batch["hr"])
    # the objects' mask: exactly the pixels the generator drew (the image differs from its background there only)
    for i in range(4):
        sample = dm.val_dataset.generator.render(i)
        assert batch["objects"].shape == (4, 64, 64) and batch["objects"].dtype == torch.bool
        assert torch.equal(batch["objects"][i], sample.masks.any(0))
        assert not torch.equal(sample.hr[:, batch["objects"][i]], sample.background[:, batch["objects"][i]])
        assert torch.equal(sample.hr[:, ~batch["objects"][i]], sample.background[:, ~batch["objects"][i]])
