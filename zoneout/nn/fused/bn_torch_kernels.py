"""The recurrent-BN LSTM recurrence's kernels written with PyTorch ops: the CUDA path, and the CPU
fallback when the C++ kernels (bn_cpu_kernels.cpp) cannot be built.

Same contract and equations as bn_cpu_kernels.cpp `forward`, `backward`, `input_norm_forward` and
`input_norm_backward` (see there); one Python loop over time, in-place ops on preallocated buffers, no
autograd graph.
"""
from __future__ import annotations

import torch
from torch import Tensor

from zoneout.nn.fused.masks import CompactNoise
from zoneout.nn.fused.torch_kernels import _at, _keep_or_update, _split


def _batch_statistics(x: Tensor, mean: Tensor, var: Tensor, rstd: Tensor, eps: float) -> None:
    """One timestep's batch statistics of x (B, F) into the given rows: mean, biased variance, 1/sqrt(var + eps)."""
    batch_var, batch_mean = torch.var_mean(x, dim=0, unbiased=False)
    mean.copy_(batch_mean)
    var.copy_(batch_var)
    torch.rsqrt(batch_var + eps, out=rstd)

def _as_factor(mask, dtype):
    return mask.to(dtype) if isinstance(mask, Tensor) else mask


def forward(gx: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, gamma_h: Tensor, gamma_c: Tensor,
            beta_c: Tensor, mean_h: Tensor, var_h: Tensor, mean_c: Tensor, var_c: Tensor, batch_stats: bool,
            eps_h: float, eps_c: float, noise: CompactNoise, save: bool) -> list[Tensor]:
    T, B, G = gx.shape
    H = G // 4
    kept = T if save else 1
    output = h0.new_empty(T, B, H)
    cells = h0.new_empty(T + 1 if save else 2, B, H)
    gates, xh = gx, gx.new_empty(kept, B, G)  # gx is overwritten with the activated gates
    xc, tc = h0.new_empty(kept, B, H), h0.new_empty(kept, B, H)
    rstd_h, rstd_c = torch.empty_like(mean_h), torch.empty_like(mean_c)
    if not batch_stats:  # population rows are known up front
        torch.rsqrt(var_h + eps_h, out=rstd_h)
        torch.rsqrt(var_c + eps_c, out=rstd_c)
    cells[0].copy_(c0)
    weight_hh_t = weight_hh.t()
    for t in range(T):
        k = t if save else 0
        h_prev = h0 if t == 0 else output[t - 1]
        c_prev, c_next = (cells[t], cells[t + 1]) if save else (cells[t % 2], cells[(t + 1) % 2])
        a = torch.mm(h_prev, weight_hh_t, out=xh[k])
        if batch_stats:
            _batch_statistics(a, mean_h[t], var_h[t], rstd_h[t], eps_h)
        a.sub_(mean_h[t]).mul_(rstd_h[t])
        g_t = gates[t].addcmul_(a, gamma_h)
        torch.sigmoid(g_t[:, :2 * H], out=g_t[:, :2 * H])
        g_t[:, 2 * H:3 * H].tanh_()
        g_t[:, 3 * H:].sigmoid_()
        i, f, g, o = g_t.chunk(4, dim=1)
        cc = torch.mul(i, g, out=xc[k])
        update = _at(noise.update_keep, t)
        if update is not None:
            cc.mul_(_as_factor(update, cc.dtype))
        cc.addcmul_(f, c_prev)
        _keep_or_update(_at(noise.keep_cell, t), c_prev, cc, c_next)
        if batch_stats:
            _batch_statistics(cc, mean_c[t], var_c[t], rstd_c[t], eps_c)
        cc.sub_(mean_c[t]).mul_(rstd_c[t])
        torch.addcmul(beta_c, cc, gamma_c, out=tc[k]).tanh_()
        torch.mul(o, tc[k], out=output[t])
        _keep_or_update(_at(noise.keep_hidden, t), h_prev, output[t], output[t])
    if save:
        return [output, cells, gates, xh, rstd_h, xc, rstd_c, tc]
    return [output, cells[T % 2].clone()]


