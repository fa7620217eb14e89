"""lit-sr command line: ``python train.py {fit,validate,test,predict} --config configs/<recipe>.yaml``.

Any LightningModule (``lit_sr.modules.*``) and LightningDataModule (``datamodules.*``) can be
chosen by ``class_path`` in the YAML file or on the command line. Model arguments typed on the
command line win over the hyper-parameters saved in a ``--ckpt_path`` checkpoint
(:class:`lit_sr.cli.SRLightningCLI`), and ``predict`` writes PNG files through
``callbacks.prediction_writer.PredictionWriter``, set with ``--prediction.output_dir``, ``--prediction.tile`` and
``--prediction.tile_overlap``.
"""

from __future__ import annotations

import lightning as L

from callbacks.prediction_writer import PredictionWriter
from callbacks.stop_on_signal import StopOnSigterm
from lit_sr.cli import SRLightningCLI
from lit_sr.runtime import close_process_group


class TrainCLI(SRLightningCLI):
    """:class:`SRLightningCLI` with the prediction writer as a forced callback (``--prediction.*``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # The writer has the images on disk; keeping every SR tensor in memory too would only grow.
            parser.set_defaults(return_predictions=False)
        return parser

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(StopOnSigterm())  # Lightning's predict loop ignores SIGTERM otherwise
        return trainer


def main(args: list[str] | None = None, run: bool = True) -> TrainCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (tests use it)."""
    return TrainCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
    close_process_group()
