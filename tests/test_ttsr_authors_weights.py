"""TTSR loads the files the authors' code writes (researchmm/TTSR), strictly.

Their ``trainer.py`` saves ``model.state_dict()`` without the ``LTE_copy`` entries, so a file holds
the frozen mean-shift conv of their ``LTE`` (``LTE.sub_mean.weight``/``.bias``, ``utils.MeanShift``);
a full ``nn.Module`` state also holds ``LTE_copy.*``. The network is tiny and random.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_sr.archs import build_arch
from lit_sr.io import WeightsMismatchError, load_weights


def tiny_ttsr(seed: int = 0):
    torch.manual_seed(seed)
    return build_arch("ttsr", n_feats=8, num_res_blocks=[1, 1, 1, 1])


def authors_mean_shift() -> nn.Conv2d:
    """The authors' ``utils.MeanShift(1, vgg_mean, vgg_std)``, as their LTE builds it."""
    conv = nn.Conv2d(3, 3, kernel_size=1)
    std = torch.tensor((0.229, 0.224, 0.225))
    conv.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
    conv.bias.data = -1 * torch.tensor((0.485, 0.456, 0.406)) / std
    return conv


def authors_lte_keys() -> list[str]:
    """Key names of the authors' ``LTE``: VGG19 ``features`` 0..11 split into three slices + ``sub_mean``."""
    convs = {"slice1": [0], "slice2": [2, 5], "slice3": [7, 10]}
    keys = [f"{s}.{i}.{p}" for s, idx in convs.items() for i in idx for p in ("weight", "bias")]
    return keys + ["sub_mean.weight", "sub_mean.bias"]


def authors_state(net, with_copy: bool) -> dict[str, torch.Tensor]:
    """A state dict in the authors' names with fresh random values (so loading is observable)."""
    gen = torch.Generator().manual_seed(7)
    own = net.state_dict()
    state = {k: torch.randn(v.shape, generator=gen) for k, v in own.items() if k.startswith("MainNet.")}
    shift = authors_mean_shift()
    prefixes = ["LTE."] + (["LTE_copy."] if with_copy else [])
    for prefix in prefixes:
        for key in authors_lte_keys():
            if key.startswith("sub_mean."):
                state[prefix + key] = getattr(shift, key.split(".")[1]).detach().clone()
            else:
                state[prefix + key] = torch.randn(own[f"LTE.{key}"].shape, generator=gen)
    return state


@pytest.mark.parametrize("with_copy", [False, True], ids=["trainer_file", "full_module_state"])
def test_authors_files_load_strictly(tmp_path, with_copy):
    net = tiny_ttsr()
    state = authors_state(net, with_copy)
    path = tmp_path / "model_00200.pt"
    torch.save(state, path)  # the authors' layout: a flat state_dict, no 'params' wrapper
    load_weights(net, path, strict=True)
    loaded = net.state_dict()
    for key, value in state.items():
        if key.startswith("LTE.") and not key.startswith("LTE.sub_mean."):
            assert torch.equal(loaded[key], value), key
        elif key.startswith("MainNet."):
            assert torch.equal(loaded[key], value), key
    # the mean shift is applied: the extractor equals the authors' conv followed by their slices
    x = torch.rand(1, 3, 16, 16)
    ref_lv1 = net.LTE.slice1(authors_mean_shift()(x))
    assert torch.allclose(net.LTE(x)[0], ref_lv1, atol=1e-5)


def test_a_mean_shift_other_than_the_frozen_one_is_refused(tmp_path):
    net = tiny_ttsr()
    state = authors_state(net, with_copy=False)
    state["LTE.sub_mean.bias"] = state["LTE.sub_mean.bias"] + 0.1
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"LTE\.sub_mean\.bias.*mean-shift"):
        load_weights(net, tmp_path / "m.pt")


def test_an_incomplete_lte_copy_is_refused_naming_the_keys(tmp_path):
    net = tiny_ttsr()
    state = authors_state(net, with_copy=True)
    del state["LTE_copy.slice3.10.weight"]
    state["LTE_copy.slice9.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"LTE_copy\.slice9\.0\.weight.*LTE_copy\.slice3\.10\.weight"):
        load_weights(net, tmp_path / "m.pt")


def test_other_unexpected_keys_are_still_refused(tmp_path):
    net = tiny_ttsr()
    state = authors_state(net, with_copy=False)
    state["LTE.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(WeightsMismatchError, match=r"LTE\.extra\.weight"):
        load_weights(net, tmp_path / "m.pt")
