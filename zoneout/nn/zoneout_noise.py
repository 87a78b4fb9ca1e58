"""Zoneout (Krueger et al. 2017): each unit keeps its previous value with probability z.

    c_t = d_c * c_{t-1} + (1 - d_c) * c~_t,    d_c ~ Bernoulli(z_cell)
    h_t = d_h * h_{t-1} + (1 - d_h) * h~_t,    d_h ~ Bernoulli(z_hidden)

Masks are fresh per timestep, example and unit, separate for c and h (unless `shared_mask`, as in
the paper's pMNIST runs); eval uses the expectation; no 1/(1-z) rescaling.
`static_mask` reproduces the original code's rebuttal variant: one (T, 1, H) mask per layer, drawn
from a fixed seed, tiled over the batch and reused in every minibatch and at evaluation.
"""
from __future__ import annotations

import torch

from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, bernoulli_mask, check_probability


class Zoneout(RecurrentNoiseSource):
    def __init__(self, cell: float = 0.0, hidden: float = 0.0, shared_mask: bool = False,
                 static_mask: bool = False, static_seed: int = 0):
        super().__init__()
        self.cell = check_probability("zoneout_cell", cell)
        self.hidden = check_probability("zoneout_hidden", hidden)
        if shared_mask and self.cell != self.hidden:
            raise ValueError(f"zoneout shared_mask needs zoneout_cell == zoneout_hidden, got {self.cell} and {self.hidden}")
        self.shared_mask = shared_mask
        self.static_mask = static_mask
        self.static_seed = static_seed

    @property
    def active(self) -> bool:
        return self.cell > 0 or self.hidden > 0

    def _draw(self, shape, device, generator=None) -> RecurrentNoise:
        keep_cell = bernoulli_mask(self.cell, shape, device, generator) if self.cell > 0 else None
        if self.shared_mask:
            keep_hidden = keep_cell
        else:
            keep_hidden = bernoulli_mask(self.hidden, shape, device, generator) if self.hidden > 0 else None
        return RecurrentNoise(keep_cell=keep_cell, keep_hidden=keep_hidden)

    def sample(self, seq_len, batch, hidden, device) -> RecurrentNoise:
        return self._draw((seq_len, batch, hidden), device)

    def expectation(self) -> RecurrentNoise:
        return RecurrentNoise(keep_cell=self.cell or None, keep_hidden=self.hidden or None)

    def noise(self, seq_len, batch, hidden, device, training, layer=0) -> RecurrentNoise:
        if self.static_mask:
            # Same seed for the same layer: the mask is a fixed property of the model, not of the batch.
            generator = torch.Generator().manual_seed(self.static_seed * 1000 + layer)
            noise = self._draw((seq_len, 1, hidden), "cpu", generator)
            to = lambda m: m.to(device) if m is not None else None  # noqa: E731
            return RecurrentNoise(to(noise.keep_cell), to(noise.keep_hidden))
        return super().noise(seq_len, batch, hidden, device, training, layer)

    def extra_repr(self) -> str:
        return f"cell={self.cell}, hidden={self.hidden}, shared_mask={self.shared_mask}, static_mask={self.static_mask}"
