"""Reading a robustness config: YAML files, mappings and command-line flags into a :class:`ReportConfig`.

jsonargparse does the reading, merging and type checks (:func:`config_parser`); the schema walk
here (:func:`check_keys`, :func:`check_dotted_key`) runs first so that an unknown key or a bad value
is named by its whole dotted path, ``models.EDSR.weigths``, also inside the ``models`` mapping
where jsonargparse's own message loses the entry's name.
"""

from __future__ import annotations

import copy
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from lit_sr.errors import ConfigError
from lit_sr.jobs.evaluate.config import ReportConfig


def check_keys(value: Any, hint: Any = ReportConfig, where: str = "") -> None:
    """Raise :class:`ConfigError` naming the first key of ``value`` the schema ``hint`` rejects, by its dotted path.

    Walks mappings along the dataclasses of the schema (and their ``dict[str, ...]`` fields): an
    unknown key is named ``models.EDSR.weigths``, and each value given for a field is checked
    against the field's type by jsonargparse (``models.EDSR.strict: Expected a bool``). jsonargparse
    checks the same when it parses, but inside a ``dict`` of dataclasses its message loses the
    entry's name. Cross-field checks are :class:`ReportConfig`'s.
    """
    hint = _schema_type(hint, value)
    if is_dataclass(hint) and isinstance(value, Mapping):
        hints = typing.get_type_hints(hint)
        names = [f.name for f in fields(hint) if f.init]
        for key, sub in value.items():
            if key not in names:
                raise ConfigError(f"{where}{key}: unknown key; expected some of {names}")
            field_hint = _schema_type(hints[key], sub)
            if is_dataclass(field_hint) or typing.get_origin(field_hint) in (dict, Mapping):
                check_keys(sub, field_hint, f"{where}{key}.")
            else:
                _check_value(sub, hints[key], f"{where}{key}")
    elif typing.get_origin(hint) in (dict, Mapping) and isinstance(value, Mapping):
        for key, sub in value.items():
            check_keys(sub, typing.get_args(hint)[1], f"{where}{key}.")


def _check_value(value: Any, hint: Any, where: str) -> None:
    from jsonargparse import ArgumentError

    try:
        _value_parser(hint).parse_object({"value": value})
    except ArgumentError as exc:
        raise ConfigError(f"{where}: {str(exc).split(chr(10), 1)[-1].strip()}") from None


