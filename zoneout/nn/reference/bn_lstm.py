"""The reference recurrent-BN LSTM ([BN]: Cooijmans et al. 2017, the paper's pMNIST baseline): a plain
per-timestep loop, the oracle of the fast path (zoneout.nn.fused.bn_lstm_function).

    gates = BN_ih(x_t W_ih^T) + BN_hh(h_{t-1} W_hh^T) + b     (per-timestep batch statistics)
    c~_t  = f * c_{t-1} + m_t * i * g
    h~_t  = o * tanh(BN_c(c~_t))
    c_t, h_t zoned as in the plain LSTM (reference/lstm.py)
"""
from __future__ import annotations

import torch
from torch import Tensor

from zoneout.nn.noise import RecurrentNoise, keep_or_update, scale_update


def bn_lstm_layer(input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                  bias_hh: Tensor, bn_ih, bn_hh, bn_c, noise: RecurrentNoise) -> tuple[Tensor, Tensor, Tensor]:
    """One BN-LSTM layer: input (T, B, I), h0/c0 (B, H) -> output (T, B, H), h_T, c_T. bn_ih, bn_hh, bn_c:
    the layer's zoneout.nn.bn_lstm.StepwiseBatchNorm modules (per-timestep statistics and population)."""
    steps = input.shape[0]
    gates_x = bn_ih(input @ weight_ih.t(), start=0) + (bias_ih + bias_hh)  # per-timestep stats, all at once
    gates_x = gates_x.unbind(0)  # per-step views: indexing would make backward O(T^2)
    # bn_hh and bn_c see one timestep per call: read the population once for all steps in eval; in
    # training collect the batch statistics and fold them into the population once, after the loop.
    training = bn_hh.training
    statistics = {bn_hh: ([], []), bn_c: ([], [])} if training else {
        bn: [rows.unbind(0) for rows in bn.population(0, steps)] for bn in (bn_hh, bn_c)}

    def norm(bn, value: Tensor, t: int) -> Tensor:
        if training:
            mean, var = bn.batch_statistics(value)
            statistics[bn][0].append(mean.detach())
            statistics[bn][1].append(var.detach())
        else:
            mean, var = statistics[bn][0][t], statistics[bn][1][t]
        return bn.normalize(value, mean, var)

    h, c, outputs = h0, c0, []
    for t in range(steps):
        noise_t = noise.at(t)
        gates = gates_x[t] + norm(bn_hh, h @ weight_hh.t(), t)
        i, f, g, o = gates.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_candidate = f * c + scale_update(noise_t.update_keep, i * g)
        h_candidate = o * torch.tanh(norm(bn_c, c_candidate, t))
        c = keep_or_update(noise_t.keep_cell, c, c_candidate)
        h = keep_or_update(noise_t.keep_hidden, h, h_candidate)
        outputs.append(h)
    if training:
        for bn, (means, variances) in statistics.items():
            bn.update_population(torch.stack(means), torch.stack(variances), start=0)
    return torch.stack(outputs), h, c
