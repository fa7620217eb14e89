"""Lightning's checkpoint reading through lit-sr's safe loader, whatever the path.

``Trainer.fit/validate/test/predict(ckpt_path=...)`` reads the file through the strategy's
``CheckpointIO``, and Lightning's default one unpickles an ``http(s)`` URL with
``weights_only=False`` (``lightning.fabric.utilities.cloud_io._load``), i.e. runs whatever code the
file holds, and stores the download in torch hub's cache. :class:`SafeCheckpointIO` reads every
path, local, URL or any fsspec scheme, with :func:`lit_sr.io.load_checkpoint`
(``torch.load(weights_only=True)`` on the bytes, in memory) and refuses to do otherwise.
:func:`install_safe_checkpoint_io` puts it in a trainer; the command line does that for every run.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from lit_sr.io import load_checkpoint


class UnsafeCheckpointSettingError(ValueError):
    """A run asked to unpickle a checkpoint with ``weights_only=False``."""


class SafeCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose ``load_checkpoint`` only ever uses ``weights_only=True``.

    Args:
        timeout: seconds allowed for reading a remote (http/https) checkpoint.

    Saving is Lightning's own. ``weights_only=False`` is refused with
    :class:`UnsafeCheckpointSettingError` naming the file rather than honoured.
    """

    def __init__(self, timeout: float = 60.0) -> None:
        super().__init__()
        self.timeout = timeout

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict:
        if weights_only is False:
            raise UnsafeCheckpointSettingError(
                f"refused: loading {path} with weights_only=False would run any code the file holds; "
                "lit-sr reads checkpoints with weights_only=True only"
            )
        checkpoint = load_checkpoint(path, timeout=self.timeout)  # on the CPU; Lightning moves the states
        if isinstance(map_location, (str, torch.device)) and torch.device(map_location).type != "cpu":
            checkpoint = _to_device(checkpoint, torch.device(map_location))
        return checkpoint


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def install_safe_checkpoint_io(trainer) -> None:
    """Make ``trainer`` read every ``ckpt_path`` through :class:`SafeCheckpointIO`.

    Lightning's own ``TorchCheckpointIO`` (also inside a wrapper such as ``AsyncCheckpointIO``) is
    replaced; a ``CheckpointIO`` of another kind is the user's deliberate choice and is kept
    (``weights_only=True`` is still passed to it by the command line).
    """
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()
    elif isinstance(current, _WrappingCheckpointIO) and type(current.checkpoint_io) is TorchCheckpointIO:
        current._checkpoint_io = SafeCheckpointIO()  # its setter keeps a base once one is configured
