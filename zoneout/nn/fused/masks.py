"""RecurrentNoise fields in the compact form the fused kernels read.

A field becomes one of: absent, a scalar (the eval expectation) or a bool tensor *expanded* to
(T, B, H) -- an expand is a view, so (T, B, 1) stochastic-depth and (T, 1, H) static masks stay
as small as they were drawn, and no float T x B x H copy is ever made. The kernels index the
view with its strides, so the forward and the backward read the same element for the same
(timestep, example, unit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
    value: float = 0.0  # the expectation when kind == SCALAR
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

    def values(self) -> list[float]:
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
        if mask.dim() == 0 and not mask.requires_grad:
            return CompactMask(SCALAR, float(mask))
        raise UnsupportedMask(name)
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
