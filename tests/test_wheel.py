"""What `pip install .` gives: a wheel that carries the Hydra configs (as zoneout/configs) and the CPU kernel
sources, and an installed `zoneout-train` that composes a config outside any checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from zoneout import config_dir as config_dir_module
from zoneout.config_dir import config_dir

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_uses_its_configs_folder():
    assert config_dir() == ROOT / "configs"


def test_an_installed_package_uses_its_packaged_configs(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(config_dir_module.resources, "files", lambda package: tmp_path)
    assert config_dir() == tmp_path / "configs"


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_its_zoneout_train_composes_a_config(tmp_path):
    source = tmp_path / "source"  # a copy, so the build writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, source / name)
    for name in ("zoneout", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("zoneout-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"zoneout/configs/{path.relative_to(ROOT / 'configs')}" for path in (ROOT / "configs").rglob("*.yaml")}
    assert "zoneout/configs/config.yaml" in configs and configs <= names, sorted(configs - names)[:5]
    assert {"zoneout/nn/csrc/cpu_build.py", "zoneout/nn/csrc/cpu_kernels.cpp", "zoneout/nn/csrc/cpu_common.h"} <= names

    venv = tmp_path / "venv"  # its dependencies come from this interpreter's site-packages, its zoneout from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    target = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    (target / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=600)
    data = tmp_path / "data"
    data.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([venv / "bin" / "zoneout-train", "experiment=ptb_char/zoneout", f"dataset.data_dir={data}", "--cfg", "job"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "zoneout_cell: 0.5" in done.stdout and "name: ptb_char/zoneout" in done.stdout
    where = subprocess.run([venv / "bin" / "python", "-c", "from zoneout.config_dir import config_dir; print(config_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(target / "zoneout" / "configs")
