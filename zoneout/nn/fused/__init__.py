"""Fast fused zoneout LSTM layer: ZoneoutLSTM(impl="fused") registers `lstm_layer` on first use.

`lstm_layer` has exactly zoneout.nn.reference.lstm_layer's signature and semantics. It runs one
autograd.Function (lstm_function.py) whose per-step work is one recurrent GEMM plus one fused
pointwise pass, with kernels picked by device:
  CPU  -> C++ kernels (cpu_kernels.cpp, built once and cached), else the PyTorch-op kernels;
  CUDA -> Triton pointwise kernels with cuBLAS GEMMs (triton_backend.py), else the PyTorch-op kernels.
What the kernels do not handle falls back to the reference loop: float-tensor masks, dtypes other
than float32/float64, an empty sequence or batch, or devices other than CPU/CUDA.

`gru_layer` / `rnn_layer` (gru_rnn_function.py) are the same for zoneout.nn.gru / rnn's layers, on the
CPU with the C++ kernels only (else their reference loops).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.nn import reference
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import buffers, cpu_gemm, torch_kernels
from zoneout.nn.fused.gru_rnn_function import gru_layer, rnn_layer
from zoneout.nn.fused.lstm_function import FusedLSTMFunction, run_inference, uses_onednn
from zoneout.nn.fused.masks import CompactNoise, UnsupportedMask, compact_noise
from zoneout.nn.fused.settings import options
from zoneout.nn.noise import RecurrentNoise

__all__ = ["lstm_layer", "gru_layer", "rnn_layer", "kernels_for", "options", "release_workspaces"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_CPU_CHOICES = ("auto", "cpp", "torch")
_triton: dict = {}
_cpp: dict = {}


class _CppKernels:
    """Adapts the compiled module to the kernels interface of lstm_function.py, with `gemm` ("mkl" or
    "onednn"; function.uses_onednn says where it applies). The forward's output, cells and tanh(c~) and
    the backward's dgates (T,B,4H) come from the per-thread buffer pool (buffers.py): a fresh buffer of
    that size costs its first-touch page faults on every call (~0.1 s per step at T=100, B=128, H=1000)."""

    def __init__(self, module, gemm: str):
        self.module, self.gemm = module, gemm

    def forward(self, gates, h0, c0, weight_hh, noise: CompactNoise, save: bool):
        T = gates.shape[0]
        results = buffers.results(h0, T, T + 1 if save else 2, T if save else 1)  # output, cells, tanh(c~)
        return self.module.forward(gates, h0, c0, weight_hh, noise.kinds(), noise.values(), noise.tensors(), save,
                                   uses_onednn(self, gates), results)

    def backward(self, grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise: CompactNoise):
        dgates = buffers.take(tuple(gates.shape), gates.dtype)
        return self.module.backward(grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh,
                                    noise.kinds(), noise.values(), noise.tensors(), dgates, uses_onednn(self, gates))


def release_workspaces() -> None:
    """Free the calling thread's pooled CPU buffers (they are re-created on demand)."""
    buffers.release()


def kernels_for(device: torch.device, hidden_size: int = 0, steps: int = 2):
    """The kernels object `lstm_layer` uses on `device` for `hidden_size` units over `steps` timesteps under
    the current `options`."""
    if device.type == "cpu":
        choice, gemm = options["cpu_kernels"], cpu_gemm.resolve(options["cpu_gemm"], hidden_size, steps)
        if choice not in _CPU_CHOICES:
            raise ValueError(f"options['cpu_kernels'] must be one of {_CPU_CHOICES}, got {choice!r}")
        if choice != "torch":
            module = cpu_ext.load()
            if module is not None:
                if _cpp.get("module") is not module:
                    _cpp.clear()
                    _cpp["module"] = module
                if gemm not in _cpp:
                    _cpp[gemm] = _CppKernels(module, gemm)
                return _cpp[gemm]
            if choice == "cpp":
                raise RuntimeError(f"the fused C++ CPU kernels are unavailable: {cpu_ext.error()}")
        return torch_kernels
    choice = options["gpu_kernels"]
    if choice not in ("auto", "triton", "torch"):
        raise ValueError(f"options['gpu_kernels'] must be 'auto', 'triton' or 'torch', got {choice!r}")
    if choice != "torch":
        try:
            from zoneout.nn.fused import triton_backend
        except ImportError:
            if choice == "triton":
                raise
        else:
            key = (bool(options["cuda_graphs"]), options["gemm_dtype"])
            if key not in _triton:  # one instance per setting: it owns the captured CUDA graphs
                _triton[key] = triton_backend.TritonKernels(cuda_graphs=key[0], gemm_dtype=key[1])
            return _triton[key]
    return torch_kernels


def _shapes_fit(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh) -> bool:
    """The layout the kernels index without further checks: (T,B,I), (B,H) x2, (4H,I), (4H,H), (4H,) x2."""
    if input.dim() != 3 or weight_hh.dim() != 2 or (bias_ih is None) != (bias_hh is None):
        return False
    (_, B, I), H = input.shape, weight_hh.shape[1]
    expected = [(h0, (B, H)), (c0, (B, H)), (weight_ih, (4 * H, I)), (weight_hh, (4 * H, H))]
    expected += [(b, (4 * H,)) for b in (bias_ih, bias_hh) if b is not None]
    return all(tuple(t.shape) == shape for t, shape in expected)


def lstm_layer(input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], noise: RecurrentNoise
               ) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over a sequence. input (T,B,I), h0/c0 (B,H) -> output (T,B,H), h_T, c_T."""
    tensors = [input, h0, c0, weight_ih, weight_hh] + [b for b in (bias_ih, bias_hh) if b is not None]
    if (not _shapes_fit(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh) or 0 in input.shape[:2]
            or input.device.type not in ("cpu", "cuda") or input.dtype not in _SUPPORTED_DTYPES
            or any(t.dtype != input.dtype or t.device != input.device for t in tensors)):
        # the reference handles (or rejects with torch's own error) whatever the kernels do not read
        return reference.lstm_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, noise)
    T, B, H = input.shape[0], input.shape[1], weight_hh.shape[1]
    try:
        compact = compact_noise(noise, (T, B, H), input.device)
    except UnsupportedMask:
        return reference.lstm_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, noise)
    kernels = kernels_for(input.device, H, T)
    args = (input.contiguous(), h0.contiguous(), c0.contiguous(), weight_ih.contiguous(), weight_hh.contiguous(),
            bias_ih, bias_hh, compact)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return FusedLSTMFunction.apply(*args, kernels)
    return run_inference(kernels, *args)


