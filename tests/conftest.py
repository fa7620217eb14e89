"""Shared fixtures. Tests use randomly initialised or briefly trained tiny networks, never pretrained weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# Tiny test tensors run fastest on one thread (measured 9x faster than two on the CI box); the
# environment says so too, for the CLIs built in-process (lit_sr.runtime.configure_threads) and the
# interpreters the tests start.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def trained(small_photos) -> torch.nn.Module:
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
def batch(small_photos):
    """Held-out crops (another seed than training)."""
    return random_crop_pairs(small_photos, 4, torch.Generator().manual_seed(123))


@pytest.fixture(scope="session")
def bicubic() -> torch.nn.Module:
    from lit_sr.archs import build_arch

    return build_arch("bicubic", upscale=TINY_SCALE)


# --------------------------------------------------------------------------- DDP ranks forked from the test
# The 2-process DDP tests fork their ranks from the test process (Lightning's strategy="ddp_fork", or
# torch.multiprocessing with the fork start method): a forked rank starts with torch, lightning and the
# project already imported, where each fresh interpreter of Lightning's subprocess launcher (strategy="ddp")
# pays ~10 CPU-s of imports for a fit of under a second. One test keeps that real launcher: the CLI test
# of tests/test_sr_module.py (docs/testing.md).

#: seconds one forked call may run before its ranks are killed: a rank stuck in a collective waits for its
#: peer for gloo's 30 minutes, and must fail the test instead of stalling the suite
FORK_TIMEOUT_S = 240.0


class ForkedDDP:
    """Runs a 2-rank DDP call with its ranks forked from this process, with a watchdog.

    ``MASTER_ADDR`` and ``MASTER_PORT`` (a free port, so that two xdist workers forking at once do not
    meet) are set through ``mp``, so they are undone after the test: Lightning's launcher writes
    ``MASTER_PORT`` into this process's environment, and without the undo the next test in this xdist
    worker would inherit it. A rank that raises fails the call with its traceback (torch's
    ``ProcessRaisedException``, which names the rank); a call still running after ``timeout_s`` has
    its ranks killed and raises :class:`TimeoutError`.
    """

    def __init__(self, mp: pytest.MonkeyPatch, timeout_s: float = FORK_TIMEOUT_S):
        from lightning.fabric.plugins.environments.lightning import find_free_network_port

        mp.setenv("MASTER_ADDR", "127.0.0.1")
        mp.setenv("MASTER_PORT", str(find_free_network_port()))
        self.timeout_s = timeout_s

    def trainer(self, trainer, method: str, *args, **kwargs):
        """``getattr(trainer, method)(*args, **kwargs)``, e.g. ``fit``; ``trainer`` must use ``ddp_fork``."""
        launcher = trainer.strategy.launcher
        if getattr(launcher, "_start_method", None) != "fork":
            raise ValueError(f"trainer.strategy must fork its ranks (strategy='ddp_fork'), got {trainer.strategy}")
        launcher.procs = []  # the launcher fills it with this call's ranks as it starts them
        return self._watched(lambda: launcher.procs, lambda: getattr(trainer, method)(*args, **kwargs))

    def processes(self, fn, *args, nprocs: int = 2) -> None:
        """``fn(rank, *args)`` in ``nprocs`` forked processes (``torch.multiprocessing``), joined."""
        import torch.multiprocessing as tmp

        context = tmp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="fork")

        def join() -> None:
            while not context.join():
                pass

        self._watched(lambda: context.processes, join)

    def _watched(self, procs, call):
        import signal
        import threading

        expired = threading.Event()

        def kill() -> None:
            expired.set()
            for proc in procs():
                try:
                    os.kill(proc.pid, signal.SIGKILL)  # the join in the main thread then raises
                except ProcessLookupError:
                    pass

        timer = threading.Timer(self.timeout_s, kill)
        timer.daemon = True
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as DataLoader workers do: a forked child must not reuse an OpenMP pool
        timer.start()
        try:
            return call()
        except Exception as exc:
            if expired.is_set():
                raise TimeoutError(f"forked DDP ranks still running after {self.timeout_s:.0f} s: killed") from exc
            raise
        finally:
            timer.cancel()
            torch.set_num_threads(threads)


@pytest.fixture
def forked_ddp(monkeypatch) -> ForkedDDP:
    """Runs a test's DDP ranks as forks of the test process (:class:`ForkedDDP`)."""
    return ForkedDDP(monkeypatch)


@pytest.fixture(scope="module")
def forked_ddp_module():
    """:func:`forked_ddp` for a module-scoped fixture: its environment is undone after the module."""
    with pytest.MonkeyPatch.context() as mp:
        yield ForkedDDP(mp)
