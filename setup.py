"""The one packaging rule pyproject.toml cannot state: the checkout's top-level configs/ ships inside the
wheel as the zoneout.configs package (its YAML files are package data), so an installed zoneout-train finds
its Hydra configs (zoneout/config_dir.py); a checkout keeps a single configs/."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["zoneout*"]), "zoneout.configs"], package_dir={"zoneout.configs": "configs"})
