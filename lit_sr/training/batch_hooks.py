"""Skip Lightning's dispatch of the per-batch hooks that do nothing, the callbacks' and the module's.

Lightning 2.6 calls every per-batch hook of every callback on every batch (``_call_callback_hooks``):
for each one it reads the callback's ``state_key`` (a ``repr`` of its arguments for the
checkpoint callbacks), formats a profiler name and enters and leaves a profiler context, about a
dozen Python calls even when the hook is :class:`lightning.pytorch.Callback`'s empty method.
``lit-sr fit``'s quickstart has ten callbacks and six hooks per training step, 60 hook calls of
which three do work (the two checkpoints' batch ends return at once between validations); with
the other 57 hidden, the recipe's callbacks, logger and bar add 61% fewer Python calls to a bare
Trainer's step (``benchmarks/step_overhead.py --count-calls``, ``docs/performance.md``).

The same dispatcher skips a hook that is not callable (``if callable(fn)``; pinned by
``tests/test_lightning_private.py``), so :func:`skip_noop_batch_hooks` sets, on each callback
*instance*, the per-batch hooks that do nothing to ``None``: those its class inherits unchanged
from ``Callback`` (whose body is ``pass``), and ``ModelCheckpoint``'s ``on_train_batch_end`` when
the checkpoint has no per-step schedule (it returns at once then). Nothing a callback does is
skipped; a subclass that overrides a hook keeps it; :func:`restore_batch_hooks` undoes it. What
changes: ``--trainer.profiler simple`` no longer lists those hooks (they took no time).

The LightningModule's own per-batch hooks go through the same kind of dispatcher
(``_call_lightning_module_hook``, which also returns at once for a hook that is not callable):
six a training step, empty in ``LightningModule`` (``tests/test_lightning_private.py`` pins both),
so the training-step hooks a module's class inherits unchanged are hidden the same way. Not its
validation, test and predict batch hooks: Lightning's evaluation loops read their signatures
(whether they take ``dataloader_idx``), which a hidden hook does not have.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

# The hooks Lightning's loops call once per batch (training, validation, test, predict): per-epoch
# hooks cost nothing worth a change.
BATCH_HOOKS = (
    "on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "on_train_batch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_batch_start", "on_predict_batch_end",
)
# A module's hooks that may be hidden: the evaluation loops inspect the other ones' signatures.
TRAINING_BATCH_HOOKS = BATCH_HOOKS[:6]


def noop_batch_hooks(target: L.Callback | L.LightningModule) -> list[str]:
    """The per-batch hooks of a callback (the training-step ones of a module) that do nothing: not yet
    hidden, and either the empty method of :class:`~lightning.pytorch.Callback` (of
    :class:`~lightning.pytorch.LightningModule` for a module) or, for a checkpoint callback with no
    per-step schedule, :class:`ModelCheckpoint`'s ``on_train_batch_end``."""
    module = isinstance(target, L.LightningModule)
    base = L.LightningModule if module else L.Callback
    hooks = [hook for hook in (TRAINING_BATCH_HOOKS if module else BATCH_HOOKS)
             if hook not in vars(target) and getattr(type(target), hook, None) is getattr(base, hook)]
    if "on_train_batch_end" not in vars(target) and _idle_checkpoint(target):
        hooks.append("on_train_batch_end")
    return hooks


def _idle_checkpoint(callback: L.Callback | L.LightningModule) -> bool:
    """A ``ModelCheckpoint`` whose ``on_train_batch_end`` returns at once on every batch.

    Lightning 2.6's method saves only on an ``every_n_train_steps`` or ``train_time_interval``
    schedule and returns before touching any state when neither is set (both optimisation modes;
    ``tests/test_lightning_private.py`` pins it): the quickstart's best and last checkpoints,
    which save at validation and epoch ends.
    """
    return (isinstance(callback, ModelCheckpoint)
            and type(callback).on_train_batch_end is ModelCheckpoint.on_train_batch_end
            and callback._every_n_train_steps < 1 and callback._train_time_interval is None)


def skip_noop_batch_hooks(targets: Iterable[L.Callback | L.LightningModule]) -> int:
    """Hide the empty per-batch hooks of each callback (or module) from Lightning's dispatchers; returns how many."""
    hidden = 0
    for target in targets:
        for hook in noop_batch_hooks(target):
            setattr(target, hook, None)  # an instance attribute: the class and other instances are unchanged
            hidden += 1
    return hidden


def restore_batch_hooks(targets: Iterable[L.Callback | L.LightningModule]) -> None:
    """Undo :func:`skip_noop_batch_hooks`: every hook is dispatched again (the benchmark's ablation)."""
    for target in targets:
        for hook in BATCH_HOOKS:
            if hook in vars(target) and vars(target)[hook] is None:
                delattr(target, hook)
