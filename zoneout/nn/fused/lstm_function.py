"""The fused LSTM layer as one autograd.Function, whatever runs the per-step kernels.

Forward: one GEMM projects the input of all timesteps (plus both biases); the kernels then run
the recurrence (per step: one recurrent GEMM and one fused pointwise pass) and save the activated
gates, the cells and tanh(c~). Backward: the kernels walk time in reverse (one fused pointwise
pass and one GEMM per step) and return dL/d(pre-activations) of every step; the weight, bias and
input gradients are then a few large GEMMs over all timesteps at once.

A `kernels` object provides forward(gates, h0, c0, weight_hh, noise, save) and
backward(grad_output, grad_h, grad_c, gates, cells, tanh_cells, weight_hh, noise), and may name the
library of its float32 GEMMs in `gemm` ("onednn": then the GEMMs here go through oneDNN as well, see
cpu_gemm.py; else torch.mm).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from zoneout.nn.fused import buffers, cpu_gemm
from zoneout.nn.fused.masks import CompactNoise

DOUBLE_BACKWARD_REFUSED = (
    "double backward (a gradient of a gradient: create_graph=True, gradient penalties, Hessians) is not "
    "supported by the fused zoneout kernels, whose backward is not differentiable. Build the layer or cell "
    "with impl='reference' (plain torch ops; its double backward passes gradgradcheck) for this computation.")


def first_order_only(backward):
    """once_differentiable, refusing outright where a graph of the backward is asked for: once_differentiable
    alone hands back gradients that are constants of the inputs (a silent None or zero second derivative)."""
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():  # the engine runs backward in grad mode exactly when create_graph=True
            raise RuntimeError(DOUBLE_BACKWARD_REFUSED)
        return once(ctx, *grads)
    return checked


def uses_onednn(kernels, like: Tensor) -> bool:
    """Whether `kernels` run GEMMs of `like`'s dtype through oneDNN (float32 only)."""
    return getattr(kernels, "gemm", "mkl") == "onednn" and like.dtype == torch.float32


def input_projection(input: Tensor, weight_ih: Tensor, bias_ih: Optional[Tensor], bias_hh: Optional[Tensor],
                     onednn: bool = False) -> Tensor:
    """(T, B, 4H) pre-activations from the input alone: x W_ih^T + b_ih + b_hh, one GEMM."""
    return project(input, weight_ih, None if bias_ih is None else bias_ih + bias_hh, onednn)


def project(input: Tensor, weight: Tensor, bias: Optional[Tensor], onednn: bool = False) -> Tensor:
    """input (T, B, I) @ weight^T (+ bias) as one (T*B, I) GEMM -> (T, B, rows of weight). On the CPU the
    result goes into a pooled block (buffers.py) through MKL's addmm, except where oneDNN's GEMM, which
    allocates its own result, is the faster of the two (cpu_gemm.onednn_projects)."""
    T, B, I = input.shape
    x = input.reshape(T * B, I)
    if onednn and cpu_gemm.onednn_projects(I):
        return cpu_gemm.linear(x, weight, bias).view(T, B, -1)
    shape = (T, B, weight.shape[0])
    gates = buffers.take(shape, input.dtype) if buffers.enabled(input) else input.new_empty(shape)
    if bias is None:
        torch.mm(x, weight.t(), out=gates.view(T * B, -1))
    else:
        torch.addmm(bias, x, weight.t(), out=gates.view(T * B, -1))
    return gates


def recurrent_weight_grad(flat: Tensor, h0: Tensor, output: Tensor) -> Tensor:
    """sum_t dgates_t^T h_{t-1} with h_{-1} = h0 and h_t = output[t]; flat is dgates as (T*B, G*H)."""
    B = h0.shape[0]
    grad = torch.mm(flat[:B].t(), h0)
    if output.shape[0] > 1:
        grad.addmm_(flat[B:].t(), output[:-1].reshape(-1, output.shape[-1]))
    return grad


def column_sums(flat: Tensor) -> Tensor:
    """flat (N, G) summed over its N rows (the bias gradients), as a GEMV with a vector of ones: a
    memory-bound pass either way, and BLAS's runs at about twice the speed of torch's reduction here
    (12,800 x 4,000 float32, 1 thread, AMD EPYC: 10 ms vs 25 ms)."""
    return torch.mv(flat.t(), flat.new_ones(flat.shape[0]))


def run_inference(kernels, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, noise: CompactNoise):
    """No autograd: nothing is saved for a backward."""
    with _no_autocast(input.device):
        gates = input_projection(input, weight_ih, bias_ih, bias_hh, uses_onednn(kernels, input))
        output, c_last = kernels.forward(gates, h0, c0, weight_hh, noise, False)
    return output, output[-1].clone(), c_last


def _no_autocast(device: torch.device):
    """The kernels run in the tensors' own dtype (bf16 GEMMs are an explicit option, not autocast)."""
    return torch.autocast(device_type=device.type, enabled=False)


class FusedLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], noise: CompactNoise, kernels):
        with _no_autocast(input.device):
            return FusedLSTMFunction._forward(ctx, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, noise,
                                              kernels)

    @staticmethod
    def _forward(ctx, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, noise, kernels):
        onednn = uses_onednn(kernels, input)
        gates = input_projection(input, weight_ih, bias_ih, bias_hh, onednn)
        output, cells, tanh_cells = kernels.forward(gates, h0, c0, weight_hh, noise, True)
        ctx.noise, ctx.kernels, ctx.has_bias, ctx.onednn = noise, kernels, bias_ih is not None, onednn
        ctx.save_for_backward(input, h0, weight_ih, weight_hh, output, gates, cells, tanh_cells)
        # h_T and c_T are returned as copies so that an in-place edit by the caller cannot reach the
        # buffers saved for backward.
        return output, output[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output: Tensor, grad_h: Tensor, grad_c: Tensor):
        with _no_autocast(grad_output.device):
            return FusedLSTMFunction._backward(ctx, grad_output, grad_h, grad_c)

    @staticmethod
    def _backward(ctx, grad_output, grad_h, grad_c):
        input, h0, weight_ih, weight_hh, output, gates, cells, tanh_cells = ctx.saved_tensors
        dgates, dh0, dc0 = ctx.kernels.backward(grad_output.contiguous(), grad_h, grad_c, gates, cells,
                                                tanh_cells, weight_hh, ctx.noise)
        T, B, I = input.shape
        flat = dgates.view(T * B, -1)
        need = ctx.needs_input_grad
        if ctx.onednn:  # weight_ih.t() is read as a view; weight_grad copies x and h_{t-1} once, transposed
            grad_input = cpu_gemm.linear(flat, weight_ih.t()).view(T, B, I) if need[0] else None
            grad_weight_ih = cpu_gemm.weight_grad(flat, input) if need[3] else None
            grad_weight_hh = cpu_gemm.weight_grad(flat, h0, output[:-1]) if need[4] else None
        else:
            grad_input = torch.mm(flat, weight_ih).view(T, B, I) if need[0] else None
            grad_weight_ih = torch.mm(flat.t(), input.reshape(T * B, I)) if need[3] else None
            grad_weight_hh = recurrent_weight_grad(flat, h0, output) if need[4] else None
        grad_bias = column_sums(flat) if ctx.has_bias and (need[5] or need[6]) else None
        return (grad_input, dh0 if need[1] else None, dc0 if need[2] else None, grad_weight_ih, grad_weight_hh,
                grad_bias if need[5] else None, grad_bias.clone() if need[6] else None, None, None)
