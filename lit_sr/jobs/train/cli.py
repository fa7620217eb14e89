"""LightningCLI for lit-sr: explicit command-line settings win over a checkpoint's hyper-parameters.

LightningCLI 2.6, given ``--ckpt_path``, parses the checkpoint's saved hyper-parameters *over* the
parsed configuration, so ``--model.init_args.lr 1e-4`` (or any other model argument typed on the
command line) is silently replaced by the checkpoint's value. :class:`SRLightningCLI` re-applies the
model arguments given explicitly on the command line after that step and warns that it did; values
that come from ``--config`` files still yield to the checkpoint (it describes the network whose
weights it holds). Inference-time settings are not model hyper-parameters at all: they belong to
``lit_sr.training.prediction_writer.PredictionWriter`` (:class:`TrainCLI` adds it).

``lit-sr {fit,validate,test,predict} --config configs/train/<recipe>.yaml`` (``python train.py ...`` is an
alias): any LightningModule (``lit_sr.modules.*``) and LightningDataModule (``datamodules.*``) can be
chosen by ``class_path`` in the YAML file or on the command line; ``predict`` writes PNG files through
the writer, set with ``--prediction.output_dir``, ``--prediction.tile`` and ``--prediction.tile_overlap``.
"""

from __future__ import annotations

import copy
import json
import signal
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import lightning as L
import torch
from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_sr.checkpoint_io import UnsafeCheckpointSettingError, install_safe_checkpoint_io
from lit_sr.io import is_remote_path, load_checkpoint
from lit_sr.run_folder import RunFolderClashError, clash_message, first_clash
from lit_sr.runtime import close_process_group, configure_threads, trainer_precision
from lit_sr.training.batch_hooks import skip_noop_batch_hooks
from lit_sr.training.no_profiler import use_no_profiler
from lit_sr.training.prediction_writer import PredictionWriter
from lit_sr.training.progress_bar import TimedProgressBar
from lit_sr.training.stop_on_nonfinite import StopOnNonFiniteLoss
from lit_sr.training.stop_on_signal import StopOnSigterm
from lit_sr.validation import HasScale, check_same_scale


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


class RunFolderSaveConfig(SaveConfigCallback):
    """Lightning's config saver that first checks the run folder holds none of the run's artefacts.

    A run writes only into its own folder and never over a file it did not create (docs/trust.md):
    before ``config.yaml`` is written, every file this run would write there (for ``fit`` also the
    weights exports, summaries and checkpoints) is looked for, and the first one found is refused
    with :class:`lit_sr.run_folder.RunFolderClashError` naming it. Nothing has been written then.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # a collective call under DDP: every rank makes it
        clash = first_clash(log_dir, stage, self.config_filename) if trainer.is_global_zero else None
        clash = trainer.strategy.broadcast(None if clash is None else str(clash))
        if clash is not None:
            raise RunFolderClashError(clash_message(Path(clash), log_dir))
        return super().setup(trainer, pl_module, stage)


class SRLightningCLI(LightningCLI):
    """:class:`LightningCLI` whose explicit ``--model.*`` arguments survive ``--ckpt_path``.

    Also re-raises the error of a model that cannot be built (for instance a missing VGG weights
    file) as itself, message first, instead of inside the parser's "Does not validate against any
    of the Union subtypes" listing (see :func:`model_construction_error`).
    """

    def __init__(self, *args, **kwargs) -> None:
        # a run never writes over a file it did not create (RunFolderSaveConfig refuses first)
        kwargs.setdefault("save_config_callback", RunFolderSaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": False})
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs):
        # argparse takes an unambiguous prefix for an option by default, so the typo
        # --trainer.max_epoch silently set max_epochs: only whole option names are accepted
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        argv = [] if isinstance(args, (dict, Namespace)) else list(sys.argv[1:] if args is None else args)
        self._explicit_model_keys = explicit_model_keys(argv)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand or not self._explicit_model_keys:
            self._apply_checkpoint_hparams()
            return
        given = copy.deepcopy(self.config[subcommand])
        self._apply_checkpoint_hparams()
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

    def _apply_checkpoint_hparams(self) -> None:
        """LightningCLI's own step, reading the checkpoint through :func:`lit_sr.io.load_checkpoint`.

        Lightning reads only a local file here, with a raw ``torch.load`` whose error advises
        ``weights_only=False``; a URL or any fsspec path is skipped and later unpickled by the
        Trainer with ``weights_only=False``. Here every path is read safely (the Trainer's read goes
        through :class:`lit_sr.checkpoint_io.SafeCheckpointIO`), and errors name the file.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if self.config[subcommand].get("weights_only") is False:
            raise UnsafeCheckpointSettingError(
                f"refused: --weights_only false would unpickle {ckpt_path or 'the checkpoint'} with code "
                "execution allowed; lit-sr reads checkpoints with weights_only=True only")
        if not ckpt_path or not (is_remote_path(ckpt_path) or Path(str(ckpt_path)).is_file()):
            return  # none, or Lightning's "last"/"best"/"hpc" (resolved, then read safely, by the Trainer)
        hparams = load_checkpoint(ckpt_path).get("hyper_parameters", {})
        hparams = dict(hparams) if isinstance(hparams, dict) else {}
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing of the hyper-parameters saved in {ckpt_path} failed!\n")
            raise

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        install_safe_checkpoint_io(trainer)
        return trainer

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            kwargs["weights_only"] = True  # refused above when the user set it to false
        return kwargs

    def before_instantiate_classes(self) -> None:
        """Threads first (:func:`lit_sr.runtime.configure_threads`: ``--threads``, else ``OMP_NUM_THREADS``,
        else the cores divided among the node's processes); bf16 precision on a CPU without native bf16
        runs float32 instead (:func:`lit_sr.runtime.trainer_precision`)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        configure_threads(config.get("threads"))
        trainer = config.get("trainer")
        if trainer is not None and "precision" in trainer:
            trainer["precision"] = trainer_precision(trainer["precision"], trainer.get("accelerator", "auto"))

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
        if isinstance(self.model, HasScale):  # before the data module's setup (poison generation) runs
            check_same_scale(self.model.scale, self.datamodule, type(self.model).__name__)
        self._record_data_hparams()

    def _record_data_hparams(self) -> None:
        """The data module's configuration as its hyper-parameters, under one key ``data``.

        lit-sr's data modules take objects (a base data module, a trigger, a substitute spec), so they
        do not call ``save_hyperparameters`` themselves: the hyper-parameters are the configuration as
        parsed (class paths and init args, plain values), which Lightning then logs beside the
        model's (TensorBoard's HPARAMS tab shows ``data/init_args/patch_size`` ...) and stores in the
        checkpoint, still readable with ``weights_only=True``. A data module that saved its own
        hyper-parameters keeps them.
        """
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if self.datamodule is None or self.datamodule.hparams or config.get("data") is None:
            return
        self.datamodule.save_hyperparameters({"data": plain_config(config["data"])})


def plain_config(value: Namespace | Mapping) -> dict:
    """A parsed configuration as plain JSON data (dicts, lists, str, numbers, bool, None), without
    jsonargparse's ``__path__`` entries: what a checkpoint may hold and still load with
    ``weights_only=True``. Anything else (a ``Path``) is written as its ``str``, as
    :func:`lit_sr.jobs.parser.config_dict` does for a job's record."""
    tree = value.as_dict() if isinstance(value, Namespace) else value
    return json.loads(json.dumps(tree, default=str),
                      object_pairs_hook=lambda pairs: {k: v for k, v in pairs if not k.startswith("__")})


