"""A per-thread pool of large CPU buffers for the fused kernels: `take` one, `release` them all.

Why: a fresh tensor of many MiB costs its page faults on every call (glibc maps a block that large anew
and unmaps it on free, so the kernel zeroes every page again on first touch); at T=100, B=128, H=1000 the
fused LSTM's input projection, forward output, cells, tanh(c~) and its backward's dL/d(pre-activations)
are 50-200 MiB each (195 MiB: 99 ms to fill fresh, 10 ms reused, AMD EPYC). Reusing them spares those
faults (results/bench_cpu_amd_buffer_pool.md).

Which block is free: the pool keeps each block's base tensor and hands out tensors on its storage (not
views in autograd's sense: a caller may edit one in place as it could a fresh tensor). Every tensor that
shares a block (the caller's output, what autograd saved for a backward, a slice or a detach of either)
holds the block's storage, so a block whose storage has no holder beyond the pool's own is free to hand
out again: a training step's buffers are reused by the next step once its backward has freed its graph,
and a caller who keeps an output only makes the pool allocate another block. The pool grows to the most
blocks in use at once (a few per layer of a training step) and holds them until `release()`.
"""
from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from zoneout.nn.fused.settings import options

__all__ = ["take", "enabled", "results", "release", "held_bytes"]

_MAX_BLOCKS = 64  # beyond this many blocks in use at once, take() hands out plain tensors
# Below this size take() hands out plain tensors: small blocks come from the allocator's heap without fresh
# page faults, and finding a free block costs more than they save (a B=1 cell step ran at 0.37x of
# nn.LSTMCell pooled, 0.50x not: results/bench_tts_cpu_amd.md).
MIN_POOLED_BYTES = 1 << 20
_local = threading.local()
# torch's count of references to a storage (private; where a torch lacks it, nothing is pooled).
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _holders(block: Tensor) -> int:
    return _use_count(block.untyped_storage()._cdata)


def _blocks() -> list[tuple[Tensor, int]]:
    """This thread's blocks, each with its storage's use count while only the pool holds it."""
    if not hasattr(_local, "blocks"):
        _local.blocks = []
    return _local.blocks


def take(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialized contiguous CPU tensor of `shape` and `dtype` on a pooled block no one else holds."""
    numel = math.prod(shape)
    if _use_count is None or numel == 0 or numel * dtype.itemsize < MIN_POOLED_BYTES:
        return torch.empty(shape, dtype=dtype)
    blocks = _blocks()
    free = [k for k, (block, alone) in enumerate(blocks) if block.dtype == dtype and _holders(block) == alone]
    fits = [k for k in free if blocks[k][0].numel() >= numel]
    if fits:  # the smallest free block that fits
        return _on(blocks[min(fits, key=lambda k: blocks[k][0].numel())][0], shape)
    if free:  # a free block too small for this shape: replace it (freeing it first) rather than grow
        del blocks[free[0]]
    elif len(blocks) >= _MAX_BLOCKS:
        return torch.empty(shape, dtype=dtype)
    block = torch.empty(numel, dtype=dtype)
    blocks.append((block, _holders(block)))
    return _on(block, shape)


def _on(block: Tensor, shape: tuple[int, ...]) -> Tensor:
    return torch.empty(0, dtype=block.dtype).set_(block.untyped_storage(), 0, shape)


def enabled(like: Tensor) -> bool:
    """Whether a fused layer on `like`'s device takes its large tensors from the pool: on the CPU, where
    fused.options["reuse_buffers"]."""
    return like.device.type == "cpu" and options["reuse_buffers"]


def results(h0: Tensor, *steps: int) -> list[Tensor]:
    """Blocks for a fused C++ forward's results, each (steps, B, H) like h0's (B, H), where enabled(h0);
    else none (the kernel then allocates them)."""
    return [take((n, *h0.shape), h0.dtype) for n in steps] if enabled(h0) else []


def release() -> None:
    """Drop this thread's blocks (tensors handed out stay valid: they hold their storage themselves)."""
    _local.blocks = []


def held_bytes() -> int:
    """Bytes of this thread's pooled blocks."""
    return sum(block.numel() * block.element_size() for block, _ in _blocks())
