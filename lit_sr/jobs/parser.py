"""One config dialect for every job: jsonargparse on a dataclass schema, as LightningCLI does for ``fit``.

A job declares its config as a dataclass (range and cross-field checks in ``__post_init__``) and
builds its parser with :func:`job_parser`. Every job then takes the same command line::

    lit-sr <job> --config a.yaml [--config b.yaml ...] [--key value] [--a.b.c value] [--print_config] [--help]

``--config`` is repeatable (later files and flags win), every key of the schema is a flag, nested
keys dotted, also into a mapping (``--models.EDSR.weights w.pth``, ``--attacks.ifgsm.steps 20``:
the other keys of that entry stay). ``--print_config`` prints the merged config as YAML.

An unknown key or a bad value fails with one :class:`ConfigError` that names the whole dotted key
(``models.EDSR.weigths: unknown key``), exit code 2. jsonargparse checks every type, but inside a
``dict`` of dataclasses its message loses the entry's name, so the keys of each file and each dotted
flag are first checked against the schema here (:func:`check_keys`, :func:`check_flag`), each value
by jsonargparse against its field's type.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, Namespace

from lit_sr.errors import ConfigError

__all__ = ["ConfigError", "add_flag", "check_keys", "config_dict", "job_parser", "load_job_config", "parse_job", "parse_mapping",
           "read_yaml", "run_job"]


# --------------------------------------------------------------------------- the schema walk


def _structured(hint: Any) -> Any:
    """The dataclass or ``dict`` type that ``hint`` (or a member of its union) is, else ``None``."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return next((m for m in members if is_dataclass(m) or _is_mapping(m)), None)


def _fields(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in fields(schema) if f.init}


def _is_mapping(hint: Any) -> bool:
    return hint is dict or typing.get_origin(hint) in (dict, Mapping)


def _list_item(hint: Any) -> Any:
    """The item type of a ``list`` of dataclasses (in a union too), else ``None``."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for member in members:
        if typing.get_origin(member) is list and is_dataclass(_structured(typing.get_args(member)[0])):
            return typing.get_args(member)[0]
    return None


def _entry(hint: Any) -> Any:
    return typing.get_args(hint)[1] if typing.get_args(hint) else Any


def check_keys(value: Any, hint: Any, where: str = "", extra: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigError` naming the first key of ``value`` the schema ``hint`` rejects, by its dotted path.

    Walks mappings along the dataclasses of the schema and their ``dict[str, ...]`` fields; each
    leaf value is checked against its field's type by jsonargparse (``models.EDSR.strict: Expected
    a bool``). ``extra`` are top-level keys the parser takes beside the schema's fields.
    """
    structured = _structured(hint) if isinstance(value, Mapping) else None
    items = _list_item(hint) if isinstance(value, list) else None
    if items is not None:
        for i, item in enumerate(value):
            check_keys(item, items, f"{where.rstrip('.')}[{i}].")
    elif structured is None:
        _check_value(value, hint, where.rstrip("."))
    elif is_dataclass(structured):
        known = _fields(structured)
        for key, sub in value.items():
            if key in known:
                check_keys(sub, known[key], f"{where}{key}.")
            elif key not in extra:
                raise ConfigError(f"{where}{key}: unknown key; expected some of {list(known)}")
    else:
        for key, sub in value.items():
            check_keys(sub, _entry(structured), f"{where}{key}.")


def _check_value(value: Any, hint: Any, where: str) -> None:
    if hint is Any or (isinstance(hint, type) and hint.__module__ != "builtins" and not is_dataclass(hint)):
        return  # free-form, or a class given by class_path: jsonargparse checks it when it parses
    if value is None:
        if type(None) not in typing.get_args(hint):
            raise ConfigError(f"{where}: expected a value of type {typing.get_args(hint) or hint}, got null")
        return
    try:
        _value_parser(hint).parse_object({"value": value})
    except ArgumentError as exc:
        raise ConfigError(f"{where}: {_value_message(exc)}") from None


def _value_message(exc: Exception) -> str:
    return dotted_message(str(exc)).removeprefix("value: ")


@functools.cache
def _value_parser(hint: Any) -> ArgumentParser:
    """A one-argument parser that checks a value against ``hint`` (cached per type)."""
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_argument("--value", type=hint, required=True)
    return parser


def _flag_target(parts: list[str], schema: type) -> tuple[int, Any]:
    """How many leading ``parts`` name a position jsonargparse sets, and its type; raises for an unknown key.

    A position is a field of a dataclass, or an entry of a ``dict`` of dataclasses; below a
    free-form mapping (``attacks``, ``arch_kwargs``) the rest of the key is a path inside it.
    """
    hint: Any = schema
    for i, part in enumerate(parts):
        structured = _structured(hint)
        if is_dataclass(structured):
            known = _fields(structured)
            if part not in known:
                if part == "help" and i == len(parts) - 1:
                    return len(parts), None
                above = ".".join(parts[:i])
                raise ConfigError(f"--{'.'.join(parts[: i + 1])}: unknown key; expected one of {list(known)}"
                                  + (f" after --{above}" if above else ""))
            hint = known[part]
        elif structured is not None and is_dataclass(_structured(_entry(structured))):
            hint = _entry(structured)
        else:
            return i, hint
    return len(parts), hint


