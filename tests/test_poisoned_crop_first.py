"""The poisoned training set reads only the training patch (crop first) and gets the whole-image path's crops."""

from __future__ import annotations

import pytest
import torch

from datamodules.datasets import DataError, ImageRecord, SRPairDataset
from datamodules.poisoned_train import CachedPairs
from lit_sr.poison.cache import PartialManifest, PoisonCache

SCALE = 2


def write_cache(tmp_path, quantize: bool) -> PoisonCache:
    """Three pool samples of different sizes, stored as the poisoned data module stores them."""
    g = torch.Generator().manual_seed(0)
    cache = PoisonCache(tmp_path / "cache", {"test": "crop_first", "quantize": quantize})
    cache.prepare()
    samples, info = {}, {}
    for i, (h, w) in enumerate([(20, 24), (17, 31), (16, 16)]):
        lr, hr = torch.rand(3, h, w, generator=g), torch.rand(3, h * SCALE, w * SCALE, generator=g)
        if quantize:
            lr, hr = (lr * 255).round().to(torch.uint8), (hr * 255).round().to(torch.uint8)
        samples[f"train_{i:06d}"] = {"lr": lr, "hr": hr}
        info[f"train_{i:06d}"] = {"index": i}
    cache.write_samples(samples, info, PartialManifest(cache, 0))
    cache.merge_parts()
    cache.load()
    return cache


def base_set(patch_size, augment: bool) -> SRPairDataset:
    records = [ImageRecord(name=f"img{i}", hr_tensor=torch.zeros(3, 64, 64)) for i in range(3)]
    return SRPairDataset(records, scale=SCALE, patch_size=patch_size, augment=augment)


@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize(("patch_size", "augment"), [(16, True), (16, False), (None, True), (None, False)])
@pytest.mark.parametrize("keep_in_memory", [False, True])
def test_crop_first_gives_the_whole_image_path_crops(tmp_path, quantize, patch_size, augment, keep_in_memory):
    cache = write_cache(tmp_path, quantize)
    base = base_set(patch_size, augment)
    whole, first = CachedPairs(cache, keep_in_memory=False), CachedPairs(cache, keep_in_memory=keep_in_memory)
    seen = set()
    for seed in range(12):
        index = seed % 3
        torch.manual_seed(seed)
        expected = base.crop_and_augment(*whole(index), index)  # the former path: whole pair to float, then crop
        after_expected = torch.rand(1)
        torch.manual_seed(seed)
        got = first.training_patch(index, base)
        assert torch.rand(1) == after_expected  # the same number of draws from the global generator
        for e, o in zip(expected, got):
            assert o.dtype == torch.float32 and o.is_contiguous()
            assert torch.equal(e, o)  # bit-identical: the same float32 division, on the patch only
        seen.add(tuple(got[0].flatten()[:4].tolist()))
    assert len(seen) > 3 or (patch_size is None and not augment)  # the draws differ between seeds


def test_crop_first_names_an_image_smaller_than_the_patch(tmp_path):
    pairs = CachedPairs(write_cache(tmp_path, True), keep_in_memory=False)
    with pytest.raises(DataError, match=r"img2 is too small for the patch: LR is 16x16"):
        pairs.training_patch(2, base_set(40, True))
    with pytest.raises(KeyError, match="not in the candidate pool"):
        pairs.training_patch(7, base_set(16, True))
