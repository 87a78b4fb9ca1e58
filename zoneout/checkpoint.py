"""Checkpoints are plain dicts of state_dicts, tensors and numbers (no pickled objects), written
atomically (zoneout/atomic.py): a kill at any moment leaves either the previous checkpoint or the
new one, never half of one."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from zoneout.atomic import atomic_write_bytes


def save(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(data_generator: torch.Generator) -> dict:
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "data": data_generator.get_state(),
             "python": list(random.getstate()[1]),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    random.setstate((3, tuple(state["python"]), None))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
