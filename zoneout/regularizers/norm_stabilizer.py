"""Norm stabilizer (Krueger & Memisevic 2016): penalise changes of the hidden-state norm over time.

    penalty = beta * mean_over_batch( sum_{t=1}^{T-1} (||h_t||_2 - ||h_{t-1}||_2)^2 / T )

T is the number of hidden states given. This is what the zoneout code computes on char-PTB
(docs/replication.md §5): the 99 predicted steps' states give 98 differences, summed and divided by
seq_len - 1 = 99. The paper uses beta = 50 on h, added to the mean cross-entropy.
"""
from __future__ import annotations

import math

from torch import Tensor, nn


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not (math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"norm_stabilizer beta must be a finite number >= 0, got {beta}")
    return beta


def norm_stabilizer_penalty(hidden_states: Tensor, beta: float) -> Tensor:
    """hidden_states (T, B, H), time-major -> scalar penalty (0 when T == 1)."""
    beta = _check_beta(beta)
    if hidden_states.dim() != 3 or hidden_states.shape[0] == 0:
        raise ValueError(f"hidden_states must be (T, B, H) with T >= 1, got {tuple(hidden_states.shape)}")
    norms = hidden_states.norm(dim=-1)  # (T, B); the gradient of a zero vector's norm is 0, not NaN
    squared_changes = (norms[1:] - norms[:-1]).pow(2)  # (T-1, B)
    per_sequence = squared_changes.sum(dim=0) / hidden_states.shape[0]
    return beta * per_sequence.mean()


class NormStabilizer(nn.Module):
    def __init__(self, beta: float = 0.0):
        super().__init__()
        self.beta = _check_beta(beta)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return norm_stabilizer_penalty(hidden_states, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
