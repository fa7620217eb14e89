"""The product card's entry point, an alias of ``lit-sr {fit,validate,test,predict}``.

``python train.py fit --config configs/train/quickstart.yaml`` is ``lit-sr fit --config
configs/train/quickstart.yaml`` (:mod:`lit_sr.jobs.train.cli`). ``main(args, run=False)`` builds the
LightningCLI without running it (tests use it).
"""

from __future__ import annotations

import sys

from lit_sr.jobs.train.cli import TrainCLI
from lit_sr.jobs.train.cli import main as run_main
from lit_sr.jobs.train.cli import train_cli as main

__all__ = ["TrainCLI", "main"]

if __name__ == "__main__":
    sys.exit(run_main())  # LightningCLI reads sys.argv[1:]
