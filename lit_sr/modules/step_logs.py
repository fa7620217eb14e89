"""When a training step's ``self.log`` calls are worth making.

In Lightning 2.6 one ``self.log`` call costs ~1-2 ms of CPU on its own (it moves its result record to
the value's device with ``apply_to_collection``, which walks and copies the record's metadata
dataclasses), while the logger receives step values only every ``log_every_n_steps`` steps: the
other calls only refresh the progress bar's number. On a small network's few-millisecond step that
call was most of what the Trainer added to a plain loop (``docs/performance.md``). So step-only
metrics (``on_step=True, on_epoch=False``, the default in ``training_step``) are logged on the steps
where Lightning writes them, and the logger gets exactly the same points; the progress bar shows
the value of the last such step. Epoch aggregates (``on_epoch=True``) must still be logged on every
step, or their means would skip steps.
"""

from __future__ import annotations

import lightning as L


def step_logs_due(module: L.LightningModule) -> bool:
    """Whether Lightning writes step metrics to the loggers after this training batch.

    Lightning's own rule (``log_every_n_steps``, the last step before stopping, ``fast_dev_run``),
    plus the last batch of an epoch and the last step of ``max_steps``, so that
    ``trainer.callback_metrics`` (what checkpoint monitors and summaries read) holds the metric at the
    end of every epoch and of the fit as before. ``True`` outside a fit (no trainer), so a module
    driven by hand logs every call.
    """
    trainer = module._trainer  # None until a Trainer attaches the module; `module.trainer` raises then
    if trainer is None or trainer.fast_dev_run:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None or connector.should_update_logs or trainer.is_last_batch:
        return True
    return 0 < trainer.max_steps <= trainer.global_step + 1
