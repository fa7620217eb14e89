"""lit-sr command line: ``python train.py {fit,validate,test,predict} --config configs/<recipe>.yaml``.

Any LightningModule (``lit_sr.modules.*``) and LightningDataModule (``datamodules.*``) can be
chosen by ``class_path`` in the YAML file or on the command line.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (tests use it)."""
    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
