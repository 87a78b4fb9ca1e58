"""Recurrent dropout without memory loss (Semeniuta et al. 2016), as the zoneout paper compares it.

    c~_t = f_t * c_{t-1} + m_t * i_t * g_t,     m_t ~ Bernoulli(1 - p)

`p` is the probability to DROP the cell update (docs/replication.md §6.2; the paper's grid is
{0.05, 0.2, 0.5, 0.7}). Masks are fresh per timestep, example, unit and layer. Evaluation multiplies
the update by its expectation 1 - p, as the original code does; there is no inverted 1/(1-p) scaling.
Only an LSTM (or BatchNormLSTM) has a cell update to drop.
"""
from __future__ import annotations

from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, bernoulli_mask, check_probability


class RecurrentDropout(RecurrentNoiseSource):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = check_probability("recurrent_dropout", p)

    def sample(self, seq_len, batch, hidden, device) -> RecurrentNoise:
        if self.p == 0.0:
            return RecurrentNoise()
        return RecurrentNoise(update_keep=bernoulli_mask(1.0 - self.p, (seq_len, batch, hidden), device))

    def expectation(self) -> RecurrentNoise:
        return RecurrentNoise(update_keep=(1.0 - self.p) if self.p > 0 else None)

    def extra_repr(self) -> str:
        return f"p={self.p}"
