"""What pyproject.toml cannot say: the recipes in ``configs/`` ship inside the package as ``lit_sr/configs/``.

``configs/`` stays at the top of the repository (where the README's commands read it); the wheel
maps it to the package ``lit_sr.configs`` so that ``lit-sr fit --config quickstart`` works after
``pip install`` outside a checkout (:mod:`lit_sr.recipes` finds it there).
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# every folder under configs/ (also nested ones such as train/targets/) is a package of the recipes
RECIPES = ["lit_sr.configs"] + [
    "lit_sr.configs." + ".".join(p.relative_to(ROOT / "configs").parts)
    for p in sorted((ROOT / "configs").rglob("*")) if p.is_dir()]

setup(
    packages=find_packages(include=["lit_sr", "lit_sr.*", "datamodules", "datamodules.*", "callbacks", "callbacks.*"])
    + RECIPES,
    package_dir={"lit_sr.configs": "configs"},
    package_data={name: ["*.yaml", "*.png", "*.sh"] for name in RECIPES},
)
