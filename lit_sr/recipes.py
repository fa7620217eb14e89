"""The built-in recipes: ``--config quickstart`` names a shipped config file as well as a path does.

The recipes are the YAML files of the repository's ``configs/<job>/`` folders. An installed wheel
carries them as package data in ``lit_sr/configs/<job>/`` (``setup.py`` maps the folder); a
checkout reads ``configs/`` beside ``lit_sr/``. A ``--config`` value is resolved as:

1. an existing file: itself (a path always wins over a recipe name);
2. a bare name (``quickstart``, ``quickstart.yaml``): ``<recipes>/<job>/<name>.yaml`` of the
   command's job (``fit`` reads ``train/``, ``evaluate`` reads ``evaluate/``, ...);
3. a repository path (``configs/train/quickstart.yaml``) that does not exist from the current folder
   (an installed package run outside a checkout): the same file among the recipes.

Anything else is left as it is, so the command's own "file not found" error names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lit_sr

#: the recipe folder of each ``lit-sr`` command
JOB_FOLDERS: dict[str, str] = {
    "fit": "train", "validate": "train", "test": "train", "predict": "train", "data": "train",
    "evaluate": "evaluate", "robust": "evaluate", "evaluate-refsr": "evaluate_refsr",
    "defend": "defend", "study": "study",
}
PREFIX = "configs/"


def recipes_root() -> Path:
    """The folder holding ``<job>/<recipe>.yaml``: the package data of a wheel, else the checkout's ``configs/``."""
    package = Path(lit_sr.__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train").is_dir():
            return candidate
    raise FileNotFoundError(f"no built-in recipes: neither {package / 'configs'} (an installed wheel) nor "
                            f"{package.parent / 'configs'} (a checkout) holds a train/ folder; reinstall lit-sr-security")


def recipe_names(job_folder: str) -> list[str]:
    """The recipe names of one job folder (``train``, ``evaluate``...), sorted."""
    folder = recipes_root() / job_folder
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_config(value: str, job_folder: str | None) -> str:
    """``value`` as a path to an existing config file when it names a built-in recipe (see the module doc)."""
    path = Path(value)
    if path.is_file():
        return value
    root = recipes_root()
    if value.startswith(PREFIX) and (root / value[len(PREFIX):]).is_file():
        return str(root / value[len(PREFIX):])
    if job_folder is not None and len(path.parts) == 1 and path.suffix in ("", ".yaml", ".yml"):
        for name in (path.name, path.name + ".yaml"):
            if (root / job_folder / name).is_file():
                return str(root / job_folder / name)
    return value


def resolve_config_args(argv: Sequence[str], job_folder: str | None) -> list[str]:
    """``argv`` with the value of every ``--config X`` / ``--config=X`` resolved by :func:`resolve_config`."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1], job_folder)
        elif token.startswith("--config="):
            out[i] = "--config=" + resolve_config(token[len("--config="):], job_folder)
    return out
