"""Skip Lightning's dispatch of the per-batch callback hooks a callback leaves as the base no-op.

Lightning 2.6 calls every per-batch hook of every callback on every batch (``_call_callback_hooks``):
for each one it reads the callback's ``state_key`` (a ``repr`` of its arguments for the
checkpoint callbacks), formats a profiler name and enters and leaves a profiler context, about a
dozen Python calls even when the hook is :class:`lightning.pytorch.Callback`'s empty method.
``lit-sr fit``'s quickstart has ten callbacks and six hooks per training step, of which five do
something (``benchmarks/step_overhead.py --count-calls``): the other 55 dispatches were about 40%
of what the recipe's callbacks, logger and bar added to a bare Trainer's step.

The same dispatcher skips a hook that is not callable (``if callable(fn)``; pinned by
``tests/test_lightning_private.py``), so :func:`skip_noop_batch_hooks` sets, on each callback
*instance*, the per-batch hooks its class inherits unchanged from ``Callback`` to ``None``. Only
methods whose body is ``Callback``'s own ``pass`` are touched, so nothing a callback does is
skipped; a subclass that overrides a hook keeps it; :func:`restore_batch_hooks` undoes it. What
changes: ``--trainer.profiler simple`` no longer lists those empty hooks (they took no time).
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L

# The hooks Lightning's loops call once per batch (training, validation, test, predict): per-epoch
# hooks cost nothing worth a change.
BATCH_HOOKS = (
    "on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
)


def noop_batch_hooks(callback: L.Callback) -> list[str]:
    """The per-batch hooks of ``callback`` that are :class:`~lightning.pytorch.Callback`'s empty methods."""
    return [hook for hook in BATCH_HOOKS
            if hook not in vars(callback) and getattr(type(callback), hook, None) is getattr(L.Callback, hook)]


def skip_noop_batch_hooks(callbacks: Iterable[L.Callback]) -> int:
    """Hide each callback's empty per-batch hooks from Lightning's dispatcher; returns how many were hidden."""
    hidden = 0
    for callback in callbacks:
        for hook in noop_batch_hooks(callback):
            setattr(callback, hook, None)  # an instance attribute: the class and other instances are unchanged
            hidden += 1
    return hidden


def restore_batch_hooks(callbacks: Iterable[L.Callback]) -> None:
    """Undo :func:`skip_noop_batch_hooks`: every hook is dispatched again (the benchmark's ablation)."""
    for callback in callbacks:
        for hook in BATCH_HOOKS:
            if hook in vars(callback) and vars(callback)[hook] is None:
                delattr(callback, hook)
