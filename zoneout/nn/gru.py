"""GRU with zoneout on h: a drop-in for torch.nn.GRU (parameter names, shapes, gate order r, z, n).

Without noise it computes exactly nn.GRU's equations:

    r  = sigmoid(x W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)          (reset gate)
    u  = sigmoid(x W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)          (update gate, nn.GRU's "z")
    n  = tanh(x W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
    h~ = (1 - u) * n + u * h_{t-1}
    h_t = d_t * h_{t-1} + (1 - d_t) * h~                            (zoneout, d_t: keep_hidden)

The original code's ZoneoutGRU (docs/replication.md §1.1) has the same zoneout step. Only keep_hidden noise
applies (there is no cell); plumbing shared with RNN lives in rnn.HiddenStateRecurrence, and `impl`
picks this file's loop ("reference") or the fused CPU kernels ("fused"; "auto": where installed).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, keep_or_update
from zoneout.nn.rnn import HiddenStateRecurrence, resolve_layer


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


class GRU(HiddenStateRecurrence):
    """torch.nn.GRU plus zoneout on h (`zoneout_hidden` = probability a unit KEEPS its previous h)."""

    gate_count = 3
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = (), zoneout_hidden: float = 0.0, *,
                 bidirectional: bool = False, impl: str = "auto", device=None, dtype=None, proj_size=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         recurrent_regularizers, zoneout_hidden, bidirectional=bidirectional, impl=impl,
                         device=device, dtype=dtype, proj_size=proj_size)

    def layer_forward(self, layer, input, h0, noise, direction=0):
        layer_fn = resolve_layer(self.impl, "gru_layer", gru_layer)
        return layer_fn(input, h0, *self.layer_weights(layer, direction), noise)


class ZoneoutGRU(GRU):
    """nn.GRU plus zoneout on h: positional arguments as nn.GRU's, `zoneout_hidden` (the probability a
    unit KEEPS its previous h; fresh masks per timestep, example, unit, layer and direction) and `impl` by
    keyword."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, zoneout_hidden: float = 0.0,
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = (), impl: str = "auto", proj_size=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, recurrent_regularizers,
                         zoneout_hidden, bidirectional=bidirectional, impl=impl, device=device, dtype=dtype,
                         proj_size=proj_size)
