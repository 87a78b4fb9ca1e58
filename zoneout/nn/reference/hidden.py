"""The reference GRU and simple-RNN recurrences with zoneout on h: plain per-timestep loops, the oracle.

GRU (gate order r, z, n as in torch.nn.GRU; without noise exactly its equations):

    r  = sigmoid(x W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)          (reset gate)
    u  = sigmoid(x W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)          (update gate, nn.GRU's "z")
    n  = tanh(x W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
    h~ = (1 - u) * n + u * h_{t-1}
    h_t = d_t * h_{t-1} + (1 - d_t) * h~                            (zoneout, d_t: keep_hidden)

Simple RNN (torch.nn.RNN's equations; act = tanh as in the paper or relu as in the original code,
docs/replication.md §1.1, §6.14):

    h~_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    h_t  = d_t * h_{t-1} + (1 - d_t) * h~_t
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.nn.noise import RecurrentNoise, keep_or_update


def gru_cell_step(gates_x: Tensor, h_prev: Tensor, weight_hh: Tensor, bias_hh: Optional[Tensor],
                  keep_hidden) -> Tensor:
    """One step from the input pre-activations `gates_x` (B, 3H; b_ih included) and one step's mask."""
    gates_h = h_prev @ weight_hh.t()
    if bias_hh is not None:
        gates_h = gates_h + bias_hh  # must stay inside r * (.) for the n gate, as in nn.GRU
    reset_x, update_x, new_x = gates_x.chunk(3, dim=-1)
    reset_h, update_h, new_h = gates_h.chunk(3, dim=-1)
    reset_gate = torch.sigmoid(reset_x + reset_h)
    update_gate = torch.sigmoid(update_x + update_h)
    new_state = torch.tanh(new_x + reset_gate * new_h)
    h_candidate = new_state + update_gate * (h_prev - new_state)
    return keep_or_update(keep_hidden, h_prev, h_candidate)


def gru_layer(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
              bias_hh: Optional[Tensor], noise: RecurrentNoise) -> tuple[Tensor, Tensor]:
    """One GRU layer over a sequence: input (T, B, I), h0 (B, H) -> output (T, B, H), h_T."""
    gates_x = input @ weight_ih.t()  # one GEMM for the input projection of all timesteps
    if bias_ih is not None:
        gates_x = gates_x + bias_ih
    h, outputs = h0, []
    gates_x = gates_x.unbind(0)  # per-step views: indexing would make backward O(T^2)
    for t in range(input.shape[0]):
        h = gru_cell_step(gates_x[t], h, weight_hh, bias_hh, noise.at(t).keep_hidden)
        outputs.append(h)
    return torch.stack(outputs), h


NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_layer(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
              bias_hh: Optional[Tensor], noise: RecurrentNoise, nonlinearity: str = "tanh") -> tuple[Tensor, Tensor]:
    """One simple-RNN layer over a sequence: input (T, B, I), h0 (B, H) -> output (T, B, H), h_T."""
    activation = NONLINEARITIES[nonlinearity]
    pre_x = input @ weight_ih.t()  # one GEMM for the input projection of all timesteps
    if bias_ih is not None:
        pre_x = pre_x + (bias_ih + bias_hh)
    h, outputs = h0, []
    pre_x = pre_x.unbind(0)  # per-step views: indexing would make backward O(T^2)
    for t in range(input.shape[0]):
        h_candidate = activation(pre_x[t] + h @ weight_hh.t())
        h = keep_or_update(noise.at(t).keep_hidden, h, h_candidate)
        outputs.append(h)
    return torch.stack(outputs), h
