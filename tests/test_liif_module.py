"""ArbitraryScaleSRModule with LIIF: the training pairs at a drawn scale, the query sampling, a short
fit that learns at scales it evaluates (x2, x3.5), loading the authors' file, and the recipe config.

Tiny random LIIF (8 features, one block, MLP 16-16), 32-64 px images.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from lit_sr.modules import ArbitraryScaleSRModule
from lit_sr.modules.arbitrary_scale_module import lr_at_scale, sample_queries
from lit_sr.ops import imresize

TINY = {"n_resblocks": 1, "n_feats": 8, "hidden_list": [16, 16]}
ROOT = Path(__file__).resolve().parents[1]


class Patches(Dataset):
    """Fixed HR patches of a photo with their x4 MATLAB-bicubic LR."""

    def __init__(self, image: torch.Tensor, size: int, count: int):
        g = torch.Generator().manual_seed(0)
        h, w = image.shape[-2:]
        self.hr = []
        for _ in range(count):
            top, left = (int(torch.randint(h - size, (1,), generator=g)), int(torch.randint(w - size, (1,), generator=g)))
            self.hr.append(image[:, top : top + size, left : left + size])

    def __len__(self):
        return len(self.hr)

    def __getitem__(self, i):
        hr = self.hr[i]
        return {"lr": imresize(hr, 1 / 4).clamp(0, 1), "hr": hr, "index": i, "path": str(i)}


def module(**kwargs) -> ArbitraryScaleSRModule:
    torch.manual_seed(0)
    defaults = dict(arch_kwargs=TINY, scale=4, inp_size=8, sample_q=64, scheduler="none", export_weights=False)
    return ArbitraryScaleSRModule(**{**defaults, **kwargs})


def test_crop_hr_pairs_follow_the_drawn_scale():
    m = module(train_scale_min=1.0, train_scale_max=4.0)
    hr = torch.rand(3, 3, 32, 32)
    batch = {"lr": imresize(hr, 1 / 4), "hr": hr}
    scales = [m.draw_scale() for _ in range(200)]
    assert 1.0 <= min(scales) < 1.3 and 3.7 < max(scales) <= 4.0  # uniform over the range
    for s in (1.0, 2.7, 4.0):
        lr, target = m.training_pair(batch, s)
        assert lr.shape == (3, 3, 8, 8) and target.shape == (3, 3, round(8 * s), round(8 * s))
        assert torch.allclose(lr, imresize(target, size=(8, 8)).clamp(0, 1))
    with pytest.raises(ValueError, match="patch_size"):
        m.training_pair({"lr": batch["lr"], "hr": hr[..., :20, :20]}, 4.0)
    choices = module(train_scales=[2, 3, 4])
    assert {choices.draw_scale() for _ in range(50)} == {2.0, 3.0, 4.0}


def test_resize_hr_keeps_the_datas_lr_and_shrinks_the_target():
    m = module(scale_sampling="resize_hr", train_scales=[2, 3, 4])
    hr = torch.rand(2, 3, 40, 48)
    lr = torch.rand(2, 3, 10, 12)  # e.g. a triggered LR: kept as it is
    for s in (2, 3, 4):
        got_lr, target = m.training_pair({"lr": lr, "hr": hr}, s)
        assert got_lr is lr and target.shape == (2, 3, 10 * s, 12 * s)
    assert m.training_pair({"lr": lr, "hr": hr}, 4)[1] is hr
    with pytest.raises(ValueError, match="must not exceed"):
        module(scale_sampling="resize_hr", train_scale_max=6.0)


def test_sampled_queries_are_the_target_pixels_at_their_centres():
    target = torch.rand(2, 3, 6, 9)
    coord, cell, rgb = sample_queries(target, 20, torch.Generator().manual_seed(0))
    assert coord.shape == (2, 20, 2) and torch.allclose(cell, torch.tensor([2 / 6, 2 / 9]).expand(2, 20, 2))
    rows = ((coord[..., 0] + 1) * 6 / 2 - 0.5).round().long()  # centre -1 + (2i+1)/H -> i
    cols = ((coord[..., 1] + 1) * 9 / 2 - 0.5).round().long()
    for b in range(2):
        assert len(set(zip(rows[b].tolist(), cols[b].tolist()))) == 20  # without replacement
        assert torch.equal(rgb[b], target[b][:, rows[b], cols[b]].T)
    with pytest.raises(ValueError, match="sample_q"):
        sample_queries(target, 55, torch.Generator())


def test_lr_at_a_non_integer_scale_crops_the_hr_the_authors_way():
    hr = torch.rand(1, 3, 30, 31)
    lr, crop = lr_at_scale(hr, 3.5)
    assert lr.shape[-2:] == (8, 8) and crop.shape[-2:] == (28, 28)  # floor(30/3.5) = 8, round(8*3.5) = 28
    assert torch.equal(lr, (lr * 255).round() / 255)


def test_a_short_fit_learns_at_the_evaluated_scales(tmp_path, photos):
    image = imresize(photos["chelsea"][None], 0.25)[0].clamp(0, 1)
    train = DataLoader(Patches(image, 32, 8), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(Patches(image, 32, 2), batch_size=2)
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0)
    before = L.Trainer(**quiet).validate(module(val_scales=[2, 3.5]), val, verbose=False)[0]  # the same init
    m = module(lr=3e-3, val_scales=[2, 3.5])
    trainer = L.Trainer(max_steps=30, **quiet)
    trainer.fit(m, train, val)
    after = trainer.callback_metrics
    for tag in ("x2", "x3.5"):
        assert f"val/{tag}/bicubic_psnr_y" in after
        assert after[f"val/{tag}/psnr_y"] > before[f"val/{tag}/psnr_y"] + 2, (tag, before, after)
    assert after["val/psnr_y"] > before["val/psnr_y"] + 2
    assert 1.0 <= float(after["train/scale"]) <= 4.0


def test_the_image_loss_is_the_pixel_loss_of_the_whole_output():
    m = module(loss_on="image", train_scales=[2.5])
    hr = torch.rand(2, 3, 32, 32)
    torch.manual_seed(5)
    loss = m.training_step({"lr": imresize(hr, 1 / 4), "hr": hr}, 0)
    m2 = module(loss_on="image", train_scales=[2.5])  # the same draws (seed) and weights
    lr, target = m2.training_pair({"lr": imresize(hr, 1 / 4), "hr": hr}, m2.draw_scale())
    assert target.shape[-1] == 20
    assert torch.allclose(loss, (m2.net(lr, size=(20, 20)) - target).abs().mean())


def test_the_authors_file_as_pretrained(tmp_path):
    net = module().net
    spec = {"name": "liif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}},
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}}}
    sd = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    torch.save({"model": {**spec, "sd": sd}, "epoch": 1}, tmp_path / "epoch-last.pth")
    m = module(pretrained=str(tmp_path / "epoch-last.pth"))
    assert all(torch.equal(m.net.state_dict()[k], v) for k, v in sd.items())
    torch.save({"model": {**spec, "args": {**spec["args"], "local_ensemble": False}, "sd": sd}}, tmp_path / "noens.pth")
    with pytest.raises(ValueError, match="local_ensemble"):
        module(pretrained=str(tmp_path / "noens.pth"))


def test_a_fixed_scale_network_is_refused():
    with pytest.raises(TypeError, match="arbitrary-scale"):
        ArbitraryScaleSRModule(arch="edsr", arch_kwargs={"num_feat": 8, "num_block": 1})


def test_the_quickstart_recipe_parses(capsys):
    from train import main

    path = ROOT / "configs" / "train" / "liif_quickstart.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_sr.modules.ArbitraryScaleSRModule"
    assert printed["model"]["init_args"]["arch"] == "liif"
