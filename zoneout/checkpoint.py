"""Checkpoints are plain dicts of state_dicts, tensors and numbers (no pickled objects), written
atomically (zoneout/atomic.py): a kill at any moment leaves either the previous checkpoint or the
new one, never half of one. Each ends with a SHA-256 of its payload, so a file damaged afterwards
(a bad disk, a stray write, a partial copy) is refused with one line naming it, never trusted."""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from zoneout.atomic import atomic_write_bytes

TRAILER = b"\nzoneout-sha256:"  # then 64 hex digits; files without it (older checkpoints) load unchecked


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: its message is the one line to show."""


def save(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, lambda handle: (handle.write(payload), handle.write(TRAILER + digest)))


def load(path: Path) -> dict:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror})") from None
    payload, tail = data, len(TRAILER) + 64
    if data[-tail:-64] == TRAILER:
        payload = data[:-tail]
        if hashlib.sha256(payload).hexdigest().encode() != data[-64:]:
            raise CheckpointError(f"{path}: corrupt (its SHA-256 does not match its contents); restore it, "
                                  "or remove the run folder to start that run afresh")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign files: whatever torch raises, one line naming the file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}); restore it, or remove "
                              "the run folder to start that run afresh") from None


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
