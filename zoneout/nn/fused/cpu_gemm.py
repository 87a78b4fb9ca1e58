"""Which library runs the float32 GEMMs of the fused C++ CPU LSTM: options["cpu_gemm"].

"mkl": torch.mm / addmm and, for the recurrent GEMM at H >= 256, MKL's packed-weight GEMM (cpu_common.h).
"onednn": every GEMM of the layer through oneDNN, as torch's mkldnn::_linear_pointwise (x @ W^T + b on
plain dense tensors; the op inductor's CPU backend uses), the C++ loop's recurrent weights prepacked once
per sequence by mkldnn::_reorder_linear_weight. MKL may pick slower code paths on AMD CPUs, oneDNN not.
"auto": default_cpu_gemm(hidden_size), per CPU vendor and layer width.
float64 always takes the "mkl" path (oneDNN's matmul has no float64).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.cpuinfo import cpu_vendor
from zoneout.nn.fused import buffers

CHOICES = ("auto", "mkl", "onednn")
# CPU vendor -> the smallest hidden size from which "auto" picks oneDNN: where scripts/bench.py --cpu-options
# found oneDNN ahead of MKL (results/bench_cpu_options_amd.md). A vendor missing here gets "mkl".
_ONEDNN_FROM_HIDDEN: dict[str, int] = {"amd": 256}
# The same for a one-step call (a cell): oneDNN's per-call set-up is not amortised over a sequence, so MKL
# stays ahead at H = 256 and oneDNN only pays at H = 1024 (results/bench_tts_cpu_amd_avx2.md, "GEMM library").
_ONEDNN_ONE_STEP_FROM_HIDDEN = 1024


# The input width from which a oneDNN layer's input projection (T*B rows -> 4H) runs through oneDNN (whose
# GEMM allocates a fresh result) rather than MKL's addmm into a pooled block (buffers.py): below it the fresh
# result's page faults cost more than oneDNN gains (results/bench_cpu_options_amd.md, "Input projection").
_ONEDNN_PROJECTS_FROM_INPUT = 512


def onednn_projects(input_size: int) -> bool:
    """Whether a oneDNN layer runs its input projection through oneDNN (else MKL into a pooled block)."""
    return input_size >= _ONEDNN_PROJECTS_FROM_INPUT


def default_cpu_gemm(hidden_size: int, steps: int = 2) -> str:
    """What "auto" means on this CPU for a layer of `hidden_size` units (measured per vendor, above) run
    over `steps` timesteps (one step: a cell call, with its own width rule)."""
    threshold = _ONEDNN_FROM_HIDDEN.get(cpu_vendor())
    if threshold is not None and steps <= 1:
        threshold = max(threshold, _ONEDNN_ONE_STEP_FROM_HIDDEN)
    return "onednn" if threshold is not None and hidden_size >= threshold else "mkl"


def resolve(choice: str, hidden_size: int, steps: int = 2) -> str:
    """options["cpu_gemm"] as "mkl" or "onednn" for a layer of `hidden_size` units over `steps` timesteps;
    a ValueError naming the allowed values otherwise."""
    if choice not in CHOICES:
        raise ValueError(f"options['cpu_gemm'] must be one of {CHOICES}, got {choice!r}")
    if choice == "onednn" and not torch.backends.mkldnn.is_available():
        raise RuntimeError("options['cpu_gemm'] = 'onednn' needs a torch built with oneDNN (torch.backends.mkldnn)")
    return default_cpu_gemm(hidden_size, steps) if choice == "auto" else choice


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x (N, K) @ weight^T (+ bias) through oneDNN, weight (M, K): contiguous or a transposed view, which
    oneDNN reads as is. x must be contiguous (the op would copy it otherwise)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def weight_grad(flat: Tensor, *blocks: Tensor) -> Tensor:
    """flat^T @ cat(blocks) through oneDNN: flat (N, G), the blocks' rows stack to (N, K) -> (G, K).
    oneDNN's linear reduces over the last, contiguous dimension of its input, which here is N for
    neither operand: the narrower one (the blocks, K <= G) is copied once, transposed, into a (K, N)
    buffer (pooled: buffers.py); flat^T is read as a view and the (K, G) result is returned transposed."""
    K = blocks[0].shape[-1]
    rows_t = buffers.take((K, flat.shape[0]), flat.dtype)
    start = 0
    for block in blocks:
        block = block.reshape(-1, K)
        transpose_into(rows_t[:, start:start + block.shape[0]], block)
        start += block.shape[0]
    assert start == flat.shape[0], "the blocks must have as many rows as flat"
    return linear(rows_t, flat.t()).t()


# Rows of the source per copy in transpose_into. One copy of a whole (n, K) block reads a new cache line for
# every value it writes, and at n = 12,672, K = 1,000 those lines (n x 64 B) overflow the L2 cache before the
# next output row reuses them: measured 76 ms (1 thread) / 49 ms (2) for that block, 14-19 / 9-12 ms in
# chunks of 64-512 rows (AMD EPYC, idle).
_TRANSPOSE_CHUNK = 256


def transpose_into(out: Tensor, rows: Tensor) -> None:
    """out (K, n) = rows (n, K)^T, copied in chunks of rows (see _TRANSPOSE_CHUNK)."""
    for start in range(0, rows.shape[0], _TRANSPOSE_CHUNK):
        stop = start + _TRANSPOSE_CHUNK
        out[:, start:stop].copy_(rows[start:stop].t())
