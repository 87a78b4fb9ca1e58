"""GPU kernels for lstm_function.py: per step one cuBLAS GEMM (torch.addmm/mm) and one Triton launch.

Options: `gemm_dtype=torch.bfloat16` runs the recurrent GEMMs on bf16 copies of h, W_hh and dgates
(the kernels write those copies as a by-product; gates, cells, states and all accumulations stay
fp32, the GEMM included: its fp32 output is chosen once per device by capability, and an error
says so where there is none); TF32 follows torch.backends.cuda.matmul.allow_tf32. `cuda_graphs=True`
replays each sequence's step loop from a captured CUDA graph (cuda_graphs.py) to remove per-step
launch cost. Every launch and capture runs under torch.cuda.device(the tensors' device): Triton
launches on the *current* device's current stream, PyTorch ops on the tensors' device.
Works on CPU tensors under TRITON_INTERPRET=1, which is how tests/test_fused_triton.py checks it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor

from zoneout.nn.fused.cuda_graphs import GraphRunner
from zoneout.nn.fused.masks import BOOL, CompactNoise, device_values
from zoneout.nn.fused.triton_kernels import backward_step_kernel, block_size, forward_step_kernel


def on_device(device: torch.device):
    """Make `device` current for the launches inside (a no-op off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


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


def _mm_fp32_output(a: Tensor, b: Tensor, out: Tensor) -> None:
    """cuBLAS: low-precision operands, fp32 accumulate, fp32 output (the aten::mm.dtype_out kernel)."""
    torch.mm(a, b, out_dtype=out.dtype, out=out)


def _mm_upcast(a: Tensor, b: Tensor, out: Tensor) -> None:
    """CPU (the interpreter tests): the same numbers, bf16/fp16 -> fp32 is exact, then an fp32 GEMM."""
    torch.mm(a.float(), b.float(), out=out)


def _has_fp32_output_gemm() -> bool:
    return "dtype_out" in torch.ops.aten.mm.overloads()  # torch.mm(..., out_dtype=) exists (CUDA kernel with it)


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def lowp_gemm_for(device: torch.device, lowp: torch.dtype) -> Callable[[Tensor, Tensor, Tensor], None]:
    """The fp32-output GEMM for `lowp` operands on `device`, or a RuntimeError saying why there is none
    (never a silent bf16-output GEMM: that would round the recurrent pre-activation to bf16)."""
    if device.type == "cpu":
        return _mm_upcast
    problem = None
    if not _has_fp32_output_gemm():
        problem = f"torch {torch.__version__} has no torch.mm(..., out_dtype=torch.float32)"
    elif lowp == torch.bfloat16 and _capability(device) < (8, 0):
        problem = "bf16 GEMMs need compute capability 8.0 or newer, {} has {}.{}".format(device, *_capability(device))
    if problem:
        raise RuntimeError(f"gemm_dtype={lowp} needs a GEMM with {lowp} inputs and fp32 output: {problem}. "
                           "Set zoneout.nn.fused.options['gemm_dtype'] = None for fp32 GEMMs.")
    return _mm_fp32_output


class TritonKernels:
    """`capture` (tests): a stand-in for cuda_graphs.cuda_capture, which also turns graphs on off CUDA."""

    def __init__(self, cuda_graphs: bool = False, gemm_dtype: Optional[torch.dtype] = None, capture=None):
        if gemm_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"gemm_dtype must be None, torch.bfloat16 or torch.float16, got {gemm_dtype}")
        self.cuda_graphs = cuda_graphs
        self.gemm_dtype = gemm_dtype
        self._capture = capture
        self._graphs = None
        self._lowp_gemms: dict = {}  # (device, dtype) -> GEMM, chosen once

    def _lowp(self, like: Tensor) -> Optional[torch.dtype]:
        return self.gemm_dtype if self.gemm_dtype is not None and like.dtype == torch.float32 else None

    def _lowp_gemm(self, device: torch.device, lowp: torch.dtype) -> Callable[[Tensor, Tensor, Tensor], None]:
        key = (device, lowp)
        if key not in self._lowp_gemms:
            self._lowp_gemms[key] = lowp_gemm_for(device, lowp)
        return self._lowp_gemms[key]

    def _use_graphs(self, like: Tensor) -> bool:
        return self.cuda_graphs and (like.is_cuda or self._capture is not None)

    def forward(self, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool):
        with on_device(gates.device):
            values = device_values(noise, h0.dtype, h0.device)
            if self._use_graphs(gates):
                return self.graph_runner().forward(self.forward_eager, gates, h0, c0, weight_hh, noise, save, values)
            return self.forward_eager(gates, h0, c0, weight_hh, noise, save, values)

    def backward(self, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise: CompactNoise):
        with on_device(gates.device):
            values = device_values(noise, gates.dtype, gates.device)
            args = (grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise)
            if self._use_graphs(gates):
                return self.graph_runner().backward(self.backward_eager, *args, values)
            return self.backward_eager(*args, values)

    def graph_runner(self):
        """The cache of captured graphs (its max_bytes / max_entries can be set)."""
        if self._graphs is None:
            self._graphs = GraphRunner() if self._capture is None else GraphRunner(capture=self._capture)
        return self._graphs

    def forward_eager(self, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool, values=None):
        T, B, H = gates.shape[0], gates.shape[1], h0.shape[1]
        output = h0.new_empty(T, B, H)
        cells = h0.new_empty(T + 1 if save else 2, B, H)
        tanh_cells = h0.new_empty(T if save else 1, B, H)
        cells[0].copy_(c0)
        values = device_values(noise, h0.dtype, h0.device) if values is None else values
        dummy, lowp = gates.new_empty(1, dtype=torch.uint8), self._lowp(h0)
        if lowp is not None:
            mm_fp32 = self._lowp_gemm(h0.device, lowp)
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
                mm_fp32(h_lowp[t % 2], weight_t, recurrent)
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
        values = device_values(noise, dh.dtype, dh.device) if values is None else values
        dummy, lowp = gates.new_empty(1, dtype=torch.uint8), self._lowp(dh)
        if lowp is not None:
            mm_fp32 = self._lowp_gemm(dh.device, lowp)
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
                mm_fp32(dgates_lowp, weight_lowp, dh_gemm)
            else:
                dh.addmm_(dgates[t], weight_hh)
        if lowp is not None:
            dh.add_(dh_gemm)
        return [dgates, dh, dc]


def triton_cdiv(n: int, block: int) -> int:
    return (n + block - 1) // block
