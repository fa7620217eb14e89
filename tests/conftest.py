"""Shared fixtures. Tests use randomly initialised or briefly trained tiny networks, never pretrained weights."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from forked_ranks import ForkedDDP

# Tiny test tensors run fastest on one thread (measured 9x faster than two on the CI box); the
# environment says so too, for the CLIs built in-process (lit_sr.runtime.configure_threads) and the
# interpreters the tests start.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# The longest test files (per-file sums of --junitxml times, 2026-12-07: 9-107 s each), longest
# first: make test's `--dist loadfile` hands whole files to the two workers in collection order, so a
# long file that starts last leaves one worker running alone at the end (tests/test_suite_order.py
# checks that every name here is a test file, and that xdist keeps this order).
LONGEST_FIRST = ("test_backdoor_e2e.py", "test_refsr.py", "test_every_recipe.py", "test_sr_module.py",
                 "test_readme.py", "test_trust.py", "test_backdoor_defenses.py", "test_attacks.py",
                 "test_import_direction.py", "test_wheel.py", "test_refsr_module.py", "test_backdoor_detection.py",
                 "test_poisoned_datamodule.py", "test_downstream.py", "test_refsr_claims.py",
                 "test_poison_sharding.py", "test_recipes.py", "test_study.py", "test_shapes_recipes.py",
                 "test_robust_module.py", "test_datsr.py", "test_datsr_report.py")


def pytest_configure(config) -> None:
    # pytest-xdist (>= 3.7) re-sorts the files of --dist loadfile by their number of tests, most first,
    # unless told not to: that sort sent the two-test e2e file (~110 s) last, to run alone while the
    # other worker idled (measured in a fresh clone, 2026-12-07). Keep the order collected below.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _sigint_restored():
    """SIGINT's handler as it was before each test. Lightning leaves SIGINT ignored after it handled a
    KeyboardInterrupt (``lightning/pytorch/trainer/call.py``) and at ``SIG_DFL`` after it tore a process
    group down (``_destroy_dist_connection``); either would change what a later test in the same worker
    sees when a SIGINT arrives."""
    before = signal.getsignal(signal.SIGINT)
    yield
    if signal.getsignal(signal.SIGINT) is not before:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True, scope="session")
def _private_image_store(tmp_path_factory):
    """Shared image stores (cache_images) go to this session's temp folder, not the node's /tmp/lit_sr_cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LIT_SR_CACHE_DIR", str(tmp_path_factory.mktemp("lit_sr_cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _emulated_bf16():
    """bf16 autocast really runs in the tests, also on a CPU without native bf16 (where users get float32,
    lit_sr.runtime.bf16_fallback): the tests check bf16 numerics on tiny tensors, where emulation costs
    little. tests/test_runtime_bf16.py removes the setting to test the fallback itself."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LIT_SR_CPU_BF16", "emulate")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    """A few real photographs shipped with scikit-image, as (3, H, W) tensors in [0, 1]."""
    import skimage.data

    return {
        name: torch.from_numpy(getattr(skimage.data, name)()[..., :3].copy()).permute(2, 0, 1).float() / 255
        for name in ("astronaut", "coffee", "chelsea")
    }


# --------------------------------------------------------------------------- a tiny trained SR net
# Shared by the attack and defense tests: a x2 EDSR (16 features, 2 blocks, img_range 1) trained
# for 400 Adam steps on 32 px crops of four downscaled photographs (a few seconds, once per session).
TINY_SCALE = 2


def random_crop_pairs(photos, count: int, generator: torch.Generator, hr_size: int = 32):
    """``count`` random HR crops of ``photos`` and their MATLAB-bicubic x2 LR images."""
    from lit_sr.ops import imresize

    out = []
    for _ in range(count):
        image = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        h, w = image.shape[-2:]
        top = int(torch.randint(h - hr_size, (1,), generator=generator))
        left = int(torch.randint(w - hr_size, (1,), generator=generator))
        out.append(image[:, top : top + hr_size, left : left + hr_size])
    hr = torch.stack(out)
    return imresize(hr, 1 / TINY_SCALE).clamp(0, 1), hr


@pytest.fixture(scope="session")
def small_photos() -> list[torch.Tensor]:
    """Four photographs shrunk to a quarter, so that a 32 px crop holds more texture."""
    from skimage import data as skdata

    from lit_sr.ops import imresize

    return [
        imresize(torch.from_numpy(np.ascontiguousarray(load())).permute(2, 0, 1).float() / 255, 0.25).clamp(0, 1)
        for load in (skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket)
    ]


@pytest.fixture(scope="session")
def crop_pairs():
    """:func:`random_crop_pairs`, for tests that need crops of their own."""
    return random_crop_pairs


def train_tiny_edsr(small_photos) -> torch.nn.Module:
    """The x2 EDSR of :func:`trained`: 400 Adam steps from a seeded start (deterministic on one thread)."""
    from lit_sr.archs import build_arch

    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=16, num_block=2, upscale=TINY_SCALE, img_range=1.0)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        lr, hr = random_crop_pairs(small_photos, 16, generator)
        loss = (net(lr) - hr).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


@pytest.fixture(scope="session")
def trained(small_photos, tmp_path_factory) -> torch.nn.Module:
    """:func:`train_tiny_edsr`, trained once per test run: the pytest-xdist workers share one file
    (the first to need it trains it under a lock; ~15 CPU-s saved per extra worker)."""
    from filelock import FileLock

    from lit_sr.archs import build_arch

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder above each worker's own
    path = shared / "trained_tiny_edsr.pt"
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            torch.save(train_tiny_edsr(small_photos).state_dict(), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
    torch.manual_seed(0)  # the global RNG left as training from this seed leaves it, whoever trained
    net = build_arch("edsr", num_feat=16, num_block=2, upscale=TINY_SCALE, img_range=1.0)
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


@pytest.fixture(scope="session")
def batch(small_photos):
    """Held-out crops (another seed than training)."""
    return random_crop_pairs(small_photos, 4, torch.Generator().manual_seed(123))


@pytest.fixture(scope="session")
def bicubic() -> torch.nn.Module:
    from lit_sr.archs import build_arch

    return build_arch("bicubic", upscale=TINY_SCALE)


# --------------------------------------------------------------------------- DDP ranks forked from the test
@pytest.fixture
def forked_ddp(monkeypatch) -> ForkedDDP:
    """Runs a test's Lightning DDP ranks as forks of the test process (``strategy="ddp_fork"``,
    :class:`forked_ranks.ForkedDDP`); its ``MASTER_ADDR``/``MASTER_PORT`` are undone after the test."""
    return ForkedDDP(monkeypatch)


@pytest.fixture(scope="module")
def forked_ddp_module():
    """:func:`forked_ddp` for a module-scoped fixture: its environment is undone after the module."""
    with pytest.MonkeyPatch.context() as mp:
        yield ForkedDDP(mp)
