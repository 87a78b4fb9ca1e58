"""GRU with zoneout on h: a drop-in for torch.nn.GRU (parameter names, shapes, gate order r, z, n).

Without noise it computes exactly nn.GRU's equations:

    r  = sigmoid(x W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)          (reset gate)
    u  = sigmoid(x W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)          (update gate, nn.GRU's "z")
    n  = tanh(x W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
    h~ = (1 - u) * n + u * h_{t-1}
    h_t = d_t * h_{t-1} + (1 - d_t) * h~                            (zoneout, d_t: keep_hidden)

The original code's ZoneoutGRU (docs/replication.md §1.1) has the same zoneout step. Only keep_hidden noise
applies (there is no cell); plumbing shared with RNN lives in rnn.HiddenStateRecurrence, and `impl`
picks the loop of zoneout.nn.reference ("reference") or the fused CPU kernels ("fused"; dispatch.py).
"""
from __future__ import annotations

from typing import Sequence

from zoneout.nn.dispatch import layer_function
from zoneout.nn.noise import RecurrentNoiseSource
from zoneout.nn.rnn import HiddenStateRecurrence


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
        layer_fn = layer_function("gru", self.impl)
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
