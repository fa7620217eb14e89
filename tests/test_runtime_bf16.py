"""bf16 on a device without native bf16: one detector (lit_sr.runtime.native_bf16), a warning once, float32.

The detector is monkeypatched both ways, so the tests do not depend on the CPU they run on.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lit_sr import runtime
from lit_sr.archs import build_arch
from lit_sr.attacks import PGD
from lit_sr.runtime import autocast_context, trainer_precision

CPU = torch.device("cpu")


@pytest.fixture
def no_native_bf16(monkeypatch):
    """A CPU without native bf16, the emulation switch off, and the once-only warning not yet given."""
    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    monkeypatch.setattr(runtime, "_warned_fallback", set())


def conv_dtype_under(autocast: str) -> torch.dtype:
    conv = torch.nn.Conv2d(3, 4, 3)
    with autocast_context(autocast, CPU):
        return conv(torch.rand(1, 3, 8, 8)).dtype


def test_without_native_bf16_autocast_runs_float32_and_warns_once(no_native_bf16):
    with pytest.warns(RuntimeWarning, match=r"no avx512_bf16|without avx512_bf16") as record:
        assert conv_dtype_under("bf16") == torch.float32
    assert "LIT_SR_CPU_BF16=emulate" in str(record[0].message) and len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use must not warn again
        assert conv_dtype_under("bf16") == torch.float32


def test_with_native_bf16_autocast_runs_bf16_without_warning(monkeypatch):
    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    monkeypatch.setattr(runtime, "_warned_fallback", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert conv_dtype_under("bf16") == torch.bfloat16
    assert conv_dtype_under("none") == torch.float32


def test_emulate_setting_runs_bf16_on_a_cpu_without_it(no_native_bf16, monkeypatch):
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "emulate")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert conv_dtype_under("bf16") == torch.bfloat16


def test_an_attack_asking_for_bf16_gives_the_float32_result_on_fallback(no_native_bf16, monkeypatch):
    # every autocast of the library goes through autocast_context: the bf16 attack is the fp32 attack exactly
    torch.manual_seed(0)
    net = build_arch("edsr", num_feat=8, num_block=1, upscale=2, img_range=1.0)
    lr = torch.rand(2, 3, 12, 12)
    with pytest.warns(RuntimeWarning):
        bf16 = PGD(net, eps=4 / 255, steps=2, seed=0, autocast="bf16")(lr)
    fp32 = PGD(net, eps=4 / 255, steps=2, seed=0, autocast="none")(lr)
    assert torch.equal(bf16, fp32)
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "emulate")  # and bf16 that really runs does change the result
    assert not torch.equal(PGD(net, eps=4 / 255, steps=2, seed=0, autocast="bf16")(lr), fp32)


def test_trainer_precision_falls_back_on_cpu_only(no_native_bf16):
    with pytest.warns(RuntimeWarning, match="trainer.precision bf16-mixed"):
        assert trainer_precision("bf16-mixed", "cpu") == "32-true"
    assert trainer_precision("bf16-true", "cpu") == "32-true"  # warned once already: silent
    assert trainer_precision("bf16-mixed", "gpu") == "bf16-mixed"
    assert trainer_precision("16-mixed", "cpu") == "16-mixed"
    assert trainer_precision(32, "cpu") == 32


@pytest.mark.parametrize(("flags", "native"), [({"avx2", "avx512f", "avx512bw"}, False),
                                               ({"avx2", "avx512f", "avx512_bf16"}, True),
                                               ({"amx_bf16", "amx_tile"}, True), ({"fp", "asimd", "bf16"}, True)])
def test_cpu_detection_reads_the_bf16_flags(monkeypatch, flags, native):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset(flags))
    assert runtime.cpu_native_bf16() is native
    assert runtime.native_bf16("cpu") is native
