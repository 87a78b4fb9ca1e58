"""ZoneoutLSTM: a drop-in for torch.nn.LSTM with zoneout on c and h (and a seam for fast kernels).

Parameters are named and shaped exactly like nn.LSTM's (weight_ih_l0, weight_hh_l0, bias_ih_l0,
bias_hh_l0, ...; gate order i, f, g, o), so `load_state_dict(nn_lstm.state_dict())` works.
`impl` picks how each layer's recurrence runs: "reference" (the readable loop, the test oracle),
"fused" (fast kernels, issue 4) or "auto" (fused where registered and supported, else reference).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoneout.nn import reference
from zoneout.nn.noise import RecurrentNoise, RecurrentNoiseSource, check_probability

# name -> layer function with reference.lstm_layer's signature. Fast implementations register here.
LAYER_IMPLEMENTATIONS: dict[str, Callable] = {"reference": reference.lstm_layer}
IMPLS = ("auto", "reference", "fused")


def to_time_major(input: Tensor, input_size: int, batch_first: bool) -> tuple[Tensor, bool]:
    """nn.RNN-style input -> (T, B, I), and whether it came unbatched as (T, I)."""
    unbatched = input.dim() == 2
    if unbatched:
        input = input.unsqueeze(1)
    if input.dim() != 3 or input.shape[-1] != input_size:
        raise ValueError(f"input must be (T, B, {input_size}) (or batch_first), got {tuple(input.shape)}")
    if batch_first and not unbatched:
        input = input.transpose(0, 1)
    return input, unbatched


def register_layer_impl(name: str, layer_fn: Callable) -> None:
    LAYER_IMPLEMENTATIONS[name] = layer_fn


def _resolve_impl(impl: str) -> Callable:
    if impl == "auto":
        _try_load_fused()
        return LAYER_IMPLEMENTATIONS.get("fused", LAYER_IMPLEMENTATIONS["reference"])
    if impl == "fused":
        _try_load_fused()
        if "fused" not in LAYER_IMPLEMENTATIONS:
            raise ValueError("impl='fused' is not available in this installation; use impl='reference' or 'auto'")
    return LAYER_IMPLEMENTATIONS[impl]


def _try_load_fused() -> None:
    if "fused" not in LAYER_IMPLEMENTATIONS:
        try:
            import zoneout.nn.fused  # noqa: F401  (registers itself)
        except ImportError:
            pass


class LSTM(nn.Module):
    """Multi-layer LSTM whose recurrence takes noise from `recurrent_regularizers` (one noise draw per
    layer and forward pass). With no regularizers it computes exactly what nn.LSTM computes."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = (), impl: str = "auto"):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.dropout = check_probability("dropout", dropout)
        self.recurrent_regularizers = nn.ModuleList(recurrent_regularizers)
        self.impl = impl
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * hidden_size, layer_input)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size)))
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * hidden_size)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(4 * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's default: U(-1/sqrt(H), 1/sqrt(H)) for every parameter."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer: int) -> tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        get = lambda name: getattr(self, f"{name}_l{layer}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def layer_noise(self, layer: int, seq_len: int, batch: int, device) -> RecurrentNoise:
        noise = RecurrentNoise()
        for regularizer in self.recurrent_regularizers:
            noise = noise.merged(regularizer.noise(seq_len, batch, self.hidden_size, device, self.training, layer))
        return noise

    def _check_state(self, hx: tuple[Tensor, Tensor], batch: int, unbatched: bool) -> None:
        # A wrong-shaped state would broadcast silently inside the recurrence (nn.LSTM raises too).
        expected = (self.num_layers, self.hidden_size) if unbatched else (self.num_layers, batch, self.hidden_size)
        for name, state in zip(("h_0", "c_0"), hx):
            if tuple(state.shape) != expected:
                raise ValueError(f"hx {name} must have shape (num_layers, [batch,] hidden_size) = {expected}, "
                                 f"got {tuple(state.shape)}")

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Same contract as nn.LSTM.forward: input (T, B, I) or (B, T, I) with batch_first, or (T, I)."""
        input, unbatched = to_time_major(input, self.input_size, self.batch_first)
        seq_len, batch = input.shape[0], input.shape[1]
        if hx is None:
            zeros = input.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (zeros, zeros)
        else:
            self._check_state(hx, batch, unbatched)
            if unbatched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        layer_fn = _resolve_impl(self.impl)
        h_n, c_n, layer_input = [], [], input
        for layer in range(self.num_layers):
            noise = self.layer_noise(layer, seq_len, batch, input.device)
            output, h, c = layer_fn(layer_input, hx[0][layer], hx[1][layer], *self.layer_weights(layer), noise)
            h_n.append(h)
            c_n.append(c)
            is_last = layer == self.num_layers - 1
            layer_input = output if is_last else F.dropout(output, self.dropout, self.training)
        output, h_n, c_n = layer_input, torch.stack(h_n), torch.stack(c_n)
        if self.batch_first and not unbatched:
            output = output.transpose(0, 1)
        if unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)


class ZoneoutLSTM(LSTM):
    """nn.LSTM plus zoneout: `zoneout_cell` / `zoneout_hidden` are the probabilities that a unit
    KEEPS its previous c / h (fresh masks per timestep, example, unit and layer; expectation in eval)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, zoneout_cell: float = 0.0,
                 zoneout_hidden: float = 0.0, impl: str = "auto",
                 recurrent_regularizers: Sequence[RecurrentNoiseSource] = ()):
        from zoneout.regularizers.zoneout import Zoneout

        zoneout = Zoneout(cell=zoneout_cell, hidden=zoneout_hidden)
        regularizers = ([zoneout] if zoneout.active else []) + list(recurrent_regularizers)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, regularizers, impl)
        self.zoneout_cell, self.zoneout_hidden = zoneout.cell, zoneout.hidden

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"zoneout_cell={self.zoneout_cell}, zoneout_hidden={self.zoneout_hidden}, impl={self.impl!r}")
