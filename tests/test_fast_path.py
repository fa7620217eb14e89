"""SRModule's fast path on CPU: bf16-mixed agrees with fp32 to bf16 tolerance, channels-last changes
nothing but the memory layout, and compile=True leaves the state_dict keys alone.

The networks are tiny, randomly initialised EDSRs (same seed on both sides of every comparison).
``torch.compile`` is not run here: inductor's first compile of even a tiny network takes about
45 s on two CPU cores; the GPU benchmark (benchmarks/train_throughput.py --compile) runs it.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lit_sr.modules import GANSRModule, SRModule
from lit_sr.ops import imresize

SCALE = 2


class Patches(Dataset):
    def __init__(self, hr: torch.Tensor):
        self.hr = hr
        self.lr = ((imresize(hr, 1 / SCALE).clamp(0, 1) * 255).round() / 255)

    def __len__(self):
        return len(self.hr)

    def __getitem__(self, i):
        return {"lr": self.lr[i], "hr": self.hr[i], "index": i, "path": "p"}


@pytest.fixture(scope="module")
def patches(photos) -> Patches:
    hr = torch.stack([photos["chelsea"][:, 100:164, 200:264], photos["coffee"][:, 150:214, 300:364]])
    return Patches(hr)


def make_module(**kwargs) -> SRModule:
    torch.manual_seed(0)  # same random initialisation on both sides of each comparison
    return SRModule(arch="edsr", arch_kwargs={"num_feat": 16, "num_block": 2}, scale=SCALE, scheduler="none",
                    export_weights=False, **kwargs)


class StepRecorder(L.Callback):
    """The loss of the first step and the gradients it produced."""

    def __init__(self):
        self.grads: torch.Tensor | None = None
        self.loss: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = torch.cat([p.grad.detach().flatten().float() for p in pl_module.net.parameters()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = float(outputs["loss"])


def one_step(module: SRModule, patches: Patches, precision: str, tmp_path) -> StepRecorder:
    rec = StepRecorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[rec])
    trainer.fit(module, DataLoader(patches, batch_size=2))
    return rec


def test_bf16_mixed_step_agrees_with_fp32(patches, tmp_path):
    fp32 = one_step(make_module(), patches, "32-true", tmp_path)
    bf16 = one_step(make_module(), patches, "bf16-mixed", tmp_path)
    # autocast really ran (bf16 rounding shows) ...
    assert bf16.loss != fp32.loss
    # ... and the step agrees to bf16 tolerance (8-bit mantissa: ~0.4% per rounding).
    assert bf16.loss == pytest.approx(fp32.loss, rel=2e-2)
    cosine = torch.nn.functional.cosine_similarity(bf16.grads, fp32.grads, dim=0).item()
    assert cosine > 0.99
    assert (bf16.grads.norm() / fp32.grads.norm()).item() == pytest.approx(1.0, abs=0.05)


def test_channels_last_same_output_and_gradients(patches, tmp_path):
    plain, fast = make_module(), make_module(channels_last=True)
    assert list(plain.state_dict()) == list(fast.state_dict())
    for a, b in zip(plain.state_dict().values(), fast.state_dict().values()):
        assert torch.equal(a, b)
    conv = fast.net.conv_first.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    lr = patches.lr
    with torch.no_grad():
        torch.testing.assert_close(fast(lr), plain(lr), rtol=1e-5, atol=1e-5)
    rec_plain = one_step(plain, patches, "32-true", tmp_path)
    rec_fast = one_step(fast, patches, "32-true", tmp_path)
    assert rec_fast.loss == pytest.approx(rec_plain.loss, rel=1e-5)
    torch.testing.assert_close(rec_fast.grads, rec_plain.grads, rtol=1e-4, atol=1e-6)


def test_gan_module_channels_last_discriminator():
    torch.manual_seed(0)
    module = GANSRModule(arch_kwargs={"num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                         discriminator_kwargs={"num_feat": 8}, perceptual_weight=0.0, channels_last=True)
    assert module.net_d.conv0_0.weight.is_contiguous(memory_format=torch.channels_last)
    hr = torch.rand(2, 3, 128, 128)
    plain = GANSRModule(arch_kwargs={"num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                        discriminator_kwargs={"num_feat": 8}, perceptual_weight=0.0)
    plain.net_d.load_state_dict(module.net_d.state_dict())
    plain.net_d.eval()
    module.net_d.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.discriminate(hr), plain.discriminate(hr), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_keeps_state_dict_keys():
    plain, compiled = make_module(), make_module(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