def check_flag(key: str, value: str | None, schema: type) -> tuple[str, list[str]] | None:
    """Check a dotted flag (``models.EDSR.weights``) and its value against the schema.

    Returns ``None`` when jsonargparse sets the key itself, or ``(position, path)`` when the flag
    sets ``path`` inside the free-form mapping at ``position`` (jsonargparse would replace that
    mapping with the one key: :func:`parse_job` merges it instead).
    """
    parts = key.split(".")
    depth, hint = _flag_target(parts, schema)
    if depth < len(parts):
        if hint is not Any and _structured(hint) is None:
            return None  # --x.help, or a class given by class_path (its init_args are jsonargparse's)
        return ".".join(parts[:depth]), parts[depth:]
    if value is not None and hint is not None and _structured(hint) is None:  # a mapping may set part of an entry
        try:
            _value_parser(hint).parse_args(["--value", value])
        except ArgumentError as exc:
            raise ConfigError(f"--{key}: {_value_message(exc)}") from None
    return None


# --------------------------------------------------------------------------- the parser


class _ConfigFile(ActionConfigFile):
    """``--config FILE`` (repeatable): the file's keys are checked with their dotted names first."""

    def __call__(self, parser, cfg, values, option_string=None):
        path = Path(str(values))
        if path.is_file():
            raw = parser.read_config(path)
            try:
                check_keys(raw, parser.schema, extra=parser.run_flags)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            parser.config_files.append(str(path))
            if parser.read_config is not read_yaml:  # the job's reader changed the content: hand it over
                values = json.dumps(raw)
        elif not str(values).lstrip().startswith("{"):  # jsonargparse also takes an inline YAML mapping
            raise ConfigError(f"config file not found: {values}")
        try:
            super().__call__(parser, cfg, values, option_string)
        except ArgumentError as exc:  # what jsonargparse checks beyond the walk (a class_path's init_args)
            where = path if path.is_file() else "<inline config>"
            raise ConfigError(f"{where}: {dotted_message(str(exc))}") from None


def read_yaml(path: Path) -> Mapping:
    """A config file's YAML mapping; a file that is not YAML, or not a mapping, is a named :class:`ConfigError`."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level, got {type(raw).__name__}")
    return raw


def job_parser(schema: type, prog: str, description: str, config_help: str = "a YAML config file",
               read: Callable[[Path], Mapping] | None = None) -> ArgumentParser:
    """The parser of a job: ``--config`` (repeatable), ``--print_config`` and one flag per key of ``schema``.

    ``read`` reads a config file into a mapping (default: the YAML as it is; the study resolves
    its ``extends:`` there). Add the job's run flags (``--no-progress``, ...) with :func:`add_flag`.
    """
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, env_prefix=None,
                            default_env=False)
    parser.add_argument("--config", action=_ConfigFile, help=f"{config_help}; repeatable, later files and flags win")
    parser.add_class_arguments(schema, fail_untyped=True)
    parser.schema = schema
    parser.read_config = read or read_yaml
    parser.run_flags = []
    parser.config_files = []
    return parser


def add_flag(parser: ArgumentParser, flag: str, help: str, **kwargs: Any) -> None:
    """A run flag of the job beside its schema (``--no-progress``, ``--dry-run``): a switch unless ``kwargs`` say
    otherwise. It shows in ``--print_config`` (underscored), so a printed config reads back."""
    kwargs = kwargs or {"action": "store_true"}
    parser.add_argument(flag, help=help, **kwargs)
    parser.run_flags.append(flag.lstrip("-").replace("-", "_"))


def _deep_set(value: Any, path: Sequence[str], leaf: Any) -> dict:
    out = dict(value) if isinstance(value, Mapping) else {}
    out[path[0]] = leaf if len(path) == 1 else _deep_set(out.get(path[0]), path[1:], leaf)
    return out


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.as_dict() if isinstance(tree, Namespace) else tree
        tree = tree.get(part) if isinstance(tree, Mapping) else None
    return tree.as_dict() if isinstance(tree, Namespace) else tree


def _split_flags(parser: ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str], Any]]]:
    """Check every dotted flag; take out those that set a key inside a free-form mapping (merged later)."""
    kept: list[str] = []
    deep: list[tuple[str, list[str], Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, equals, value = arg[2:].partition("=")
        has_value = bool(equals) or (i + 1 < len(argv) and not argv[i + 1].startswith("--"))
        if not equals and has_value:
            value = argv[i + 1]
        target = check_flag(key, value if has_value else None, parser.schema) \
            if arg.startswith("--") and "." in key else None
        if target is None:
            kept.append(arg)
        else:
            if not has_value:
                raise ConfigError(f"--{key}: expected a value")
            deep.append((*target, yaml.safe_load(value)))
            i += 0 if equals else 1
        i += 1
    return kept, deep


def _jsonargparse(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    try:
        return parser.parse_args(list(argv))
    except ArgumentError as exc:
        raise ConfigError(dotted_message(str(exc))) from None


def dotted_message(message: str) -> str:
    """jsonargparse's nested error (``Parser key "data": ... Option 'max_sid' is not accepted``) as one line
    that starts with the dotted key (``data.init_args.max_sid: unknown key``)."""
    keys: list[str] = []
    rest: list[str] = []
    for line in message.strip().splitlines():
        text = line.strip()
        if key := re.fullmatch(r'Parser key "(.+)":', text):
            keys.append(key.group(1))
        elif text.startswith("Problem with given class_path"):
            keys.append("init_args")
        elif unknown := re.match(r"Option '(.+)' is not accepted", text):
            return f"{'.'.join([*keys, unknown.group(1)])}: unknown key"
        elif unknown := re.match(r"Group '(.+)' does not accept option '(.+)'", text):
            return f"{'.'.join([*keys, *unknown.groups()])}: unknown key"
        elif text:
            rest.append(text)
    return f"{'.'.join(keys)}: {' '.join(rest)}" if keys else " ".join(rest)


def _source(parser: ArgumentParser) -> str:
    return ", ".join(dict.fromkeys(parser.config_files)) or "<command line>"


def _build(parser: ArgumentParser, namespace: Namespace, source: str):
    """The schema's instance; its ``raw`` and ``source`` attributes, where it has them, say what it was built from."""
    init = parser.instantiate(namespace)
    try:
        cfg = parser.schema(**{name: init[name] for name in _fields(parser.schema)})
    except ConfigError as exc:
        named = str(exc).startswith(source) or source == "<command line>"
        raise ConfigError(str(exc) if named else f"{source}: {exc}") from None
    if hasattr(cfg, "raw"):
        cfg.raw = config_dict(parser, namespace)
    if hasattr(cfg, "source"):
        cfg.source = source
    return cfg


