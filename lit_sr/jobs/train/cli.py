"""LightningCLI for lit-sr: explicit command-line settings win over a checkpoint's hyper-parameters.

LightningCLI 2.6, given ``--ckpt_path``, parses the checkpoint's saved hyper-parameters *over* the
parsed configuration, so ``--model.init_args.lr 1e-4`` (or any other model argument typed on the
command line) is silently replaced by the checkpoint's value. :class:`SRLightningCLI` re-applies the
model arguments given explicitly on the command line after that step and warns that it did; values
that come from ``--config`` files still yield to the checkpoint (it describes the network whose
weights it holds). Inference-time settings are not model hyper-parameters at all: they belong to
``callbacks.prediction_writer.PredictionWriter`` (:class:`TrainCLI` adds it).

``lit-sr {fit,validate,test,predict} --config configs/train/<recipe>.yaml`` (``python train.py ...`` is an
alias): any LightningModule (``lit_sr.modules.*``) and LightningDataModule (``datamodules.*``) can be
chosen by ``class_path`` in the YAML file or on the command line; ``predict`` writes PNG files through
the writer, set with ``--prediction.output_dir``, ``--prediction.tile`` and ``--prediction.tile_overlap``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.prediction_writer import PredictionWriter
from lit_sr.runtime import close_process_group


def explicit_model_keys(argv: Iterable[str]) -> list[str]:
    """The ``model.…`` keys set by ``--model.<key> value`` or ``--model.<key>=value`` tokens, in order."""
    keys = []
    for token in argv:
        if not token.startswith("--model."):
            continue
        key = token[2:].split("=", 1)[0]
        if key not in keys:
            keys.append(key)
    return keys


def _resolve(namespace: Namespace, key: str) -> str | None:
    """``key`` as stored in ``namespace`` (``model.lr`` is ``model.init_args.lr`` in subclass mode)."""
    candidates = [key]
    if not key.startswith(("model.init_args.", "model.class_path", "model.dict_kwargs")):
        candidates.append("model.init_args." + key[len("model."):])
    for candidate in candidates:
        try:
            namespace[candidate]
        except KeyError:
            continue
        return candidate
    return None


class SRLightningCLI(LightningCLI):
    """:class:`LightningCLI` whose explicit ``--model.*`` arguments survive ``--ckpt_path``.

    Also re-raises the error of a model that cannot be built (for instance a missing VGG weights
    file) as itself, message first, instead of inside the parser's "Does not validate against any
    of the Union subtypes" listing (see :func:`model_construction_error`).
    """

    def parse_arguments(self, parser, args) -> None:
        argv = [] if isinstance(args, (dict, Namespace)) else list(sys.argv[1:] if args is None else args)
        self._explicit_model_keys = explicit_model_keys(argv)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand or not self._explicit_model_keys:
            super()._parse_ckpt_path()
            return
        given = copy.deepcopy(self.config[subcommand])
        super()._parse_ckpt_path()
        merged = self.config[subcommand]
        for key in self._explicit_model_keys:
            stored = _resolve(given, key)
            if stored is None:
                continue
            value, from_ckpt = given[stored], (merged[stored] if _resolve(merged, stored) else None)
            if value != from_ckpt:
                merged[stored] = value
                rank_zero_warn(f"--{key} {value!r} given on the command line overrides the value "
                               f"{from_ckpt!r} saved in {given.get('ckpt_path')}", category=UserWarning)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = model_construction_error(error)
            if cause is None:
                raise
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            message = (f"{cause}\n(raised while building the configured model or data module; "
                       f"the parser reported it as: {first_line!r})")
            try:
                surfaced = type(cause)(message)
            except Exception:  # an exception class with another constructor: show it unchanged
                raise cause from error
            raise surfaced from cause


UNION_ERROR = "Does not validate against any of the Union subtypes"


def model_construction_error(error: BaseException) -> BaseException | None:
    """The exception behind jsonargparse's union-subtype error, or ``None`` for any other error.

    jsonargparse wraps an exception raised while building a ``class_path`` (a missing VGG file: a
    ``FileNotFoundError`` naming it) in a long error about union subtypes, whose actionable part
    is at the end. The deepest exception of its cause/context chain is the one to show first.
    """
    if UNION_ERROR not in str(error):
        return None
    seen = {id(error)}
    current, found = error.__cause__ or error.__context__, None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if UNION_ERROR not in str(current):
            found = current
        current = current.__cause__ or current.__context__
    return found


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


def train_cli(args: list[str] | None = None, run: bool = True, prog: str | None = None) -> TrainCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (tests use it)."""
    return TrainCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": prog} if prog else None,
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> int:
    """``lit-sr fit|validate|test|predict ...``: run the subcommand, then leave the process group (DDP)."""
    train_cli(argv, prog="lit-sr")
    close_process_group()
    return 0
