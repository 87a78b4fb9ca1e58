"""ZoneoutLSTM: a drop-in for torch.nn.LSTM with zoneout on c and h (and a seam for fast kernels).

Parameters are named and shaped exactly like nn.LSTM's (weight_ih_l0, weight_hh_l0, bias_ih_l0,
bias_hh_l0, ..., weight_ih_l0_reverse, ... when bidirectional; gate order i, f, g, o), so
`load_state_dict(nn_lstm.state_dict())` works. Padded or PackedSequence input, bidirectional,
multi-layer: stack.py / directions.py. `impl` picks how each layer's recurrence runs: "reference"
(the readable loop of zoneout.nn.reference, the test oracle), "fused" (fast kernels) or "auto"
(dispatch.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from zoneout.nn.dispatch import check_impl, layer_function
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, check_probability
from zoneout.nn.rnn_base import LayerSurface, check_layer_arguments
from zoneout.nn.sequences import RecurrentInputError, compute_dtype, finish_output, finish_state, initial_state, prepare_input
from zoneout.nn.stack import run_layers
from zoneout.nn.zoneout_noise import Zoneout


class LSTM(LayerSurface, nn.Module):
    """Multi-layer (optionally bidirectional) LSTM whose recurrence takes noise from
    `recurrent_regularizers` (one noise draw per layer, direction and forward pass). With no
    regularizers it computes exactly what nn.LSTM computes. nn.RNNBase's other attributes
    (flatten_parameters, all_weights, mode, ...) and constructor checks: rnn_base.py."""

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = (), impl: str = "auto", *,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__()
        self.dropout = check_probability("dropout", dropout)
        check_layer_arguments(input_size, hidden_size, num_layers, bias, batch_first, self.dropout, proj_size)
        if proj_size:
            raise ValueError(f"proj_size={proj_size} is not supported by {type(self).__name__} (LSTM with "
                             f"projections is not implemented); use proj_size=0, or nn.LSTM without zoneout")
        check_impl(impl)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.recurrent_regularizers = nn.ModuleList(recurrent_regularizers)
        self.impl = impl
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in ("", "_reverse")[:self.num_directions]:
                name = lambda kind: f"{kind}_l{layer}{suffix}"  # noqa: E731
                self.register_parameter(name("weight_ih"), nn.Parameter(torch.empty(4 * hidden_size, layer_input, **factory)))
                self.register_parameter(name("weight_hh"), nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory)))
                if bias:
                    self.register_parameter(name("bias_ih"), nn.Parameter(torch.empty(4 * hidden_size, **factory)))
                    self.register_parameter(name("bias_hh"), nn.Parameter(torch.empty(4 * hidden_size, **factory)))
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.nn_extra_repr()}, impl={self.impl!r}"

    def reset_parameters(self) -> None:
        """nn.LSTM's default: U(-1/sqrt(H), 1/sqrt(H)) for every parameter."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer: int, direction: int = 0
                      ) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        suffix = "_reverse" if direction == 1 else ""
        get = lambda name: getattr(self, f"{name}_l{layer}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def layer_noise(self, layer: int, seq_len: int, batch: int, device) -> RecurrentNoise:
        """One fresh draw; `layer` is the state row layer * num_directions + direction."""
        noise = RecurrentNoise()
        for regularizer in self.recurrent_regularizers:
            noise = noise.merged(regularizer.noise(seq_len, batch, self.hidden_size, device, self.training, layer))
        return noise

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[tuple[Tensor, Tensor]] = None):
        """Same contract as nn.LSTM.forward: input (T, B, I), (B, T, I) with batch_first, unbatched (T, I)
        or a PackedSequence; hx = (h_0, c_0), each (num_layers * num_directions, [B,] H). Returns output
        (a PackedSequence for packed input) and (h_n, c_n), each sequence's state at its last valid step."""
        prepared = prepare_input(input, self.input_size, self.batch_first)
        dtype = compute_dtype(prepared.x, self.weight_ih_l0)
        prepared.x = prepared.x.to(dtype)
        rows = self.num_layers * self.num_directions
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise RecurrentInputError("hx must be a tuple (h_0, c_0)")
        states = tuple(initial_state(None if hx is None else hx[k], name, prepared, rows, self.hidden_size, dtype)
                       for k, name in enumerate(("h_0", "c_0")))
        layer_fn = layer_function("lstm", self.impl)

        def layer_for(layer: int, direction: int):
            weights = self.layer_weights(layer, direction)

            def run(x, state, noise):
                output, h, c = layer_fn(x, state[0], state[1], *weights, noise)
                return output, (h, c)
            return run

        noise_for = lambda row, T, B: self.layer_noise(row, T, B, prepared.x.device)  # noqa: E731
        output, (h_n, c_n) = run_layers(prepared, states, self.num_layers, self.num_directions, self.dropout,
                                        self.training, layer_for, noise_for)
        return finish_output(output, prepared, self.batch_first), (finish_state(h_n, prepared),
                                                                   finish_state(c_n, prepared))


class ZoneoutLSTM(LSTM):
    """nn.LSTM plus zoneout: `zoneout_cell` / `zoneout_hidden` are the probabilities that a unit
    KEEPS its previous c / h (fresh masks per timestep, example, unit, layer and direction;
    expectation in eval). Positional arguments as nn.LSTM's; zoneout and `impl` by keyword."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, zoneout_cell: float = 0.0,
                 zoneout_hidden: float = 0.0, impl: str = "auto",
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = ()):

        zoneout = Zoneout(cell=zoneout_cell, hidden=zoneout_hidden)
        regularizers = ([zoneout] if zoneout.active else []) + list(recurrent_regularizers)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, regularizers, impl,
                         bidirectional=bidirectional, proj_size=proj_size, device=device, dtype=dtype)
        self.zoneout_cell, self.zoneout_hidden = zoneout.cell, zoneout.hidden

    def extra_repr(self) -> str:
        return (f"{self.nn_extra_repr()}, zoneout_cell={self.zoneout_cell}, zoneout_hidden={self.zoneout_hidden}, "
                f"impl={self.impl!r}")
