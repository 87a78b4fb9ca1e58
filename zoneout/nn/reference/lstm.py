"""The reference LSTM recurrence with zoneout: a plain per-timestep loop, written to be read.

It is the oracle every faster implementation is tested against. The equations (docs/replication.md §1.1,
gate order i, f, g, o as in torch.nn.LSTM):

    i, f, o = sigmoid(.), g = tanh(.)  of  x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
    c~_t = f * c_{t-1} + m_t * i * g          (m_t: recurrent-dropout keep mask, else 1)
    h~_t = o * tanh(c~_t)                     (from the UN-zoned candidate cell)
    c_t  = d^c_t * c_{t-1} + (1 - d^c_t) * c~_t
    h_t  = d^h_t * h_{t-1} + (1 - d^h_t) * h~_t      (the layer's output is the zoned h_t)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.nn.noise import RecurrentNoise, keep_or_update, scale_update


def lstm_cell_step(gates: Tensor, h_prev: Tensor, c_prev: Tensor, noise: RecurrentNoise) -> tuple[Tensor, Tensor]:
    """One step from pre-activations `gates` (B, 4H) and one timestep's noise."""
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_candidate = f * c_prev + scale_update(noise.update_keep, i * g)
    h_candidate = o * torch.tanh(c_candidate)
    c = keep_or_update(noise.keep_cell, c_prev, c_candidate)
    h = keep_or_update(noise.keep_hidden, h_prev, h_candidate)
    return h, c


def lstm_layer(input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], noise: RecurrentNoise
               ) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over a sequence. input (T, B, I), h0/c0 (B, H) -> output (T, B, H), h_T, c_T."""
    gates_x = input @ weight_ih.t()  # one GEMM for the input projection of all timesteps
    if bias_ih is not None:
        gates_x = gates_x + (bias_ih + bias_hh)
    gates_x = gates_x.unbind(0)  # per-step views; indexing the (T, B, 4H) tensor would make backward O(T^2)
    h, c = h0, c0
    outputs = []
    for t in range(input.shape[0]):
        h, c = lstm_cell_step(gates_x[t] + h @ weight_hh.t(), h, c, noise.at(t))
        outputs.append(h)
    return torch.stack(outputs), h, c
