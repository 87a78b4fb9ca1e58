"""One recurrent layer in one direction over sequences of possibly different lengths.

Any single-layer function `layer(x (T, B, I), state tuple of (B, H), noise) -> (output (T, B, H),
state)` (the reference loop, the fused kernels, the GRU loop) is run:

- in the reverse direction on the time-flipped *valid part* of each sequence, so every sequence's
  reverse pass starts at its own last valid step (as nn.LSTM does on a PackedSequence);
- on sequences of different lengths (sorted longest first, as a PackedSequence stores them) in
  segments: steps [t0, t1) run only on the sequences still going, exactly like cuDNN's shrinking
  batch. A finished sequence takes no further step at all, so its state is the one at its own last
  valid step and nothing at a padded position (input, zoneout mask, dropout) can reach a valid one.
  Each segment is one call of `layer`, so the fused kernels stay fused.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoneout.nn.noise import RecurrentNoise

State = tuple[Tensor, ...]
Layer = Callable[[Tensor, State, RecurrentNoise], tuple[Tensor, State]]


def reverse_valid(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence's first lengths[b] steps along dim 0; padded steps stay where they are.
    Applying it twice gives x back. lengths None: every sequence is full length (a plain flip)."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


def segments(lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(t0, t1, n): steps [t0, t1) run on the first n sequences. `lengths` sorted longest first."""
    result, start = [], 0
    for end in sorted(set(lengths)):
        result.append((start, end, sum(1 for length in lengths if length >= end)))
        start = end
    return result


def slice_noise(noise: RecurrentNoise, t0: int, t1: int, n: int) -> RecurrentNoise:
    """The noise of steps [t0, t1) and the first n sequences (broadcast dims of size 1 stay)."""
    def cut(mask):
        if not isinstance(mask, Tensor) or mask.dim() == 0:
            return mask
        while mask.dim() < 3:
            mask = mask.unsqueeze(0)
        mask = mask if mask.shape[0] == 1 else mask[t0:t1]
        return mask if mask.shape[1] == 1 else mask[:, :n]

    return RecurrentNoise(cut(noise.keep_cell), cut(noise.keep_hidden), cut(noise.update_keep))


def run_direction(layer: Layer, x: Tensor, state: State, noise: RecurrentNoise,
                  lengths: Optional[Sequence[int]] = None, lengths_tensor: Optional[Tensor] = None,
                  reverse: bool = False) -> tuple[Tensor, State]:
    """Output (T, B, H) in input time order (zeros at padded steps) and each sequence's final state.
    `lengths` (sorted longest first) None means every sequence has all T steps."""
    T, B = x.shape[0], x.shape[1]
    ragged = lengths is not None and min(lengths) < T
    if not ragged:
        lengths_tensor = None
    if reverse:
        x = reverse_valid(x, lengths_tensor)
    if not ragged:
        output, state = layer(x, state, noise)
    else:
        pieces, finished = [], []
        parts = segments(lengths)
        for k, (t0, t1, n) in enumerate(parts):
            out, state = layer(x[t0:t1, :n], tuple(s[:n] for s in state), slice_noise(noise, t0, t1, n))
            pieces.append(F.pad(out, (0, 0, 0, B - n)))
            still_going = parts[k + 1][2] if k + 1 < len(parts) else 0
            finished.append(tuple(s[still_going:] for s in state))  # sequences whose last step was t1 - 1
        output = torch.cat(pieces)
        state = tuple(torch.cat([f[i] for f in reversed(finished)]) for i in range(len(state)))
    if reverse:
        output = reverse_valid(output, lengths_tensor)
    return output, state
