"""Dropout on the NON-recurrent connections of a sequence model (input, between layers, before softmax).

`SequenceDropout(p)` is standard inverted dropout with a fresh mask per element (Zaremba et al. 2014,
the word-PTB baseline zoneout is added to). `variational=True` is Gal & Ghahramani's variant: one mask
per sequence and example, shape (1, B, H), shared by every timestep. `p` is the probability to drop;
kept units are scaled by 1/(1-p) in training, and the module is the identity in eval.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from zoneout.nn.noise import bernoulli_mask, check_probability


class SequenceDropout(nn.Module):
    def __init__(self, p: float = 0.0, variational: bool = False, batch_first: bool = False):
        super().__init__()
        self.p = check_probability("dropout", p)
        self.variational, self.batch_first = bool(variational), bool(batch_first)

    def forward(self, input: Tensor) -> Tensor:
        """input (T, B, H), or (B, T, H) with batch_first."""
        if not self.training or self.p == 0.0:
            return input
        if not self.variational:
            return F.dropout(input, self.p, training=True)
        if input.dim() != 3:
            raise ValueError(f"variational dropout input must be (T, B, H) (or batch_first), got {tuple(input.shape)}")
        if self.p == 1.0:
            return input * 0.0  # keeps the graph; 1/(1-p) would be inf
        mask_shape = list(input.shape)
        mask_shape[1 if self.batch_first else 0] = 1  # one mask per sequence, shared over time
        keep = bernoulli_mask(1.0 - self.p, mask_shape, input.device).to(input.dtype)
        return input * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, variational={self.variational}, batch_first={self.batch_first}"

