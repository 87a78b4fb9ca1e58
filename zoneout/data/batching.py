"""Minibatches cut from a 1-D token stream. Every iterable has a `len()` (number of batches).

- `random_offset_chunks`: char-PTB / text8 training (docs/replication.md §2.1, §6 item 6). One call is one
  epoch: a random offset in [0, seq_len), non-overlapping chunks of seq_len from there (the incomplete
  last one dropped), shuffled. The model predicts chunk[:, 1:] from chunk[:, :-1] (99 predictions per
  100-character chunk) from a fresh state.
- `eval_chunks`: the same chunking, deterministic (offset 0, in order), plus the remainder.
- `stream_batches`: Zaremba-style state-carried batches (word-PTB; full-stream evaluation).
All batches are (B, L) long tensors (batch-first); recurrent layers want them transposed to (L, B).
"""
from __future__ import annotations

from typing import Iterator

import torch


def _check_stream(stream: torch.Tensor) -> None:
    if not isinstance(stream, torch.Tensor) or stream.dim() != 1:
        raise ValueError(f"stream must be a 1-D tensor of token ids, got {getattr(stream, 'shape', type(stream))}")


def _check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


class RandomOffsetChunks:
    """One training epoch of shuffled, non-overlapping chunks; the offset is drawn at construction."""

    def __init__(self, stream: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator):
        _check_stream(stream)
        _check_positive("seq_len", seq_len, minimum=2)
        _check_positive("batch_size", batch_size)
        if len(stream) < seq_len:
            raise ValueError(f"stream has {len(stream)} tokens, fewer than seq_len={seq_len}")
        # Offsets past len - seq_len would leave no chunk at all; only matters for tiny streams.
        offset_range = min(seq_len, len(stream) - seq_len + 1)
        self.offset = int(torch.randint(offset_range, (1,), generator=generator))
        num_chunks = (len(stream) - self.offset) // seq_len
        self.chunks = stream[self.offset:self.offset + num_chunks * seq_len].view(num_chunks, seq_len)
        self.order = torch.randperm(num_chunks, generator=generator)
        self.batch_size = batch_size

    @property
    def num_chunks(self) -> int:
        return self.chunks.shape[0]

    def __len__(self) -> int:
        return _ceil_div(self.num_chunks, self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.num_chunks, self.batch_size):
            yield self.chunks[self.order[start:start + self.batch_size].to(self.chunks.device)]


def random_offset_chunks(stream: torch.Tensor, seq_len: int, batch_size: int,
                         generator: torch.Generator) -> RandomOffsetChunks:
    """One epoch of char-level training batches (B, seq_len); call again for the next epoch."""
    return RandomOffsetChunks(stream, seq_len, batch_size, generator)


class EvalChunks:
    """Chunks of seq_len from offset 0 in order, then the remainder (>= 2 tokens) as a (1, r) batch."""

    def __init__(self, stream: torch.Tensor, seq_len: int, batch_size: int):
        _check_stream(stream)
        _check_positive("seq_len", seq_len, minimum=2)
        _check_positive("batch_size", batch_size)
        num_chunks = len(stream) // seq_len
        self.chunks = stream[:num_chunks * seq_len].view(num_chunks, seq_len)
        remainder = stream[num_chunks * seq_len:]
        self.remainder = remainder.unsqueeze(0) if len(remainder) >= 2 else None
        self.batch_size = batch_size

    def __len__(self) -> int:
        return _ceil_div(self.chunks.shape[0], self.batch_size) + (self.remainder is not None)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.chunks.shape[0], self.batch_size):
            yield self.chunks[start:start + self.batch_size]
        if self.remainder is not None:
            yield self.remainder


def eval_chunks(stream: torch.Tensor, seq_len: int, batch_size: int) -> EvalChunks:
    return EvalChunks(stream, seq_len, batch_size)


class StreamBatches:
    """Zaremba-style batches: the stream as batch_size contiguous columns, read in windows of bptt.

    Row b of every batch continues row b of the previous batch, so the final state of one batch is
    the right initial state for the next. Targets are the inputs shifted by one token.
    """

    def __init__(self, stream: torch.Tensor, batch_size: int, bptt: int):
        _check_stream(stream)
        _check_positive("batch_size", batch_size)
        _check_positive("bptt", bptt)
        column_len = len(stream) // batch_size
        if column_len < 2:
            raise ValueError(f"stream has {len(stream)} tokens, too few for batch_size={batch_size} columns of >= 2")
        self.columns = stream[:column_len * batch_size].view(batch_size, column_len)
        self.bptt = bptt

    def __len__(self) -> int:
        return _ceil_div(self.columns.shape[1] - 1, self.bptt)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        predictable = self.columns.shape[1] - 1
        for start in range(0, predictable, self.bptt):
            length = min(self.bptt, predictable - start)
            yield self.columns[:, start:start + length], self.columns[:, start + 1:start + 1 + length]


def stream_batches(stream: torch.Tensor, batch_size: int, bptt: int) -> StreamBatches:
    return StreamBatches(stream, batch_size, bptt)


def count_predictions(batches) -> int:
    """Number of predicted tokens in an epoch: (L - 1) per chunk, L per stream window."""
    total = 0
    for batch in batches:
        if isinstance(batch, tuple):
            total += batch[1].numel()
        else:
            total += batch.shape[0] * (batch.shape[1] - 1)
    return total
