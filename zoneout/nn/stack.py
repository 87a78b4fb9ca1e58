"""Layers x directions, the loop nn.LSTM / nn.GRU run, shared by ZoneoutLSTM and ZoneoutGRU / RNN.

Layer l, direction d uses state row l * num_directions + d and its own noise draw (so masks are
independent per layer and per direction); a layer's output is the two directions' outputs
concatenated on the feature axis (forward first), and dropout acts between layers only.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from zoneout.nn.directions import Layer, run_direction
from zoneout.nn.noise import RecurrentNoise
from zoneout.nn.sequences import Prepared


def run_layers(prepared: Prepared, states: tuple[Tensor, ...], num_layers: int, num_directions: int,
               dropout: float, training: bool, layer_for: Callable[[int, int], Layer],
               noise_for: Callable[[int, int, int], RecurrentNoise]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """states: each (num_layers * num_directions, B, H). layer_for(layer, direction) -> Layer;
    noise_for(row, T, B) -> that row's noise. Returns the last layer's output and the final states."""
    x = prepared.x
    T, B = x.shape[0], x.shape[1]
    finals: list[list[Tensor]] = [[] for _ in states]
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            row = layer * num_directions + direction
            output, state = run_direction(layer_for(layer, direction), layer_input, tuple(s[row] for s in states),
                                          noise_for(row, T, B), prepared.lengths, prepared.lengths_tensor,
                                          reverse=direction == 1)
            outputs.append(output)
            for final, s in zip(finals, state):
                final.append(s)
        output = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
        layer_input = output if layer == num_layers - 1 else F.dropout(output, dropout, training)
    return layer_input, tuple(torch.stack(final) for final in finals)
