"""Recurrent layers with only a hidden state (tanh-RNN here, GRU in gru.py), with zoneout on h.

`RNN` is a drop-in for torch.nn.RNN: parameters named and shaped alike (weight_ih_l0 (H, I),
weight_hh_l0 (H, H), bias_ih_l0, bias_hh_l0, ...), and without noise exactly its equations:

    h~_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)        act = tanh (paper) or relu (original code)
    h_t  = d_t * h_{t-1} + (1 - d_t) * h~_t                      (zoneout, d_t: keep_hidden)

The paper calls the model "tanh-RNN"; the original char-PTB code builds it with ReLU (docs/replication.md
§1.1, §6.14), hence `nonlinearity`. Noise comes from `recurrent_regularizers` (one `noise(...)` call
per layer and forward pass); only keep_hidden noise has a meaning without a cell.

`impl` (as ZoneoutLSTM's, dispatch.py): "reference" runs the loops of zoneout.nn.reference, "fused" the
fused CPU kernels (zoneout.nn.fused.gru_rnn_function; they run the loops themselves for what they do not handle).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from zoneout.nn.dispatch import check_impl, layer_function
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, check_probability
from zoneout.nn.reference import NONLINEARITIES
from zoneout.nn.rnn_base import LayerSurface, check_layer_arguments, refuse_proj_size
from zoneout.nn.sequences import compute_dtype, finish_output, finish_state, initial_state, prepare_input
from zoneout.nn.stack import run_layers
from zoneout.nn.zoneout_noise import Zoneout


class HiddenStateRecurrence(LayerSurface, nn.Module):
    """Shared plumbing of GRU and RNN: nn.RNN-style parameters, shapes, layers, directions, packed
    input, noise and dropout. Subclasses set `gate_count`, `mode` and implement `layer_forward`."""

    gate_count = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = (), zoneout_hidden: float = 0.0, *,
                 bidirectional: bool = False, impl: str = "auto", device=None, dtype=None, proj_size=None):
        super().__init__()
        refuse_proj_size(proj_size)
        self.impl = check_impl(impl)
        self.dropout = check_probability("dropout", dropout)
        check_layer_arguments(input_size, hidden_size, num_layers, bias, batch_first, self.dropout)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        zoneout = Zoneout(hidden=zoneout_hidden)
        self.zoneout_hidden = zoneout.hidden
        regularizers = ([zoneout] if zoneout.active else []) + list(recurrent_regularizers)
        for regularizer in regularizers:  # fail at construction where the expectation tells already
            try:
                self._check_hidden_only(regularizer, regularizer.expectation())
            except NotImplementedError:
                pass  # a source that only overrides noise() is checked at forward time
        self.recurrent_regularizers = nn.ModuleList(regularizers)
        rows, factory = self.gate_count * self.hidden_size, {"device": device, "dtype": dtype}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for suffix in ("", "_reverse")[:self.num_directions]:
                name = lambda kind: f"{kind}_l{layer}{suffix}"  # noqa: E731
                self.register_parameter(name("weight_ih"), nn.Parameter(torch.empty(rows, layer_input, **factory)))
                self.register_parameter(name("weight_hh"), nn.Parameter(torch.empty(rows, self.hidden_size, **factory)))
                if self.bias:
                    self.register_parameter(name("bias_ih"), nn.Parameter(torch.empty(rows, **factory)))
                    self.register_parameter(name("bias_hh"), nn.Parameter(torch.empty(rows, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.RNN/GRU's default: U(-1/sqrt(H), 1/sqrt(H)) for every parameter."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def _check_hidden_only(self, regularizer: nn.Module, noise: RecurrentNoise) -> None:
        for field in ("keep_cell", "update_keep"):
            if getattr(noise, field) is not None:
                raise ValueError(
                    f"recurrent_regularizers: {type(regularizer).__name__} sets {field}, but {type(self).__name__} "
                    f"has only a hidden state (cell zoneout and recurrent dropout need an LSTM; use "
                    f"StochasticDepth(cell=False))")

    def layer_weights(self, layer: int, direction: int = 0
                      ) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        suffix = "_reverse" if direction == 1 else ""
        get = lambda name: getattr(self, f"{name}_l{layer}{suffix}", None)  # noqa: E731  (read at call time)
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def layer_noise(self, layer: int, seq_len: int, batch: int, device) -> RecurrentNoise:
        """One fresh draw; `layer` is the state row layer * num_directions + direction."""
        noise = RecurrentNoise()
        for regularizer in self.recurrent_regularizers:
            drawn = regularizer.noise(seq_len, batch, self.hidden_size, device, self.training, layer)
            self._check_hidden_only(regularizer, drawn)
            noise = noise.merged(drawn)
        return noise

    def layer_forward(self, layer: int, input: Tensor, h0: Tensor, noise: RecurrentNoise, direction: int = 0
                      ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None):
        """Same contract as nn.RNN/nn.GRU.forward: input (T, B, I) ((B, T, I) with batch_first, unbatched
        (T, I), or a PackedSequence), hx (num_layers * num_directions, B, H) -> output (T, B, D * H) (a
        PackedSequence for packed input), h_n (num_layers * num_directions, B, H)."""
        prepared = prepare_input(input, self.input_size, self.batch_first)
        dtype = compute_dtype(prepared.x, self.weight_ih_l0)
        prepared.x = prepared.x.to(dtype)
        rows = self.num_layers * self.num_directions
        states = (initial_state(hx, "hx", prepared, rows, self.hidden_size, dtype),)

        def layer_for(layer: int, direction: int):
            def run(x, state, noise):
                output, h = self.layer_forward(layer, x, state[0], noise, direction)
                return output, (h,)
            return run

        noise_for = lambda row, T, B: self.layer_noise(row, T, B, prepared.x.device)  # noqa: E731
        output, (h_n,) = run_layers(prepared, states, self.num_layers, self.num_directions, self.dropout,
                                    self.training, layer_for, noise_for)
        return finish_output(output, prepared, self.batch_first), finish_state(h_n, prepared)

    def extra_repr(self) -> str:
        return f"{self.nn_extra_repr()}, zoneout_hidden={self.zoneout_hidden}, impl={self.impl!r}"


class RNN(HiddenStateRecurrence):
    """torch.nn.RNN plus zoneout on h (`zoneout_hidden` = probability a unit KEEPS its previous h)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = (), zoneout_hidden: float = 0.0, *,
                 bidirectional: bool = False, impl: str = "auto", device=None, dtype=None, proj_size=None):
        refuse_proj_size(proj_size)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {tuple(NONLINEARITIES)}, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         recurrent_regularizers, zoneout_hidden, bidirectional=bidirectional, impl=impl,
                         device=device, dtype=dtype)

    @property
    def mode(self) -> str:
        return "RNN_RELU" if self.nonlinearity == "relu" else "RNN_TANH"

    def layer_forward(self, layer, input, h0, noise, direction=0):
        layer_fn = layer_function("rnn", self.impl)
        return layer_fn(input, h0, *self.layer_weights(layer, direction), noise, self.nonlinearity)

    def extra_repr(self) -> str:
        relu = "" if self.nonlinearity == "tanh" else f", nonlinearity={self.nonlinearity!r}"  # as nn.RNNCell shows it
        return super().extra_repr() + relu
