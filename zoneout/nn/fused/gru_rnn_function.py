"""Fused CPU GRU and simple-RNN layers with zoneout on h: GRU / RNN(impl="auto") use them.

`gru_layer` and `rnn_layer` have the signatures and semantics of the reference loops
zoneout.nn.reference.gru_layer and rnn_layer; only the keep_hidden noise field is read
(the modules reject the others). As the fused LSTM (function.py): one GEMM projects the input of all
timesteps, the C++ kernels (cpu_hidden_kernels.cpp) run the recurrence (per step one recurrent GEMM
and one fused pointwise pass) and, backward, walk time in reverse (one pointwise pass and one GEMM
per step) returning dL/d(pre-activations) of every step; the weight, bias and input gradients are
then a few GEMMs over all timesteps.

Everything else runs the reference loop: other devices or dtypes, float-tensor masks, an empty
sequence or batch, misshapen arguments, cpu_kernels options other than "auto"/"cpp", or no C++ module
(ZONEOUT_FUSED_CPP=0, a failed build).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zoneout.nn import reference
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import buffers
from zoneout.nn.fused.lstm_function import _no_autocast, column_sums, first_order_only, input_projection, project, recurrent_weight_grad
from zoneout.nn.fused.masks import CompactMask, UnsupportedMask, compact_mask
from zoneout.nn.fused.settings import options
from zoneout.nn.noise import RecurrentNoise

__all__ = ["gru_layer", "rnn_layer"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _module():
    """The compiled module, or None where the reference loop should run (fused.options decides)."""
    choice = options["cpu_kernels"]
    if choice not in ("auto", "cpp"):
        return None
    module = cpu_ext.load()
    if module is None and choice == "cpp":
        raise RuntimeError(f"the fused C++ CPU kernels are unavailable: {cpu_ext.error()}")
    return module


def _kernel_inputs(gate_count, input, h0, weight_ih, weight_hh, bias_ih, bias_hh, noise: RecurrentNoise):
    """(module, keep mask) when the kernels handle this call, else None."""
    tensors = [input, h0, weight_ih, weight_hh] + [b for b in (bias_ih, bias_hh) if b is not None]
    if (input.dim() != 3 or h0.dim() != 2 or weight_hh.dim() != 2 or (bias_ih is None) != (bias_hh is None)
            or 0 in input.shape[:2] or input.device.type != "cpu" or input.dtype not in _SUPPORTED_DTYPES
            or any(t.dtype != input.dtype or t.device != input.device for t in tensors)):
        return None
    (T, B, I), H = input.shape, weight_hh.shape[1]
    rows = gate_count * H
    expected = [(h0, (B, H)), (weight_ih, (rows, I)), (weight_hh, (rows, H))]
    expected += [(b, (rows,)) for b in (bias_ih, bias_hh) if b is not None]
    if not all(tuple(t.shape) == shape for t, shape in expected):
        return None  # the reference raises torch's own error
    try:
        keep = compact_mask("keep_hidden", noise.keep_hidden, (T, B, H), input.device)
    except UnsupportedMask:
        return None
    module = _module()
    return None if module is None else (module, keep)


def _needs_graph(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def gru_layer(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
              bias_hh: Optional[Tensor], noise: RecurrentNoise) -> tuple[Tensor, Tensor]:
    """One GRU layer: input (T, B, I), h0 (B, H) -> output (T, B, H), h_T."""
    fit = _kernel_inputs(3, input, h0, weight_ih, weight_hh, bias_ih, bias_hh, noise)
    if fit is None:
        return reference.gru_layer(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, noise)
    module, keep = fit
    args = (input.contiguous(), h0.contiguous(), weight_ih.contiguous(), weight_hh.contiguous(),
            bias_ih, None if bias_hh is None else bias_hh.contiguous(), keep, module)
    if _needs_graph([input, h0, weight_ih, weight_hh, bias_ih, bias_hh]):
        return FusedGRUFunction.apply(*args)
    with _no_autocast(input.device):
        gates = project(args[0], args[2], bias_ih)
        (output,) = module.gru_forward(gates, args[1], args[3], args[5], keep.kind, keep.value, keep.tensor, False,
                                       buffers.results(h0, input.shape[0], 1))
    return output, output[-1].clone()


def rnn_layer(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
              bias_hh: Optional[Tensor], noise: RecurrentNoise, nonlinearity: str = "tanh") -> tuple[Tensor, Tensor]:
    """One simple-RNN layer: input (T, B, I), h0 (B, H) -> output (T, B, H), h_T."""
    fit = None
    if nonlinearity in ("tanh", "relu"):
        fit = _kernel_inputs(1, input, h0, weight_ih, weight_hh, bias_ih, bias_hh, noise)
    if fit is None:
        return reference.rnn_layer(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, noise, nonlinearity)
    module, keep = fit
    relu = nonlinearity == "relu"
    args = (input.contiguous(), h0.contiguous(), weight_ih.contiguous(), weight_hh.contiguous(), bias_ih, bias_hh,
            keep, module, relu)
    if _needs_graph([input, h0, weight_ih, weight_hh, bias_ih, bias_hh]):
        return FusedRNNFunction.apply(*args)
    with _no_autocast(input.device):
        pre = input_projection(args[0], args[2], bias_ih, bias_hh)
        output = module.rnn_forward(pre, args[1], args[3], relu, keep.kind, keep.value, keep.tensor,
                                    buffers.results(h0, input.shape[0]))
    return output, output[-1].clone()


class FusedGRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
                bias_hh: Optional[Tensor], keep: CompactMask, module):
        with _no_autocast(input.device):
            gates = project(input, weight_ih, bias_ih)  # b_hh stays apart: b_hn sits inside r * (.)
            output, hn = module.gru_forward(gates, h0, weight_hh, bias_hh, keep.kind, keep.value, keep.tensor, True,
                                            buffers.results(h0, input.shape[0], input.shape[0]))
        ctx.keep, ctx.module, ctx.has_bias = keep, module, bias_ih is not None
        ctx.save_for_backward(input, h0, weight_ih, weight_hh, output, gates, hn)
        return output, output[-1].clone()  # a copy: an in-place edit of h_T cannot reach the saved output

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output: Tensor, grad_h: Tensor):
        input, h0, weight_ih, weight_hh, output, gates, hn = ctx.saved_tensors
        keep, need = ctx.keep, ctx.needs_input_grad
        T, B, I = input.shape
        H = h0.shape[1]
        with _no_autocast(input.device):
            dgh, dxn = buffers.take(tuple(gates.shape), gates.dtype), buffers.take(tuple(hn.shape), hn.dtype)
            dh0 = ctx.module.gru_backward(grad_output.contiguous(), grad_h, gates, hn, output, h0, weight_hh,
                                          keep.kind, keep.value, keep.tensor, dgh, dxn)
            # dL/d(x W_ih^T + b_ih) is dgh with its n part replaced by dxn: the r and u rows come from dgh
            flat, flat_n = dgh.view(T * B, 3 * H), dxn.view(T * B, H)
            flat_ru, x = flat[:, :2 * H], input.reshape(T * B, I)
            grad_input = grad_weight_ih = grad_bias_ih = grad_bias_hh = None
            if need[0]:
                grad_input = torch.mm(flat_n, weight_ih[2 * H:]).addmm_(flat_ru, weight_ih[:2 * H]).view(T, B, I)
            if need[2]:
                grad_weight_ih = torch.cat([torch.mm(flat_ru.t(), x), torch.mm(flat_n.t(), x)])
            grad_weight_hh = recurrent_weight_grad(flat, h0, output) if need[3] else None
            if ctx.has_bias and need[5]:
                grad_bias_hh = column_sums(flat)
            if ctx.has_bias and need[4]:
                ru = grad_bias_hh[:2 * H] if grad_bias_hh is not None else column_sums(flat_ru)
                grad_bias_ih = torch.cat([ru, column_sums(flat_n)])
        return (grad_input, dh0 if need[1] else None, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh,
                None, None)


class FusedRNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Optional[Tensor],
                bias_hh: Optional[Tensor], keep: CompactMask, module, relu: bool):
        with _no_autocast(input.device):
            activations = input_projection(input, weight_ih, bias_ih, bias_hh)  # becomes h~ of every step
            output = module.rnn_forward(activations, h0, weight_hh, relu, keep.kind, keep.value, keep.tensor,
                                        buffers.results(h0, input.shape[0]))
        ctx.keep, ctx.module, ctx.relu, ctx.has_bias = keep, module, relu, bias_ih is not None
        ctx.save_for_backward(input, h0, weight_ih, weight_hh, output, activations)
        return output, output[-1].clone()

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output: Tensor, grad_h: Tensor):
        input, h0, weight_ih, weight_hh, output, activations = ctx.saved_tensors
        keep, need = ctx.keep, ctx.needs_input_grad
        T, B, I = input.shape
        with _no_autocast(input.device):
            dpre = buffers.take(tuple(activations.shape), activations.dtype)
            dh0 = ctx.module.rnn_backward(grad_output.contiguous(), grad_h, activations, weight_hh, ctx.relu,
                                          keep.kind, keep.value, keep.tensor, dpre)
            flat = dpre.view(T * B, -1)
            grad_input = torch.mm(flat, weight_ih).view(T, B, I) if need[0] else None
            grad_weight_ih = torch.mm(flat.t(), input.reshape(T * B, I)) if need[2] else None
            grad_weight_hh = recurrent_weight_grad(flat, h0, output) if need[3] else None
            grad_bias = column_sums(flat) if ctx.has_bias and (need[4] or need[5]) else None
        return (grad_input, dh0 if need[1] else None, grad_weight_ih, grad_weight_hh,
                grad_bias if need[4] else None, grad_bias.clone() if need[5] else None, None, None, None)
