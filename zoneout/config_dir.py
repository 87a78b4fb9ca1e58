"""Where the Hydra configs are: inside the installed package (a wheel ships configs/ as zoneout/configs),
else the checkout's configs/ beside the package (a clone, an editable install). Torch-free, Hydra-free."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def config_dir() -> Path:
    packaged = Path(str(resources.files("zoneout") / "configs"))
    if (packaged / "config.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs"
