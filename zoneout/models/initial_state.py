"""A learned initial state (the authors' code: `initial_state_`, `initial_cells`, zero at init, trained):
per-layer vectors that every sequence starting from scratch begins from, repeated over the batch."""
from __future__ import annotations

import torch
from torch import Tensor, nn

INITIAL_STATES = ("zeros", "learned")


class LearnedInitialState(nn.Module):
    def __init__(self, num_layers: int, hidden_size: int, has_cell: bool):
        super().__init__()
        self.hidden = nn.Parameter(torch.zeros(num_layers, hidden_size))
        self.cell = nn.Parameter(torch.zeros(num_layers, hidden_size)) if has_cell else None  # c gets its own

    def forward(self, batch: int) -> list:
        """Each layer's state as the layers take it, (1, B, H) or an LSTM's (h, c) of those; the
        gradient of a vector is the sum over the batch."""
        def repeat(vector: Tensor) -> Tensor:
            return vector.view(1, 1, -1).expand(1, batch, -1).contiguous()
        if self.cell is None:
            return [repeat(h) for h in self.hidden]
        return [(repeat(h), repeat(c)) for h, c in zip(self.hidden, self.cell)]


def make_initial_state(kind: str, num_layers: int, hidden_size: int, has_cell: bool):
    """None for fixed zeros (the layers' own default), else the learned module."""
    if kind not in INITIAL_STATES:
        raise ValueError(f"model.initial_state must be one of {', '.join(INITIAL_STATES)}; got {kind!r}")
    return LearnedInitialState(num_layers, hidden_size, has_cell) if kind == "learned" else None
