"""Record the name of the running hook on a LightningModule without ``nn.Module``'s attribute checks.

Around every hook it dispatches (module, callback and strategy hooks alike) Lightning 2.6 sets
``pl_module._current_fx_name`` and sets it back afterwards: about 47 assignments a training step.
``torch.nn.Module.__setattr__`` checks each assigned value against ``Parameter``, ``Module`` and
the buffers (three ``isinstance`` calls, two of them through ``Parameter``'s metaclass, and three
dictionary lookups): about 550 of a bare Trainer's ~1,900 Python calls a step on top of a plain
loop (``benchmarks/step_overhead.py --count-calls``, ``docs/performance.md``). The name is a
string or ``None``, never a parameter, buffer or submodule, so those checks can only fall
through to ``object.__setattr__``; :class:`PlainHookName` goes there directly for that one
attribute and leaves every other assignment to ``nn.Module``.
"""

from __future__ import annotations

from typing import Any

HOOK_NAME_ATTRIBUTE = "_current_fx_name"  # where Lightning records the running hook


class PlainHookName:
    """Mixin, listed before ``LightningModule``: the running hook's name is stored as a plain attribute.

    Every other assignment goes through ``nn.Module.__setattr__`` as before, so parameters,
    buffers and submodules are registered as usual.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == HOOK_NAME_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
