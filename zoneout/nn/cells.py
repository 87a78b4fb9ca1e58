"""One-step cells: ZoneoutLSTMCell and ZoneoutGRUCell, drop-ins for nn.LSTMCell / nn.GRUCell.

For autoregressive decoders (Tacotron 2's two decoder LSTMs) that call a cell once per output step.
Same convention as the layers: a probability is the chance a unit KEEPS its previous value; every
call draws fresh, separate masks for c and h; h~ is computed from the un-zoned candidate cell and the
returned h is the zoned one; eval uses the expectation z * prev + (1 - z) * new, no rescaling.
The LSTM step runs through the layer implementation with T = 1, so with impl="auto" one call is one
fused autograd node (input GEMM, recurrent GEMM, one fused pointwise kernel) on CPU and CUDA.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from zoneout.nn.dispatch import check_impl, layer_function
from zoneout.nn.noise import RecurrentNoise
from zoneout.nn.reference import gru_cell_step
from zoneout.nn.rnn_base import CellSurface, check_bools, check_sizes
from zoneout.nn.sequences import RecurrentInputError, check_state_dtype, compute_dtype
from zoneout.nn.zoneout_noise import Zoneout


def zoneout_lstm_cell(input: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                      bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], noise: RecurrentNoise,
                      impl: str = "auto") -> tuple[Tensor, Tensor]:
    """One zoneout LSTM step: input (B, I), h/c (B, H); noise fields None, floats or (1, B, H) bool masks."""
    _, h, c = layer_function("lstm", impl)(input.unsqueeze(0), h, c, weight_ih, weight_hh, bias_ih, bias_hh, noise)
    return h, c


def zoneout_gru_cell(input: Tensor, h: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
                     bias_hh: Optional[Tensor], keep_hidden) -> Tensor:
    """One zoneout GRU step: input (B, I), h (B, H); keep_hidden None, a float or a (B, H) bool mask."""
    gates_x = input @ weight_ih.t()
    if bias_ih is not None:
        gates_x = gates_x + bias_ih
    return gru_cell_step(gates_x, h, weight_hh, bias_hh, keep_hidden)


class _ZoneoutCell(CellSurface, nn.Module):
    """nn.RNNCellBase's parameters (weight_ih, weight_hh, bias_ih, bias_hh; gate_count * H rows) and
    input / state handling (batched (B, I) or unbatched (I,)); the layers' nn.RNNBase surface and
    argument checks (rnn_base.py), stricter than nn's cells, which take bias="False" as True."""

    gate_count = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool, zoneout_cell: float, zoneout_hidden: float,
                 device, dtype):
        super().__init__()
        check_bools(bias=bias)
        check_sizes(input_size=input_size, hidden_size=hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.zoneout = Zoneout(cell=zoneout_cell, hidden=zoneout_hidden)  # no parameters: state_dict as nn's
        rows, factory = self.gate_count * self.hidden_size, {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(rows, self.input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, self.hidden_size, **factory))
        if self.bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTMCell / nn.GRUCell's default: U(-1/sqrt(H), 1/sqrt(H)) for every parameter."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def _input(self, input: Tensor) -> tuple[Tensor, bool]:
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise RecurrentInputError(f"input must be (batch, {self.input_size}) or ({self.input_size},), "
                                      f"got {tuple(input.shape)}")
        unbatched = input.dim() == 1
        input = input.unsqueeze(0) if unbatched else input
        return input.to(compute_dtype(input, self.weight_ih)), unbatched

    def _state(self, state: Optional[Tensor], name: str, input: Tensor, unbatched: bool) -> Tensor:
        if state is None:
            return input.new_zeros(input.shape[0], self.hidden_size)
        expected = (self.hidden_size,) if unbatched else (input.shape[0], self.hidden_size)
        if tuple(state.shape) != expected:
            raise RecurrentInputError(f"{name} must have shape {expected}, got {tuple(state.shape)}")
        check_state_dtype(state, name, input.dtype)
        return (state.unsqueeze(0) if unbatched else state).to(input.dtype)

    def _noise(self, batch: int, device) -> RecurrentNoise:
        """A fresh (1, B, H) draw per call in training, the expectation in eval."""
        if not self.zoneout.active:
            return RecurrentNoise()
        return self.zoneout.noise(1, batch, self.hidden_size, device, self.training)

    def extra_repr(self) -> str:
        cell = f", zoneout_cell={self.zoneout.cell}" if self.gate_count == 4 else ""
        return f"{self.nn_extra_repr()}{cell}, zoneout_hidden={self.zoneout.hidden}"


class ZoneoutLSTMCell(_ZoneoutCell):
    """nn.LSTMCell plus zoneout; forward(input, hx=(h, c) or None) -> (h, c)."""

    gate_count = 4
    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, zoneout_cell: float = 0.0,
                 zoneout_hidden: float = 0.0, device=None, dtype=None, *, impl: str = "auto"):
        check_impl(impl)
        super().__init__(input_size, hidden_size, bias, zoneout_cell, zoneout_hidden, device, dtype)
        self.zoneout_cell, self.zoneout_hidden, self.impl = self.zoneout.cell, self.zoneout.hidden, impl

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}"

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        input, unbatched = self._input(input)
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise RecurrentInputError("hx must be a tuple (h, c)")
        h = self._state(None if hx is None else hx[0], "h", input, unbatched)
        c = self._state(None if hx is None else hx[1], "c", input, unbatched)
        h, c = zoneout_lstm_cell(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                                 self._noise(input.shape[0], input.device), self.impl)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class ZoneoutGRUCell(_ZoneoutCell):
    """nn.GRUCell plus zoneout on h; forward(input, hx=h or None) -> h."""

    gate_count = 3
    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, zoneout_hidden: float = 0.0,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 0.0, zoneout_hidden, device, dtype)
        self.zoneout_hidden = self.zoneout.hidden

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        input, unbatched = self._input(input)
        h = self._state(hx, "hx", input, unbatched)
        keep_hidden = self._noise(input.shape[0], input.device).at(0).keep_hidden
        h = zoneout_gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, keep_hidden)
        return h.squeeze(0) if unbatched else h
