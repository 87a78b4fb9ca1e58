"""RecurrentNoise fields in the compact form the fused kernels read.

A field becomes one of: absent, a scalar (the eval expectation) or a bool tensor *expanded* to
(T, B, H) -- an expand is a view, so (T, B, 1) stochastic-depth and (T, 1, H) static masks stay
as small as they were drawn, and no float T x B x H copy is ever made. The kernels index the
view with its strides, so the forward and the backward read the same element for the same
(timestep, example, unit).

A scalar expectation given as a 0-d tensor on a GPU stays a tensor (reading it with float() would
wait for the GPU); `device_values` turns the three expectations into the small tensor the GPU
kernels read, without any host-to-device copy and, for plain floats, once per distinct tuple.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from zoneout.nn.noise import RecurrentNoise

ABSENT, SCALAR, BOOL = 0, 1, 2
FIELDS = ("keep_cell", "keep_hidden", "update_keep")


class UnsupportedMask(Exception):
    """A field the fused kernels do not read (a float tensor); the caller falls back to the reference."""


@dataclass(frozen=True)
class CompactMask:
    kind: int = ABSENT
    value: Union[float, Tensor] = 0.0  # the expectation when kind == SCALAR (a 0-d tensor only off the CPU)
    tensor: Optional[Tensor] = None  # bool (T, B, H) view with last stride 0 or 1 when kind == BOOL


@dataclass(frozen=True)
class CompactNoise:
    keep_cell: CompactMask
    keep_hidden: CompactMask
    update_keep: CompactMask

    def fields(self) -> tuple[CompactMask, CompactMask, CompactMask]:
        return self.keep_cell, self.keep_hidden, self.update_keep

    def kinds(self) -> list[int]:
        return [m.kind for m in self.fields()]

    def values(self) -> list[Union[float, Tensor]]:
        return [m.value for m in self.fields()]

    def tensors(self) -> list[Optional[Tensor]]:
        return [m.tensor for m in self.fields()]


def compact_mask(name: str, mask, shape: tuple[int, int, int], device: torch.device) -> CompactMask:
    if mask is None:
        return CompactMask()
    if isinstance(mask, (int, float)) and not isinstance(mask, bool):
        return CompactMask(SCALAR, float(mask))
    if not isinstance(mask, Tensor):
        raise ValueError(f"noise field '{name}' must be None, a float or a bool tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if mask.dim() != 0 or mask.requires_grad:
            raise UnsupportedMask(name)
        if mask.device.type == "cpu":
            return CompactMask(SCALAR, float(mask))
        if mask.device != device:
            raise ValueError(f"noise field '{name}' is on {mask.device} but the input is on {device}")
        return CompactMask(SCALAR, mask.detach())  # float(mask) would synchronise with the GPU
    if mask.device != device:
        raise ValueError(f"noise field '{name}' is on {mask.device} but the input is on {device}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(shape):
        raise ValueError(f"noise field '{name}' of shape {tuple(mask.shape)} does not broadcast to (T, B, H) = {shape}")
    view = mask.expand(shape)
    if view.stride(2) not in (0, 1):  # e.g. a transposed mask: one compact bool copy
        view = view.contiguous()
    return CompactMask(BOOL, 0.0, view)


def compact_noise(noise: RecurrentNoise, shape: tuple[int, int, int], device: torch.device) -> CompactNoise:
    """Raises UnsupportedMask for float-tensor fields, ValueError for malformed ones."""
    return CompactNoise(*(compact_mask(name, getattr(noise, name), shape, device) for name in FIELDS))


_VALUES_CACHE_SIZE = 64
_values_cache: dict = {}


def device_values(noise: CompactNoise, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The three expectations as a (3,) tensor on `device` (unused entries 0). Filled on the device
    (fill_ with a Python scalar is a kernel argument, copy_ of a 0-d GPU tensor stays on the GPU),
    so no call pays a host-to-device copy or a synchronisation; float tuples are cached. Readers
    must not write to the result: it is shared."""
    values = noise.values()
    floats = not any(isinstance(v, Tensor) for v in values)
    key = (tuple(values), dtype, device) if floats else None
    cached = _values_cache.get(key) if floats else None
    if cached is not None:
        return cached
    with torch.inference_mode(False):  # cached across modes: a normal tensor is usable in every mode
        result = torch.empty(len(values), dtype=dtype, device=device)
        for slot, value in zip(result, values):
            slot.copy_(value) if isinstance(value, Tensor) else slot.fill_(value)
    if floats:
        if len(_values_cache) >= _VALUES_CACHE_SIZE:
            _values_cache.pop(next(iter(_values_cache)))
        _values_cache[key] = result
    return result
