"""Bernoulli masks on the CPU from a counter-based generator: every zoneout / dropout mask of a CPU run.

Why not `torch.rand(shape) < p`: PyTorch's CPU uniform sampler is serial (one thread) and writes a float
per element before the comparison. At a char-PTB step of T=100, B=128, H=1000 the two zoneout masks cost
~5 % of the fused training step on one thread and more on two (results/bench_cpu_amd.md, "mask
sampling"). A counter-based generator computes any element from (key, index) alone, so the C++ sampler
(zoneout/nn/csrc/cpu_masks.cpp) splits the work over threads, vectorizes, and writes the bool mask
directly; its result does not depend on the thread count.

The definition (the C++ sampler and `sample_torch`, its PyTorch-op twin, agree bit for bit):
    draw_i = SplitMix64's output function of (key + (i + 1) * 0x9E3779B97F4A7C15) mod 2^64
             (= the i-th output of SplitMix64 seeded with `key`, Steele et al. 2014),
    element 2i uses draw_i's low 32 bits u, element 2i + 1 its high 32 bits,
    element = u < floor(p * 2^32)   (p = 0: never; p = 1: always),
over the mask flattened in C order. The 63-bit key of each mask is drawn from the torch generator
(the global one unless given), so `torch.manual_seed` fixes every mask as before.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from zoneout.nn.csrc import cpu_ext

GAMMA = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK32 = (1 << 32) - 1


def draw_key_tensor(generator: Optional[torch.Generator] = None) -> Tensor:
    """A fresh 63-bit key from `generator` (the global CPU generator when None), as a 0-d int64 tensor."""
    return torch.randint(0, 2 ** 63 - 1, (), generator=generator)


def draw_key(generator: Optional[torch.Generator] = None) -> int:
    """draw_key_tensor's key as a Python int (the same draw)."""
    return int(draw_key_tensor(generator))


def bernoulli_mask(shape: Sequence[int], probability: float, key: int) -> Tensor:
    """Bool CPU mask of `shape`, True with `probability`: the C++ sampler when the fused CPU module is
    available (it is built on first use), else its PyTorch-op twin -- the same bits either way."""
    module = cpu_ext.load()
    if module is not None:
        return module.bernoulli_mask(list(shape), float(probability), int(key))
    return sample_torch(shape, probability, key)


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no full uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def draws(key: Union[int, Tensor], count: int) -> Tensor:
    """draw_0 .. draw_{count-1} as int64 bit patterns (int64 multiplication wraps modulo 2^64); in place,
    so the fallback stays within a few times the cost of rand < p. `key`: an int or a 0-d int64 tensor
    (draw_key_tensor's, which tracing keeps in the graph)."""
    offset = key if isinstance(key, Tensor) else _signed(key % (1 << 64))
    z = torch.arange(1, count + 1, dtype=torch.int64).mul_(_signed(GAMMA)).add_(offset)
    z.bitwise_xor_(_shift_right(z, 30)).mul_(_signed(_MIX1))
    z.bitwise_xor_(_shift_right(z, 27)).mul_(_signed(_MIX2))
    return z.bitwise_xor_(_shift_right(z, 31))


def sample_torch(shape: Sequence[int], probability: float, key: Union[int, Tensor]) -> Tensor:
    """The PyTorch-op twin of the C++ sampler (the fallback where the C++ module cannot be built)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    n = math.prod(shape)
    threshold = int(math.ldexp(probability, 32))
    x = draws(key, (n + 1) // 2)
    # element 2i: the low half of draw i; element 2i + 1: the high half (no out= views: it also traces)
    mask = torch.stack([(x & _MASK32) < threshold, _shift_right(x, 32) < threshold], dim=1)
    return mask.reshape(-1)[:n].reshape(tuple(shape))
