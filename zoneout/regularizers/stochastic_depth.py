"""Stochastic depth across time: zone out a whole timestep (every unit of a layer at once).

One keep ~ Bernoulli(p) per (timestep, example), shape (T, B, 1), broadcast over the units and --
by default -- the SAME tensor for the cell and the hidden state (docs/replication.md §6.13), so a kept
timestep is skipped entirely: c_t = c_{t-1}, h_t = h_{t-1}. `p` is the probability to KEEP the
previous state (skip the step). Draws are fresh per minibatch and independent per layer; evaluation
uses the expectation p. `cell=False` / `hidden=False` zone out only one of the two (use `cell=False`
for a GRU or tanh-RNN, which have no cell).
"""
from __future__ import annotations

from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, bernoulli_mask, check_probability


class StochasticDepth(RecurrentNoiseSource):
    def __init__(self, p: float = 0.0, cell: bool = True, hidden: bool = True):
        super().__init__()
        self.p = check_probability("stochastic_depth", p)
        if not (cell or hidden):
            raise ValueError("stochastic_depth needs cell=True or hidden=True (at least one state to zone out)")
        self.cell, self.hidden = bool(cell), bool(hidden)

    def sample(self, seq_len, batch, hidden, device) -> RecurrentNoise:
        if self.p == 0.0:
            return RecurrentNoise()
        keep_step = bernoulli_mask(self.p, (seq_len, batch, 1), device)
        return RecurrentNoise(keep_cell=keep_step if self.cell else None,
                              keep_hidden=keep_step if self.hidden else None)

    def expectation(self) -> RecurrentNoise:
        keep = self.p if self.p > 0 else None
        return RecurrentNoise(keep_cell=keep if self.cell else None, keep_hidden=keep if self.hidden else None)

    def extra_repr(self) -> str:
        return f"p={self.p}, cell={self.cell}, hidden={self.hidden}"
