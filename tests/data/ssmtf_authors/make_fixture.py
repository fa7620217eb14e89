"""Write ``net_g_ngf32.json``: the authors' SSMTF ``net_g`` built and run by THEIR code (not lit-sr's).

It records, for ``RestorationNet(ngf=32, n_blocks=1, groups=2)`` of edbca/SSMTF (commit 432a749,
``mmsr/models/archs/ref_restoration_arch.py`` + ``blocks.py``, the bodies they hard-code: 3
residual groups of 6 VSS blocks, d_state 16), every state_dict key with its shape, and its output
in eval mode on deterministic weights and inputs (:func:`weights_for`, :func:`inputs`), with
``mamba_ssm``'s pure-PyTorch ``selective_scan_ref`` (mamba-ssm 2.2.2's source) standing in for the
CUDA ``selective_scan_fn`` their SS2D calls. ``tests/test_ssmtf.py`` loads the keys strictly into
lit-sr's port and compares its output. Not run by the tests (it needs the two foreign sources):

    git clone https://github.com/edbca/SSMTF; pip download mamba-ssm==2.2.2 --no-deps --no-binary :all:
    tar xzf mamba_ssm-2.2.2.tar.gz; pip install --target /tmp/einops_pkg einops
    PYTHONPATH=/tmp/einops_pkg:. python tests/data/ssmtf_authors/make_fixture.py SSMTF/mmsr mamba_ssm-2.2.2

timm's ``DropPath`` (rate 0 here: an identity) is stubbed, as are the CUDA modules mamba imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
NGF, N_BLOCKS, GROUPS, LR_SIZE = 32, 1, 2, 4
TRANSFER = {"relu1_1": (64, 4), "relu2_1": (128, 2), "relu3_1": (256, 1)}  # channels, size factor of the LR


def weights_for(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Deterministic, RNG-free weights: ``sin`` patterns scaled by 1/sqrt(fan_in); norms and skip scales near 1."""
    state = {}
    for i, (key, shape) in enumerate(sorted(shapes.items())):
        numel = math.prod(shape)
        wave = torch.sin(torch.arange(numel, dtype=torch.float64) * 0.7 + 1.3 * i).view(shape)
        if len(shape) >= 2 and not key.endswith(("A_logs", "dt_projs_bias")):
            wave = wave / math.sqrt(numel / shape[0])
        elif key.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "skip_scale", "skip_scale2", "Ds")):
            wave = 1 + 0.1 * wave
        else:
            wave = 0.1 * wave
        state[key] = wave.float()
    return state


def inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LR (1, 3, 4, 4), shifted flows (1, 9, s, s, 2) up to +-3 px and reference features, by VGG layer."""
    def wave(shape, phase, amp=1.0):
        return amp * torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.37 + phase).view(shape).float()
    lr = 0.5 + wave((1, 3, LR_SIZE, LR_SIZE), 0.1, 0.4)
    pre_offset, ref_feat = {}, {}
    for j, (layer, (channels, factor)) in enumerate(TRANSFER.items()):
        size = LR_SIZE * factor
        pre_offset[layer] = wave((1, 9, size, size, 2), 0.5 + j, 3.0)
        ref_feat[layer] = wave((1, channels, size, size), 1.5 + j).clamp(min=0)
    return lr, pre_offset, ref_feat


def _load_file_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _authors_net_g(mmsr: Path, mamba: Path) -> nn.Module:
    sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    interface = _load_file_module("mamba_selective_scan_interface",
                                  mamba / "mamba_ssm" / "ops" / "selective_scan_interface.py")
    stub = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    stub.selective_scan_fn = interface.selective_scan_ref  # the CUDA kernel's pure-PyTorch reference
    stub.selective_scan_ref = interface.selective_scan_ref
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["mamba_ssm.ops.selective_scan_interface"] = stub
    timm_layers = types.ModuleType("timm.models.layers")
    timm_layers.DropPath = lambda p=0.0: nn.Identity() if p == 0 else None
    timm_layers.to_2tuple = lambda x: (x, x)
    timm_layers.trunc_normal_ = nn.init.trunc_normal_
    for name in ("timm", "timm.models"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models.layers"] = timm_layers
    for name, path in (("models", mmsr / "models"), ("models.archs", mmsr / "models" / "archs")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]  # a bare package: their __init__ imports mmcv and every arch
        sys.modules[name] = package
    arch = importlib.import_module("models.archs.ref_restoration_arch")
    return arch.RestorationNet(ngf=NGF, n_blocks=N_BLOCKS, groups=GROUPS)


def main(mmsr: str, mamba: str) -> None:
    torch.manual_seed(0)
    net = _authors_net_g(Path(mmsr), Path(mamba)).eval()
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(weights_for(shapes), strict=True)
    lr, pre_offset, ref_feat = inputs()
    with torch.no_grad():
        out = net(lr, pre_offset, ref_feat)
    record = {"source": "edbca/SSMTF@432a749 mmsr/models/archs/ref_restoration_arch.py RestorationNet"
                        f"(ngf={NGF}, n_blocks={N_BLOCKS}, groups={GROUPS}); mamba-ssm 2.2.2 selective_scan_ref",
              "config": {"ngf": NGF, "n_blocks": N_BLOCKS, "groups": GROUPS, "lr_size": LR_SIZE},
              "shapes": shapes, "output_shape": list(out.shape),
              "output": [round(v, 7) for v in out.flatten().tolist()]}
    target = HERE / "net_g_ngf32.json"
    tmp = target.with_suffix(".tmp")
    shapes_text = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in shapes.items())
    body = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in record.items() if k != "shapes")
    tmp.write_text(f"{{{body},\n\"shapes\": {{\n{shapes_text}\n}}}}\n")  # one key per line
    tmp.replace(target)
    print(f"wrote {target}: {len(shapes)} keys, output {tuple(out.shape)}, mean {out.mean():.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