UNION_ERROR = "Does not validate against any of the Union subtypes"


def model_construction_error(error: BaseException) -> BaseException | None:
    """The exception behind jsonargparse's union-subtype error, or ``None`` for any other error.

    jsonargparse wraps an exception raised while building a ``class_path`` (a missing VGG file: a
    ``FileNotFoundError`` naming it; ``trigger.steps must be in [1, inf]; got -5``) in a long error
    about union subtypes that lists what every member of the union said, and chains only the
    *first* member's error. For ``trigger: Trigger | AdversarialTriggerSpec`` that first error is
    the irrelevant "AdversarialTriggerSpec does not correspond to a subclass of Trigger". So: the
    deepest exception of the cause/context chain when it is a real construction error, else the
    first listed error that is not a type mismatch (as a ``ValueError``, the type jsonargparse
    reports it with).
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
    if found is not None and not _is_type_mismatch(str(found)):
        return found
    listed = [m for m in union_errors(str(error)) if not _is_type_mismatch(m)]
    return ValueError(listed[0]) if listed else found


# what jsonargparse says of a union member the value is not an instance of: not the user's error
TYPE_MISMATCHES = ("does not correspond to a subclass of", "does not implement protocol", "Expected a <class",
                   "is not a subclass of")


def _is_type_mismatch(message: str) -> bool:
    return any(m in message for m in TYPE_MISMATCHES)


def union_errors(text: str) -> list[str]:
    """The errors a union-subtype message lists, nested unions flattened, in order."""
    lines = text.splitlines()
    if "Errors:" not in (line.strip() for line in lines):
        return [text.strip()] if text.strip() else []
    start = [line.strip() for line in lines].index("Errors:") + 1
    entries: list[list[str]] = []
    indent = None
    for line in lines[start:]:
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if indent is None and stripped.startswith("- "):
            indent = depth
        if indent is None or (depth < indent and stripped):
            break  # "Given value type: ...": the list is over
        if depth == indent and stripped.startswith("- "):
            entries.append([stripped[2:]])
        elif entries:
            entries[-1].append(line[indent + 2:])
    out: list[str] = []
    for entry in entries:
        out += union_errors("\n".join(entry)) if UNION_ERROR in entry[0] else ["\n".join(entry).strip()]
    return out


CPU_OVERRIDES = ("--trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto "
                 "--trainer.precision 32-true")


class NoGPUError(RuntimeError):
    """A GPU recipe started where no GPU is present (raised before anything is built)."""


def gpu_request(trainer: Mapping, cuda_available: bool) -> str | None:
    """What in a ``trainer`` config asks for a GPU that is not there (``None`` when nothing does, or
    ``accelerator: cpu`` was chosen): ``strategy: ddp`` would start gloo processes on the CPU, and
    ``bf16-mixed`` / ``16-mixed`` would run CPU autocast, both far slower than the recipe was sized for."""
    accelerator = str(trainer.get("accelerator") or "auto")
    if cuda_available or accelerator == "cpu":
        return None
    strategy = trainer.get("strategy")
    strategy = strategy if isinstance(strategy, str) else getattr(strategy, "class_path", None) or str(strategy)
    precision = str(trainer.get("precision") or "32-true")
    asks = []
    if accelerator in ("gpu", "cuda"):
        asks.append(f"accelerator={accelerator}")
    if "ddp" in strategy.lower():
        asks.append(f"strategy={strategy}")
    if precision.startswith(("bf16", "16")):
        asks.append(f"precision={precision}")
    return ", ".join(asks) or None


class TrainCLI(SRLightningCLI):
    """:class:`SRLightningCLI` with the prediction writer as a forced callback (``--prediction.*``).

    A run started from the command line (``lit-sr fit ...``) whose recipe asks for a GPU on a machine
    without one stops at once with :class:`NoGPUError`, saying what to pass to run it on the CPU.
    """

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()  # threads and the bf16 precision first
        subcommand = self.config.get("subcommand")
        if subcommand is None:  # built without running (tests, notebooks): nothing is started
            return
        asks = gpu_request(self.config[subcommand].get("trainer") or {}, torch.cuda.is_available())
        if asks:
            raise NoGPUError(
                f"no GPU is present, but this run's config asks for one ({asks}). To run it on the CPU anyway "
                f"(slow), pass {CPU_OVERRIDES}; for a run sized for a CPU use --config quickstart.")

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.add_argument("--threads", type=PositiveInt | None, default=None,
                            help="torch intra-op threads of this process (default: OMP_NUM_THREADS when set, else "
                                 "the cores this process may use divided among the node's processes; 1 is "
                                 "usually fastest on a machine shared with other jobs, see docs/performance.md)")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # The writer has the images on disk; keeping every SR tensor in memory too would only grow.
            parser.set_defaults(return_predictions=False)
        return parser

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        configured = (config.get("trainer") or {}).get("callbacks") or []
        # copied first: Lightning extends this very list with the callbacks it adds by default
        configured = list(configured) if isinstance(configured, list) else [configured]
        trainer = super().instantiate_trainer(**kwargs)
        use_timed_progress_bar(trainer, configured)
        trainer.callbacks.append(StopOnSigterm())  # Lightning's predict loop ignores SIGTERM otherwise
        trainer.callbacks.append(StopOnNonFiniteLoss())  # a diverged run fails with a message
        return trainer

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # Lightning dispatches every per-batch hook to every callback and the module, empty ones
        # included (a dozen Python calls each), and wraps each hook in its default profiler's
        # generator: both skipped where they do nothing (docs/performance.md)
        skip_noop_batch_hooks([*self.trainer.callbacks, self.model])
        use_no_profiler(self.trainer)  # unless a profiler was asked for


def use_timed_progress_bar(trainer: L.Trainer, configured: Iterable[L.Callback]) -> None:
    """Put :class:`lit_sr.training.progress_bar.TimedProgressBar` in place of the bar Lightning added by default.

    Lightning's default bar redraws after every training batch (about 1 CPU-ms a step,
    ``docs/performance.md``); a progress bar listed in the config's ``trainer.callbacks``
    (``configured``) is the user's choice and stays.
    """
    bar = trainer.progress_bar_callback
    if type(bar) is TQDMProgressBar and not any(c is bar for c in configured):
        trainer.callbacks[next(i for i, c in enumerate(trainer.callbacks) if c is bar)] = TimedProgressBar()


def train_cli(args: list[str] | None = None, run: bool = True, prog: str | None = None) -> TrainCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]`` (tests use it)."""
    return TrainCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"prog": prog} if prog else None,
        args=args,
        run=run,
    )


SIGTERM_EXIT = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


def main(argv: list[str] | None = None) -> int:
    """``lit-sr fit|validate|test|predict ...``: run the subcommand, then leave the process group (DDP).

    Returns 0, or :data:`SIGTERM_EXIT` (143) when a SIGTERM stopped the run: Lightning ends the
    loop with a ``SystemExit`` of code 0, which would tell a scheduler the run finished.
    """
    try:
        train_cli(argv, prog="lit-sr")
    except NoGPUError as error:
        print(f"lit-sr: error: {error}", file=sys.stderr)
        return 2
    except SIGTERMException:
        rank_zero_warn("stopped by SIGTERM before the end: no weights.pth was written; the latest state is in "
                       "the run's checkpoints/last.ckpt (when a LastCheckpoint callback is set): resume with "
                       "--ckpt_path <run>/checkpoints/last.ckpt", category=UserWarning)
        return SIGTERM_EXIT
    finally:
        close_process_group()
    return 0