def parse_job(parser: ArgumentParser, argv: Sequence[str]) -> tuple[Any, Namespace]:
    """Parse ``argv`` into the job's config (an instance of its schema, validated) and the namespace.

    ``--help`` and ``--print_config`` exit (``SystemExit(0)``) as in LightningCLI. Every error is
    a :class:`ConfigError` naming the file (for a key in one) and the dotted key.
    """
    parser.config_files.clear()
    argv, deep = _split_flags(parser, list(argv))
    namespace = _jsonargparse(parser, [a for a in argv if not a.startswith("--print_config")] if deep else argv)
    if deep:
        # set each key inside its mapping as parsed so far, then hand jsonargparse the merged mapping
        merged: dict[str, Any] = {}
        tree = namespace.clone().as_dict()
        for position, path, value in deep:
            merged[position] = _deep_set(merged.get(position, _lookup(tree, position)), path, value)
        for position, value in merged.items():
            check_keys(value, _flag_target(position.split("."), parser.schema)[1], f"{position}.")
            argv += [f"--{position}", json.dumps(value)]
        namespace = _jsonargparse(parser, argv)
    return _build(parser, namespace, _source(parser)), namespace


def load_job_config(parser: ArgumentParser, path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """The config of the file ``path`` with command-line style ``overrides`` (``["--max_images", "2"]``) applied."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return parse_job(parser, ["--config", str(path), *overrides])[0]
    except ConfigError as exc:
        raise ConfigError(exc.args[0] if str(exc).startswith(str(path)) else f"{path}: {exc}") from None


def parse_mapping(parser: ArgumentParser, raw: Any, source: str = "<dict>") -> Any:
    """Validate a config given as a mapping (a loaded YAML file) as :func:`parse_job` validates a file."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        check_keys(raw, parser.schema, extra=parser.run_flags)
        namespace = parser.parse_object(copy.deepcopy(dict(raw)))  # jsonargparse converts it in place
    except (ConfigError, ArgumentError) as exc:
        raise ConfigError(f"{source}: {dotted_message(str(exc))}") from None
    return _build(parser, namespace, source)


def config_dict(parser: ArgumentParser, namespace: Namespace) -> dict[str, Any]:
    """The schema's keys of a parsed namespace as plain JSON data (what a job records beside its results)."""
    names = _fields(parser.schema)
    return json.loads(json.dumps({k: v for k, v in namespace.clone().as_dict().items() if k in names}, default=str))


def run_job(parser: ArgumentParser, argv: Sequence[str] | None, job: Callable[[Any, Namespace], int | None],
            errors: tuple[type[Exception], ...] = ()) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` when ``None``) and run ``job(config, namespace)``; return the exit code.

    A bad config, and any of the job's ``errors`` (a missing file, a failed run folder), print
    ``error: <message>`` on stderr and return 2; ``--help`` and ``--print_config`` exit with 0
    (``SystemExit``, as LightningCLI's subcommands do).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, namespace = parse_job(parser, argv)
        return int(job(cfg, namespace) or 0)
    except (ConfigError, FileNotFoundError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
