"""GPU kernels for function.py: per step one cuBLAS GEMM (torch.addmm/mm) and one Triton launch.

Options: `gemm_dtype=torch.bfloat16` runs the recurrent GEMMs on bf16 copies of h, W_hh and dgates
(the kernels write those copies as a by-product; gates, cells, states and all accumulations stay
fp32); TF32 follows torch.backends.cuda.matmul.allow_tf32. `cuda_graphs=True` replays each
sequence's step loop from a captured CUDA graph (cuda_graphs.py) to remove per-step launch cost.
Works on CPU tensors under TRITON_INTERPRET=1, which is how tests/test_fused_triton.py checks it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.nn.fused.masks import BOOL, CompactNoise
from zoneout.nn.fused.triton_kernels import backward_step_kernel, block_size, forward_step_kernel


def _mask_args(noise: CompactNoise, t: int, dummy: Tensor) -> list:
    """Per mask: the timestep's (B, H) byte view (or a dummy), its batch and unit strides."""
    args = []
    for mask in noise.fields():
        if mask.kind == BOOL:
            step = mask.tensor[t].view(torch.uint8)
            args += [step, step.stride(0), step.stride(1)]
        else:
            args += [dummy, 0, 0]
    return args


def _values(noise: CompactNoise, like: Tensor) -> Tensor:
    """The masks' expectations on the device (a host-to-device copy: outside any CUDA graph capture)."""
    return torch.tensor(noise.values(), dtype=like.dtype, device=like.device)


def _mm_fp32(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """a @ b for low-precision a, b into `out`; fp32 accumulate and output where cuBLAS offers it."""
    try:
        return torch.mm(a, b, out_dtype=out.dtype, out=out)
    except (RuntimeError, TypeError, NotImplementedError):  # older torch / backend without mm.dtype
        return out.copy_(torch.mm(a, b))


class TritonKernels:
    def __init__(self, cuda_graphs: bool = False, gemm_dtype: Optional[torch.dtype] = None):
        if gemm_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"gemm_dtype must be None, torch.bfloat16 or torch.float16, got {gemm_dtype}")
        self.cuda_graphs = cuda_graphs
        self.gemm_dtype = gemm_dtype
        self._graphs = None

    def _lowp(self, like: Tensor) -> Optional[torch.dtype]:
        return self.gemm_dtype if self.gemm_dtype is not None and like.dtype == torch.float32 else None

    def forward(self, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool):
        if self.cuda_graphs and gates.is_cuda:
            return self._graph_runner().forward(self.forward_eager, gates, h0, c0, weight_hh, noise, save)
        return self.forward_eager(gates, h0, c0, weight_hh, noise, save)

    def backward(self, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise: CompactNoise):
        if self.cuda_graphs and gates.is_cuda:
            return self._graph_runner().backward(self.backward_eager, grad_output, grad_h, grad_c, gates, cells,
                                                 tanh_cells, weight_hh, noise)
        return self.backward_eager(grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise)

    def _graph_runner(self):
        if self._graphs is None:
            from zoneout.nn.fused.cuda_graphs import GraphRunner

            self._graphs = GraphRunner()
        return self._graphs

    def forward_eager(self, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool, values=None):
        T, B, H = gates.shape[0], gates.shape[1], h0.shape[1]
        output = h0.new_empty(T, B, H)
        cells = h0.new_empty(T + 1 if save else 2, B, H)
        tanh_cells = h0.new_empty(T if save else 1, B, H)
        cells[0].copy_(c0)
        values = _values(noise, h0) if values is None else values
        dummy, lowp = gates.new_empty(1, dtype=torch.uint8), self._lowp(h0)
        if lowp is not None:
            weight_t = weight_hh.t().contiguous().to(lowp)
            h_lowp = [h0.to(lowp), h0.new_empty(B, H, dtype=lowp)]  # ping-pong: read one, write the other
            recurrent = h0.new_empty(B, 4 * H)
        else:
            weight_t = weight_hh.t()
        block = block_size(B * H)
        grid = (triton_cdiv(B * H, block),)
        for t in range(T):
            h_prev = h0 if t == 0 else output[t - 1]
            c_prev, c_next = (cells[t], cells[t + 1]) if save else (cells[t % 2], cells[(t + 1) % 2])
            if lowp is not None:
                _mm_fp32(h_lowp[t % 2], weight_t, recurrent)
            else:
                gates[t].addmm_(h_prev, weight_t)
            forward_step_kernel[grid](
                gates[t], recurrent if lowp is not None else dummy, h_prev, c_prev, output[t], c_next,
                tanh_cells[t if save else 0], h_lowp[(t + 1) % 2] if lowp is not None else dummy,
                *_mask_args(noise, t, dummy), values, B, H, KC=noise.keep_cell.kind, KH=noise.keep_hidden.kind,
                KU=noise.update_keep.kind, ADD_RECURRENT=lowp is not None, SAVE=save, WRITE_LOWP=lowp is not None,
                FP64=h0.dtype == torch.float64, BLOCK=block)
        if save:
            return [output, cells, tanh_cells]
        return [output, cells[T % 2].clone()]

    def backward_eager(self, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise: CompactNoise,
                       values=None):
        T, B, H = gates.shape[0], gates.shape[1], cells.shape[2]
        dgates = torch.empty_like(gates)
        dh, dc = grad_h.contiguous().clone(), grad_c.contiguous().clone()
        values = _values(noise, dh) if values is None else values
        dummy, lowp = gates.new_empty(1, dtype=torch.uint8), self._lowp(dh)
        if lowp is not None:
            weight_lowp = weight_hh.to(lowp)
            dgates_lowp = gates.new_empty(B, 4 * H, dtype=lowp)
            dh_gemm = dh.new_zeros(B, H)
        block = block_size(B * H)
        grid = (triton_cdiv(B * H, block),)
        for t in range(T - 1, -1, -1):
            backward_step_kernel[grid](
                gates[t], cells[t], tanh_cells[t], grad_output[t], dh, dh_gemm if lowp is not None else dummy, dc,
                dgates[t], dgates_lowp if lowp is not None else dummy, *_mask_args(noise, t, dummy), values, B, H,
                KC=noise.keep_cell.kind, KH=noise.keep_hidden.kind, KU=noise.update_keep.kind,
                ADD_DH_GEMM=lowp is not None and t < T - 1, WRITE_LOWP=lowp is not None, BLOCK=block)
            if lowp is not None:
                _mm_fp32(dgates_lowp, weight_lowp, dh_gemm)
            else:
                dh.addmm_(dgates[t], weight_hh)
        if lowp is not None:
            dh.add_(dh_gemm)
        return [dgates, dh, dc]


def triton_cdiv(n: int, block: int) -> int:
    return (n + block - 1) // block
