"""The layers are a torch-only library: `import zoneout` and a ZoneoutLSTM step load none of the
replication harness (Hydra, OmegaConf, YAML, matplotlib, W&B), and the package declares only what the
layers need; the harness is the [train] extra."""
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ("hydra", "omegaconf", "yaml", "matplotlib", "wandb", "submitit")


def test_the_layers_import_and_train_without_the_harness():
    program = f"""
import sys, torch
from zoneout import ZoneoutGRU, ZoneoutLSTM, ZoneoutLSTMCell
lstm = ZoneoutLSTM(3, 4, zoneout_cell=0.5, zoneout_hidden=0.05, impl="reference")
lstm(torch.randn(5, 2, 3))[0].sum().backward()
ZoneoutLSTMCell(3, 4, zoneout_cell=0.1, impl="reference")(torch.randn(2, 3))[0].sum().backward()
ZoneoutGRU(3, 4, zoneout_hidden=0.1, impl="reference")(torch.randn(5, 2, 3))[0].sum().backward()
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({HARNESS!r}))))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=1200)  # a cold kernel build
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"import zoneout loaded the harness: {done.stdout.strip()}"


def test_the_package_depends_on_torch_only_and_the_harness_is_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for dep in project["dependencies"]}
    assert names <= {"torch", "ninja"}, names  # ninja: torch.utils.cpp_extension builds the CPU kernels with it
    train = {dep.split("=")[0].split(">")[0].strip().lower() for dep in project["optional-dependencies"]["train"]}
    assert {"hydra-core", "omegaconf", "matplotlib"} <= train
