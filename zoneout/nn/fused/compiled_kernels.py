"""The CPU alternatives measured against the C++ kernels (see scripts/bench.py --cpu-options):
the same per-step pointwise math as one function, compiled by TorchScript (no CPU fusion in the wheels: NNC needs LLVM)
or by torch.compile (inductor's C++/OpenMP backend). The time loop and the GEMMs stay in Python.

They implement the kernels interface of function.py and are correct (tested against the reference),
but they are not the default: they lose to the C++ kernels (numbers in results/bench_cpu.md).
Masks enter the step as bool tensors (mixed with torch.where, exactly) or float expectations.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.nn.fused.masks import ABSENT, BOOL, CompactMask, CompactNoise


def _mix(keep: Optional[Tensor], previous: Tensor, candidate: Tensor) -> Tensor:
    if keep is None:
        return candidate
    if keep.dtype == torch.bool:
        return torch.where(keep, previous, candidate)
    return candidate + keep * (previous - candidate)


def _factor(keep: Optional[Tensor], like: Tensor, absent: float) -> Tensor:
    if keep is None:
        return torch.full_like(like, absent)
    return keep.to(like.dtype)


def forward_step(gates: Tensor, h_prev: Tensor, c_prev: Tensor, keep_c: Optional[Tensor],
                 keep_h: Optional[Tensor], update: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    ig = i * g
    if update is not None:
        ig = ig * update.to(ig.dtype)
    c_candidate = f * c_prev + ig
    tanh_cell = torch.tanh(c_candidate)
    h = _mix(keep_h, h_prev, o * tanh_cell)
    c = _mix(keep_c, c_prev, c_candidate)
    return torch.cat([i, f, g, o], 1), c, h, tanh_cell


def backward_step(gates: Tensor, c_prev: Tensor, tanh_cell: Tensor, dh: Tensor, dc: Tensor,
                  keep_c: Optional[Tensor], keep_h: Optional[Tensor], update: Optional[Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor]:
    i, f, g, o = gates.chunk(4, 1)
    kh, kc, m = _factor(keep_h, dh, 0.0), _factor(keep_c, dc, 0.0), _factor(update, dc, 1.0)
    dh_candidate, dh_kept = dh * (1 - kh), dh * kh
    dc_candidate, dc_kept = dc * (1 - kc), dc * kc
    dc_candidate = dc_candidate + dh_candidate * o * (1 - tanh_cell * tanh_cell)
    d_update = dc_candidate * m
    dgates = torch.cat([d_update * g * i * (1 - i), dc_candidate * c_prev * f * (1 - f),
                        d_update * i * (1 - g * g), dh_candidate * tanh_cell * o * (1 - o)], 1)
    return dgates, dh_kept, dc_kept + dc_candidate * f


def _step_mask(mask: CompactMask, t: int, like: Tensor) -> Optional[Tensor]:
    """A step's mask: None, the bool (B, H) view, or the expectation as a full float tensor."""
    if mask.kind == ABSENT:
        return None
    if mask.kind == BOOL:
        return mask.tensor[t]
    return torch.full_like(like, mask.value)


class CompiledKernels:
    """mode: "script" (torch.jit.script) or "compile" (torch.compile, inductor)."""

    def __init__(self, mode: str):
        if mode == "script":  # NNC's CPU fuser needs LLVM, which the PyTorch wheels lack: ops run one by one
            self.forward_step, self.backward_step = torch.jit.script(forward_step), torch.jit.script(backward_step)
        elif mode == "compile":
            self.forward_step = torch.compile(forward_step, dynamic=False)
            self.backward_step = torch.compile(backward_step, dynamic=False)
        else:
            raise ValueError(f"mode must be 'script' or 'compile', got {mode!r}")

    def _masks(self, noise: CompactNoise, t: int, like: Tensor):
        return tuple(_step_mask(m, t, like) for m in noise.fields())

    def forward(self, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool):
        T = gates.shape[0]
        weight_hh_t = weight_hh.t().contiguous()
        outputs, cells, tanh_cells, h, c = [], [c0], [], h0, c0
        for t in range(T):
            pre = gates[t].addmm_(h, weight_hh_t)
            activated, c, h, tanh_cell = self.forward_step(pre, h, c, *self._masks(noise, t, h0))
            gates[t].copy_(activated)
            outputs.append(h)
            if save:
                cells.append(c)
                tanh_cells.append(tanh_cell)
        if save:
            return [torch.stack(outputs), torch.stack(cells), torch.stack(tanh_cells)]
        return [torch.stack(outputs), c]

    def backward(self, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise: CompactNoise):
        dgates, dh, dc = torch.empty_like(gates), grad_h, grad_c
        for t in range(gates.shape[0] - 1, -1, -1):
            dgates_t, dh_kept, dc = self.backward_step(gates[t], cells[t], tanh_cells[t], dh + grad_output[t], dc,
                                                       *self._masks(noise, t, dh))
            dgates[t].copy_(dgates_t)
            dh = dh_kept.addmm_(dgates_t, weight_hh)
        return [dgates, dh, dc]