def backward(grad_output: Tensor, grad_h: Tensor, grad_c: Tensor, cells: Tensor, gates: Tensor, xh: Tensor,
             rstd_h: Tensor, xc: Tensor, rstd_c: Tensor, tc: Tensor, weight_hh: Tensor, gamma_h: Tensor,
             gamma_c: Tensor, batch_stats: bool, noise: CompactNoise, dgx: Tensor, da: Tensor) -> list[Tensor]:
    T, B, G = gates.shape
    dgamma_h, dgamma_c, dbeta_c = gates.new_zeros(G), gates.new_zeros(G // 4), gates.new_zeros(G // 4)
    dh, dc = grad_h.clone(), grad_c.clone()
    for t in range(T - 1, -1, -1):
        i, f, g, o = gates[t].chunk(4, dim=1)
        di, df, dg, do = dgx[t].chunk(4, dim=1)
        tc_t, xc_t, xh_t = tc[t], xc[t], xh[t]
        dh_candidate, dh_kept = _split(_at(noise.keep_hidden, t), dh.add_(grad_output[t]))
        dc_candidate, dc_kept = _split(_at(noise.keep_cell, t), dc)
        torch.mul(dh_candidate * tc_t, o * (1 - o), out=do)
        dcn = dh_candidate * o * (1 - tc_t * tc_t)  # d(BN_c output)
        s1, s2 = dcn.sum(0), (dcn * xc_t).sum(0)
        dgamma_c += s2
        dbeta_c += s1
        if batch_stats:
            dcn = dcn - s1 / B - xc_t * (s2 / B)
        dcc = dc_candidate.addcmul_(dcn, gamma_c * rstd_c[t])
        torch.mul(dcc * cells[t], f * (1 - f), out=df)
        update = _at(noise.update_keep, t)
        d_update = dcc if update is None else dcc * _as_factor(update, dcc.dtype)
        torch.mul(d_update * g, i * (1 - i), out=di)
        torch.mul(d_update * i, 1 - g * g, out=dg)
        dc = dc_kept.addcmul_(dcc, f)
        d = dgx[t]
        r1, r2 = d.sum(0), (d * xh_t).sum(0)
        dgamma_h += r2
        if batch_stats:
            d = d - r1 / B - xh_t * (r2 / B)
        torch.mul(d, gamma_h * rstd_h[t], out=da[t])
        dh = dh_kept.addmm_(da[t], weight_hh)
    return [dgx, da, dh, dc, dgamma_h, dgamma_c, dbeta_c]


def input_norm_forward(ax: Tensor, gamma: Tensor, bias: Tensor, mean: Tensor, var: Tensor, batch_stats: bool,
                       eps: float) -> list[Tensor]:
    """ax (T, B, G) normalised in place per timestep over the batch axis; returns gamma * xhat + bias and rstd.
    (Sums, not torch.var_mean: its reduction over a middle axis is several times slower on the CPU.)"""
    if batch_stats:
        mean.copy_(ax.mean(1))
        var.copy_((ax - mean.unsqueeze(1)).square_().mean(1))
    rstd = torch.rsqrt(var + eps)
    ax.sub_(mean.unsqueeze(1)).mul_(rstd.unsqueeze(1))
    return [torch.addcmul(bias, ax, gamma), rstd]


def input_norm_backward(dgx: Tensor, xhat: Tensor, rstd: Tensor, gamma: Tensor, batch_stats: bool) -> list[Tensor]:
    """d(ax) (in dgx's place), dgamma, dbias."""
    B = dgx.shape[1]
    r1, r2 = dgx.sum(1), (dgx * xhat).sum(1)
    dax = dgx
    if batch_stats:
        dax.sub_(r1.unsqueeze(1) / B).sub_(xhat * (r2.unsqueeze(1) / B))
    dax.mul_((gamma * rstd).unsqueeze(1))
    return [dax, r2.sum(0), r1.sum(0)]
