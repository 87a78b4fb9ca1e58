"""What a recurrent layer needs to know about per-step noise, independent of which regularizer made it.

Convention (docs/replication.md §6): a *keep* mask of 1 means the unit keeps its previous value
(zoneout); an *update-keep* mask of 1 means the cell update i*g is let through (recurrent
dropout keeps it with probability 1 - p). In training a field is a bool tensor broadcastable to
(T, B, H) -- (T, B, H) for per-unit masks, (T, B, 1) for stochastic depth, (T, 1, H) for a static
mask. In eval it is the float expectation. None means "no noise of that kind".
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from zoneout.nn import counter_masks

Mask = Optional[Union[float, Tensor]]


@dataclass
class RecurrentNoise:
    keep_cell: Mask = None  # zoneout on c; None = always update
    keep_hidden: Mask = None  # zoneout on h; None = always update
    update_keep: Mask = None  # recurrent dropout on i*g; None = always keep the update

    def merged(self, other: "RecurrentNoise") -> "RecurrentNoise":
        """Combine two sources; each field may come from one source only."""
        fields = {}
        for name in ("keep_cell", "keep_hidden", "update_keep"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                raise ValueError(f"two recurrent regularizers both set '{name}'; combine at most one of each kind")
            fields[name] = mine if mine is not None else theirs
        return RecurrentNoise(**fields)

    def at(self, t: int) -> "RecurrentNoise":
        """The noise of timestep t (floats and None pass through)."""
        pick = lambda m: m[t] if isinstance(m, Tensor) else m  # noqa: E731
        return RecurrentNoise(pick(self.keep_cell), pick(self.keep_hidden), pick(self.update_keep))


def keep_or_update(keep: Mask, previous: Tensor, candidate: Tensor) -> Tensor:
    """Zoneout mixing: keep*previous + (1-keep)*candidate, for one timestep's mask."""
    if keep is None:
        return candidate
    if isinstance(keep, Tensor) and keep.dtype == torch.bool:
        return torch.where(keep, previous, candidate)
    return keep * previous + (1 - keep) * candidate  # exact at keep = 0 and 1


def scale_update(update_keep: Mask, update: Tensor) -> Tensor:
    if update_keep is None:
        return update
    if isinstance(update_keep, Tensor) and update_keep.dtype == torch.bool:
        return update * update_keep.to(update.dtype)
    return update * update_keep


def capturing() -> bool:
    """torch.jit.trace, torch.export / ONNX (dynamo) and torch.compile cannot see into the C++ kernels."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or exporting()


def bernoulli_mask(probability: float, shape, device, generator: Optional[torch.Generator] = None) -> Tensor:
    """Bool mask, True with `probability` (p=1 always, p=0 never). On the CPU from the counter-based
    generator of zoneout.nn.counter_masks (threaded, vectorized; its key drawn from `generator`), elsewhere
    rand < p (rand is in [0, 1)). While tracing or compiling, the CPU mask comes from the generator's
    PyTorch-op twin with the key kept a tensor: the same bits, and no graph break."""
    if torch.device(device).type == "cpu":
        if capturing():
            return counter_masks.sample_torch(tuple(shape), probability, counter_masks.draw_key_tensor(generator))
        with torch.profiler.record_function("zoneout::bernoulli_mask"):  # named in profiles (scripts/bench.py)
            return counter_masks.bernoulli_mask(tuple(shape), probability, counter_masks.draw_key(generator))
    return torch.rand(shape, device=device, generator=generator) < probability


class RecurrentNoiseSource(nn.Module):
    """Base of regularizers that act inside the recurrence (zoneout, recurrent dropout, stochastic depth).

    A layer calls `noise(...)` once per layer and forward pass, so masks are fresh per sequence
    and independent across layers. `training=False` gives the deterministic expectation.
    """

    def noise(self, seq_len: int, batch: int, hidden: int, device: torch.device, training: bool,
              layer: int = 0) -> RecurrentNoise:
        return self.sample(seq_len, batch, hidden, device) if training else self.expectation()

    def sample(self, seq_len: int, batch: int, hidden: int, device: torch.device) -> RecurrentNoise:
        raise NotImplementedError

    def expectation(self) -> RecurrentNoise:
        raise NotImplementedError


def check_probability(name: str, value: float) -> float:
    """A real number in [0, 1]; like nn's dropout, a bool (True would be 1.0: every unit kept, or
    dropped) and a non-number (a string) are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a probability in [0, 1] (a real number), got {value!r} ({type(value).__name__})")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value
