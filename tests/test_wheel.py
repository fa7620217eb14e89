"""The package outside the checkout: build the wheel, install it into a fresh virtual environment, and from
a folder that is not the checkout run ``lit-sr --help`` and the quickstart fit (a built-in recipe by name).

The new environment gets the wheel without its dependencies (``--no-deps``: nothing is downloaded) and
sees the dependencies of the running environment through a ``.pth`` line (torch, Lightning...). A ``.pth``
line adds a plain path, so an editable install of the checkout there is *not* activated: ``lit_sr`` must
come from the wheel, which the test checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a run leaves in the checkout (top level only: lit_sr/data/ is a package)
TOP_LEVEL_IGNORED = {".venv", ".git", "runs", "data", "build", "dist", "lightning_logs", "site", ".pytest_cache",
                     ".ruff_cache", ".cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    return ignored | (TOP_LEVEL_IGNORED & set(names) if Path(folder) == ROOT else set())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (no build/ left in it), offline (no build isolation)."""
    pytest.importorskip("setuptools", minversion="77")
    src = tmp_path_factory.mktemp("src") / "lit-sr"
    shutil.copytree(ROOT, src, ignore=_ignore)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("lit_sr_security-*.whl")
    return path


def test_the_wheel_holds_the_package_the_recipes_and_the_metadata(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    recipes = {n.split("lit_sr/configs/")[1] for n in names if n.startswith("lit_sr/configs/")}
    shipped = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*") if p.is_file()}
    assert recipes == shipped  # every recipe and the files they read (e.g. the demo's target image)
    assert "lit_sr/__main__.py" in names and "lit_sr/jobs/train/cli.py" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: lit-sr-security" in meta and "License-Expression: Apache-2.0" in meta
    assert "Provides-Extra: plots" in meta and "Provides-Extra: detection" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lit-sr = lit_sr.__main__:main" in entry


@pytest.mark.slow
def test_installed_outside_the_checkout_lit_sr_runs_the_quickstart(wheel, tmp_path):
    # no PYTHONPATH (a checkout on it would be "already installed" to pip, and imported instead of the wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=env)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300, env=env)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_deps_of_the_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(str(python), "-c", "import lit_sr, json; print(json.dumps(lit_sr.__file__))")
    assert where.returncode == 0, where.stderr
    assert Path(json.loads(where.stdout)).is_relative_to(site)  # the wheel's copy, not the checkout
    helped = run(str(venv / "bin" / "lit-sr"), "--help")
    assert helped.returncode == 0, helped.stderr
    assert "fit" in helped.stdout and "export" in helped.stdout
    fit = run(str(venv / "bin" / "lit-sr"), "fit", "--config", "quickstart", "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
              "--data.init_args.repeat", "1", "--data.init_args.batch_size", "2", "--data.init_args.max_side", "128",
              "--data.init_args.patch_size", "48",
              timeout=600)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run_dir,) = (work / "runs" / "quickstart").iterdir()
    assert (run_dir / "weights.pth").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
