"""The fused recurrence's kernels written with PyTorch ops: the fallback when the C++ kernels cannot
be built, and the "PyTorch ops inside an autograd.Function" option of the CPU comparison.

Same contract as cpu_kernels.cpp `forward` / `backward` (see there); one Python loop over time,
in-place ops on preallocated buffers, no autograd graph.
"""
from __future__ import annotations

import torch
from torch import Tensor

from zoneout.nn.fused.masks import ABSENT, BOOL, CompactMask, CompactNoise


def _at(mask: CompactMask, t: int):
    """A step's mask: None, a float (or a 0-d GPU tensor, see masks.py) or a bool (B, H) view."""
    if mask.kind == ABSENT:
        return None
    return mask.tensor[t] if mask.kind == BOOL else mask.value


def _keep_or_update(keep, previous: Tensor, candidate: Tensor, out: Tensor) -> None:
    if keep is None:
        out.copy_(candidate)
    elif isinstance(keep, Tensor) and keep.dtype == torch.bool:
        torch.where(keep, previous, candidate, out=out)
    else:
        torch.lerp(candidate, previous, keep.to(out.dtype) if isinstance(keep, Tensor) else keep, out=out)


def _split(keep, grad: Tensor) -> tuple[Tensor, Tensor]:
    """grad through a zoneout mix: (part to the candidate, part to the kept previous value)."""
    if keep is None:
        return grad, torch.zeros_like(grad)
    if isinstance(keep, Tensor) and keep.dtype == torch.bool:
        return grad.masked_fill(keep, 0), grad.masked_fill(~keep, 0)
    return grad * (1 - keep), grad * keep


def forward(gates: Tensor, h0: Tensor, c0: Tensor, weight_hh: Tensor, noise: CompactNoise, save: bool
            ) -> list[Tensor]:
    T, B, H = gates.shape[0], gates.shape[1], h0.shape[1]
    output = h0.new_empty(T, B, H)
    cells = h0.new_empty(T + 1 if save else 2, B, H)
    tanh_cells = h0.new_empty(T if save else 1, B, H)
    cells[0].copy_(c0)
    weight_hh_t = weight_hh.t()
    for t in range(T):
        h_prev = h0 if t == 0 else output[t - 1]
        c_prev, c_next = (cells[t], cells[t + 1]) if save else (cells[t % 2], cells[(t + 1) % 2])
        tanh_cell = tanh_cells[t if save else 0]
        gates_t = gates[t].addmm_(h_prev, weight_hh_t)
        i, f, g, o = gates_t.chunk(4, dim=1)
        torch.sigmoid(gates_t[:, :2 * H], out=gates_t[:, :2 * H])
        g.tanh_()
        o.sigmoid_()
        update = _at(noise.update_keep, t)
        torch.mul(i, g, out=tanh_cell)
        if update is not None:
            tanh_cell.mul_(update.to(tanh_cell.dtype) if isinstance(update, Tensor) else update)
        tanh_cell.addcmul_(f, c_prev)  # c~
        _keep_or_update(_at(noise.keep_cell, t), c_prev, tanh_cell, c_next)
        tanh_cell.tanh_()
        torch.mul(o, tanh_cell, out=output[t])
        _keep_or_update(_at(noise.keep_hidden, t), h_prev, output[t], output[t])
    if save:
        return [output, cells, tanh_cells]
    return [output, cells[T % 2].clone()]


def backward(grad_output: Tensor, grad_h: Tensor, grad_c: Tensor, gates: Tensor, cells: Tensor,
             tanh_cells: Tensor, weight_hh: Tensor, noise: CompactNoise) -> list[Tensor]:
    T = gates.shape[0]
    dgates = torch.empty_like(gates)
    dh, dc = grad_h.clone(), grad_c.clone()
    for t in range(T - 1, -1, -1):
        i, f, g, o = gates[t].chunk(4, dim=1)
        di, df, dg, do = dgates[t].chunk(4, dim=1)
        tanh_cell = tanh_cells[t]
        dh_candidate, dh_kept = _split(_at(noise.keep_hidden, t), dh.add_(grad_output[t]))
        dc_candidate, dc_kept = _split(_at(noise.keep_cell, t), dc)
        dc_candidate = dc_candidate + dh_candidate * o * (1 - tanh_cell * tanh_cell)
        torch.mul(dh_candidate * tanh_cell, o * (1 - o), out=do)
        torch.mul(dc_candidate * cells[t], f * (1 - f), out=df)
        update = _at(noise.update_keep, t)
        d_update = dc_candidate if update is None else dc_candidate * (
            update.to(dc.dtype) if isinstance(update, Tensor) else update)
        torch.mul(d_update * g, i * (1 - i), out=di)
        torch.mul(d_update * i, 1 - g * g, out=dg)
        dc = dc_kept.addcmul_(dc_candidate, f)
        dh = dh_kept.addmm_(dgates[t], weight_hh)
    return [dgates, dh, dc]
