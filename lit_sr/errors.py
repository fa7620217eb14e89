"""The errors lit-sr raises for bad input, one class per kind of failure a user can fix.

:class:`ConfigError` is the one error of a configuration: an attacks block, a report, a study or a
defense report whose key or value is wrong. Its message names the file (where there is one), the
dotted key and what was expected, so every job prints it and exits with status 2.
:class:`RunError` is the one subclass: the config is well-formed but names a training run folder
that cannot be read (missing ``config.yaml``/``weights.pth``, a model or data section that does not
build), which a user fixes by finishing or pointing at another run rather than by editing a key.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config (a job's YAML, a command-line override or a callback's settings) is invalid; the message names the key."""


class RunError(ConfigError):
    """A run folder named by a config cannot be read (a missing file, a config without a model or data section)."""