@functools.cache
def _value_parser(hint: Any):
    """A one-argument jsonargparse parser that checks a value against ``hint`` (cached per type)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_argument("--value", type=hint, required=True)
    return parser


def check_dotted_key(key: str, hint: Any = ReportConfig) -> Any:
    """Raise :class:`ConfigError` when a dotted command-line key (``models.EDSR.weigths``) is not in the schema.

    Returns the type of the value the key sets (``None`` for ``--<key>.help`` or a free-form part
    such as an architecture's keyword arguments).
    """
    parts = key.split(".")
    inside_entry = False
    for i, part in enumerate(parts):
        hint = _schema_type(hint, {})
        if is_dataclass(hint):
            if part == "help" and i == len(parts) - 1:
                return None
            hints = typing.get_type_hints(hint)
            names = [f.name for f in fields(hint) if f.init]
            if part not in names:
                above = ".".join(parts[:i])
                raise ConfigError(f"--{'.'.join(parts[: i + 1])}: unknown key; expected one of {names}"
                                  + (f" after --{above}" if above else ""))
            hint = hints[part]
        elif typing.get_origin(hint) in (dict, Mapping):
            # jsonargparse sets one entry of a dict, and one field of an entry that is a dataclass.
            # Deeper (a key inside a free-form entry, or inside a dict field of a dataclass entry) it
            # would replace the whole mapping with that one key, or fail: ask for the whole mapping.
            hint = typing.get_args(hint)[1]
            whole = ".".join(parts[:i] if inside_entry else parts[: i + 1])
            if inside_entry or (i + 1 < len(parts) and not is_dataclass(_schema_type(hint, {}))):
                example = parts[len(whole.split("."))]
                raise ConfigError(f"--{key}: give the whole mapping instead, e.g. --{whole} '{{{example}: ...}}'")
            inside_entry = True
        else:
            return None
    return None if hint is Any else hint


def _schema_type(hint: Any, value: Any) -> Any:
    """The member of a union that a mapping ``value`` fills: its dataclass or dict type, else ``hint``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if isinstance(value, Mapping):
            for member in members:
                if is_dataclass(member) or typing.get_origin(member) in (dict, Mapping):
                    return member
    return hint


def _config_file_action():
    from jsonargparse import ActionConfigFile

    class ReportConfigFile(ActionConfigFile):
        """``--config FILE``: the YAML's keys are checked with their dotted names (:func:`check_keys`) first."""

        def __call__(self, parser, cfg, values, option_string=None):
            if Path(values).is_file():
                _check_file_keys(Path(values))
            elif not str(values).lstrip().startswith("{"):  # jsonargparse also takes an inline YAML mapping
                raise FileNotFoundError(f"robustness config not found: {values}")
            super().__call__(parser, cfg, values, option_string)

    return ReportConfigFile


def _check_file_keys(path: Path) -> None:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    try:
        check_keys(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_parser(prog: str | None = None, description: str | None = None):
    """The jsonargparse parser of :class:`ReportConfig`: ``--config FILE`` (repeatable) and one flag per key.

    Nested keys are dotted: ``--models.EDSR.weights PATH``, ``--transfer.eps 4/255``,
    ``--attacks.ifgsm '{steps: 5}'`` (a dict entry given on the command line replaces that entry).
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, env_prefix=None,
                            default_env=False)
    parser.add_argument("--config", action=_config_file_action(),
                        help="YAML robustness config (configs/robustness_*.yaml); later flags override it")
    parser.add_class_arguments(ReportConfig, fail_untyped=True)
    return parser


def config_from_namespace(parser, namespace, source: str) -> ReportConfig:
    """Build the validated :class:`ReportConfig` of a parsed namespace (errors prefixed with ``source``)."""
    names = [f.name for f in fields(ReportConfig) if f.init]
    raw = {k: v for k, v in namespace.clone().as_dict().items() if k in names}
    init = parser.instantiate(namespace)
    try:
        cfg = ReportConfig(**{k: init[k] for k in names})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    cfg.raw = json.loads(json.dumps(raw, default=str))
    cfg.source = source
    return cfg


def parse_args(parser, argv: Sequence[str]):
    """``parser.parse_args(argv)`` with dotted flags checked first and jsonargparse's errors as :class:`ConfigError`.

    A dotted flag (``--models.EDSR.weights PATH``) is checked against the schema, its value against
    the key's type, so that an error names the whole key (:func:`check_dotted_key`).
    """
    from jsonargparse import ArgumentError

    for i, arg in enumerate(argv):
        key, equals, value = arg[2:].partition("=")
        if not arg.startswith("--") or "." not in key:
            continue
        hint = check_dotted_key(key)
        if not equals and i + 1 < len(argv):
            value = argv[i + 1]
        if hint is not None and (equals or i + 1 < len(argv)):
            try:
                _value_parser(hint).parse_args(["--value", value])
            except ArgumentError as exc:
                raise ConfigError(f"--{key}: {str(exc).split(chr(10), 1)[-1].strip()}") from None
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as exc:
        raise ConfigError(str(exc)) from None


def parse_config(raw: Mapping, source: str = "<dict>") -> ReportConfig:
    """Validate a robustness config (a mapping, e.g. loaded YAML) and return a :class:`ReportConfig`.

    Every key is checked before anything runs: an unknown or ill-typed key raises
    :class:`ConfigError` naming it (``models.EDSR.wieghts``, ``attacks.ifgsm.stepz``, ...). Paths
    are checked when the report starts (:func:`check_paths`), so a config can be parsed anywhere.
    """
    from jsonargparse import ArgumentError

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        check_keys(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    parser = config_parser()
    try:
        namespace = parser.parse_object(copy.deepcopy(dict(raw)))  # jsonargparse converts it in place
    except ArgumentError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config_from_namespace(parser, namespace, source)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ReportConfig:
    """Read and validate a YAML robustness config, then apply command-line style ``overrides``.

    ``overrides`` are flags as :func:`config_parser` takes them, e.g.
    ``["--models.EDSR-quickstart.weights", "runs/quickstart/quickstart/weights.pth", "--max_images", "2"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robustness config not found: {path}")
    parser = config_parser()
    try:
        namespace = parse_args(parser, ["--config", str(path), *overrides])
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return config_from_namespace(parser, namespace, str(path))
