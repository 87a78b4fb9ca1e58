"""Fast recurrent-BN LSTM layer: zoneout.nn.reference.bn_lstm_layer's semantics in the
fused LSTM's shape. BatchNormLSTM(impl="auto" or "fused") runs it.

`bn_lstm_layer` has the reference's signature; the layer is one autograd.Function. The input side,
BN_t(x_t W_ih^T) + b_ih + b_hh, has no recurrence: one GEMM for all timesteps, then per-timestep batch
statistics and normalisation of all of them in one pass. The recurrence: per step one recurrent GEMM and
one fused pointwise pass that also computes the BN_t statistics of h_{t-1} W_hh^T and of the candidate
cell. Backward walks time in reverse (one pointwise pass and one GEMM per step, with the BN backward
dx = gamma/sigma * (dy - mean(dy) - xhat * mean(dy * xhat))) and returns per-step gradients, from which
the input-side BN backward is one pass and the weight and input gradients are large GEMMs. The batch
statistics (biased variance) come back from the forward and are folded into the populations after it,
in the reference's order (bn_ih, bn_hh, bn_c) with the same rule (StepwiseBatchNorm.update_population:
momentum, warm-up, recalibrate_population's plain average); eval normalises with the population rows
StepwiseBatchNorm.population gives (past max_length or the trained length: the last trained one).
Statistics are computed two-pass in the kernels, not by torch.var_mean: equal up to rounding.

Kernels: C++ on the CPU (bn_cpu_kernels.cpp, built once like the fused LSTM's), else PyTorch ops
(bn_torch_kernels.py; also the CUDA path). What they do not handle runs the reference loop: dtypes other
than float32/float64, devices other than CPU/CUDA, mixed dtypes or devices, float-tensor masks, an empty
sequence, autocast, norms not shaped as BatchNormLSTM builds them. As with the fused LSTM, a double
backward raises, naming impl='reference' (the backward is not differentiable).
"""
from __future__ import annotations

import torch
from torch import Tensor

from zoneout.nn import reference
from zoneout.nn.csrc import cpu_ext
from zoneout.nn.fused import bn_torch_kernels, buffers
from zoneout.nn.fused.lstm_function import first_order_only
from zoneout.nn.fused.masks import CompactNoise, UnsupportedMask, compact_noise
from zoneout.nn.fused.settings import options
from zoneout.nn.noise import RecurrentNoise

__all__ = ["bn_lstm_layer", "kernels_for", "options", "supported"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_cpp: dict = {}


class _CppKernels:
    """Adapts the compiled module to the kernels interface (noise as kinds / values / tensors)."""

    def __init__(self, module):
        self.module = module
        self.input_norm_forward = module.input_norm_forward
        self.input_norm_backward = module.input_norm_backward

    def forward(self, gx, h0, c0, weight_hh, gamma_h, gamma_c, beta_c, mean_h, var_h, mean_c, var_c, batch_stats,
                eps_h, eps_c, noise: CompactNoise, save):
        return self.module.forward(gx, h0, c0, weight_hh, gamma_h, gamma_c, beta_c, mean_h, var_h, mean_c, var_c,
                                   batch_stats, eps_h, eps_c, noise.kinds(), noise.values(), noise.tensors(), save)

    def backward(self, grad_output, grad_h, grad_c, cells, gates, xh, rstd_h, xc, rstd_c, tc, weight_hh, gamma_h,
                 gamma_c, batch_stats, noise: CompactNoise, dgx, da):
        return self.module.backward(grad_output, grad_h, grad_c, cells, gates, xh, rstd_h, xc, rstd_c, tc, weight_hh,
                                    gamma_h, gamma_c, batch_stats, noise.kinds(), noise.values(), noise.tensors(),
                                    dgx, da)


def _backward_buffers(like: Tensor) -> tuple[Tensor, Tensor]:
    """Two buffers shaped like `like` for the backward's dgx and da. On the CPU they come from the buffer
    pool (buffers.py): a fresh (T, B, 4H) buffer costs its first-touch page faults, a third of the pointwise
    time of a step at T=100, B=128, H=256 (measured, cores busy)."""
    if like.device.type != "cpu":
        return torch.empty_like(like), torch.empty_like(like)
    return buffers.take(tuple(like.shape), like.dtype), buffers.take(tuple(like.shape), like.dtype)


def kernels_for(device: torch.device):
    """The kernels object `bn_lstm_layer` uses on `device` under the current `options`."""
    if device.type != "cpu":
        return bn_torch_kernels
    choice = options["cpu_kernels"]
    if choice not in ("auto", "cpp", "torch"):
        raise ValueError(f"options['cpu_kernels'] must be 'auto', 'cpp' or 'torch', got {choice!r}")
    if choice != "torch":
        module = cpu_ext.load(extension=cpu_ext.BN_LSTM)
        if module is not None:
            if _cpp.get("module") is not module:
                _cpp.update(module=module, kernels=_CppKernels(module))
            return _cpp["kernels"]
        if choice == "cpp":
            raise RuntimeError(f"the recurrent-BN LSTM C++ CPU kernels are unavailable: "
                               f"{cpu_ext.error(cpu_ext.BN_LSTM)}")
    return bn_torch_kernels


def _input_side(kernels, input, weight_ih, bias, gamma_x, mean_x, var_x, batch_stats, eps_x):
    """gx = BN_t(x_t W_ih^T; gamma_x) + bias for all t: one GEMM, then the normalisation. Also returns
    xhat_x and rstd_x (for the backward)."""
    T, B, I = input.shape
    ax = torch.mm(input.reshape(T * B, I), weight_ih.t()).view(T, B, -1)
    gx, rstd_x = kernels.input_norm_forward(ax, gamma_x, bias, mean_x, var_x, batch_stats, eps_x)
    return gx, ax, rstd_x


class BNLSTMFunction(torch.autograd.Function):
    """The whole layer: input (T,B,I), h0, c0 (B,H), weight_ih (4H,I), weight_hh (4H,H), bias = b_ih + b_hh (4H),
    gammas of BN(x W_ih^T), BN(h W_hh^T), BN(c~) and beta of BN(c~) -> output (T,B,H), h_T, c_T.
    `stats`: (mean, var) pairs (T, F) of the three norms: filled with the batch statistics when batch_stats,
    else the population rows to use."""

    @staticmethod
    def forward(ctx, input, h0, c0, weight_ih, weight_hh, bias, gamma_x, gamma_h, gamma_c, beta_c, stats, batch_stats,
                eps, noise, kernels):
        (mean_x, var_x), (mean_h, var_h), (mean_c, var_c) = stats
        with torch.autocast(device_type=input.device.type, enabled=False):
            gx, xhat_x, rstd_x = _input_side(kernels, input, weight_ih, bias, gamma_x, mean_x, var_x, batch_stats,
                                             eps[0])
            saved = kernels.forward(gx, h0, c0, weight_hh, gamma_h, gamma_c, beta_c, mean_h, var_h, mean_c, var_c,
                                    batch_stats, eps[1], eps[2], noise, True)
        output, cells = saved[0], saved[1]
        ctx.batch_stats, ctx.noise, ctx.kernels = batch_stats, noise, kernels
        ctx.save_for_backward(input, h0, weight_ih, weight_hh, gamma_x, gamma_h, gamma_c, xhat_x, rstd_x, *saved)
        # copies, so that an in-place edit by the caller cannot reach the buffers saved for backward
        return output, output[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output, grad_h, grad_c):
        (input, h0, weight_ih, weight_hh, gamma_x, gamma_h, gamma_c, xhat_x, rstd_x,
         output, cells, gates, xh, rstd_h, xc, rstd_c, tc) = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.autocast(device_type=output.device.type, enabled=False):
            dgx, da, dh0, dc0, dgamma_h, dgamma_c, dbeta_c = ctx.kernels.backward(
                grad_output.contiguous(), grad_h, grad_c, cells, gates, xh, rstd_h, xc, rstd_c, tc, weight_hh,
                gamma_h, gamma_c, ctx.batch_stats, ctx.noise, *_backward_buffers(gates))
            dax, dgamma_x, dbias = ctx.kernels.input_norm_backward(dgx, xhat_x, rstd_x, gamma_x, ctx.batch_stats)
            T, B, I = input.shape
            G = dax.shape[2]
            flat_x = dax.view(T * B, G)
            grad_input = torch.mm(flat_x, weight_ih).view(T, B, I) if need[0] else None
            grad_weight_ih = torch.mm(flat_x.t(), input.reshape(T * B, I)) if need[3] else None
            grad_weight_hh = None
            if need[4]:  # sum_t da_t^T h_{t-1}, with h_{-1} = h0 and h_t = output[t]
                flat = da.view(T * B, G)
                grad_weight_hh = torch.mm(flat[:B].t(), h0)
                if T > 1:
                    grad_weight_hh.addmm_(flat[B:].t(), output[:-1].reshape((T - 1) * B, -1))
        grads = (grad_input, dh0, dc0, grad_weight_ih, grad_weight_hh, dbias, dgamma_x, dgamma_h, dgamma_c, dbeta_c)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * 5


def supported(input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
              bias_hh: Tensor, bn_ih, bn_hh, bn_c) -> bool:
    """Whether the fast path computes exactly this layer (else the caller runs the reference)."""
    if input.dim() != 3 or input.shape[0] == 0 or weight_hh.dim() != 2:
        return False
    if input.device.type not in ("cpu", "cuda") or input.dtype not in _SUPPORTED_DTYPES:
        return False
    if torch.is_autocast_enabled(input.device.type):
        return False
    (_, B, I), H = input.shape, weight_hh.shape[1]
    if bn_ih.bias is not None or bn_hh.bias is not None or bn_c.bias is None:
        return False
    if not bn_ih.training == bn_hh.training == bn_c.training:
        return False
    shapes = [(h0, (B, H)), (c0, (B, H)), (weight_ih, (4 * H, I)), (weight_hh, (4 * H, H)), (bias_ih, (4 * H,)),
              (bias_hh, (4 * H,)), (bn_ih.weight, (4 * H,)), (bn_hh.weight, (4 * H,)), (bn_c.weight, (H,)),
              (bn_c.bias, (H,))]
    tensors = [t for t, _ in shapes] + [bn.running_mean for bn in (bn_ih, bn_hh, bn_c)]
    return (all(tuple(t.shape) == shape for t, shape in shapes)
            and all(t.dtype == input.dtype and t.device == input.device for t in tensors))


def bn_lstm_layer(input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                  bias_hh: Tensor, bn_ih, bn_hh, bn_c, noise: RecurrentNoise) -> tuple[Tensor, Tensor, Tensor]:
    """One BN-LSTM layer: input (T, B, I), h0/c0 (B, H) -> output (T, B, H), h_T, c_T."""
    arguments = (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, bn_ih, bn_hh, bn_c)
    if not supported(*arguments):
        return reference.bn_lstm_layer(*arguments, noise)
    steps, batch, hidden = input.shape[0], input.shape[1], weight_hh.shape[1]
    try:
        compact = compact_noise(noise, (steps, batch, hidden), input.device)
    except UnsupportedMask:
        return reference.bn_lstm_layer(*arguments, noise)
    kernels = kernels_for(input.device)
    norms, training = (bn_ih, bn_hh, bn_c), bn_hh.training
    if training:
        stats = tuple((input.new_empty(steps, bn.num_features), input.new_empty(steps, bn.num_features))
                      for bn in norms)
    else:
        stats = tuple(tuple(s.detach().contiguous() for s in bn.population(0, steps)) for bn in norms)
    bias = bias_ih + bias_hh  # under autograd: its gradient reaches both
    args = (input.contiguous(), h0.contiguous(), c0.contiguous(), weight_ih.contiguous(), weight_hh.contiguous(),
            bias.contiguous(), *(t.contiguous() for t in (bn_ih.weight, bn_hh.weight, bn_c.weight, bn_c.bias)))
    eps = tuple(float(bn.eps) for bn in norms)
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        output, h_last, c_last = BNLSTMFunction.apply(*args, stats, training, eps, compact, kernels)
    else:
        with torch.no_grad(), torch.autocast(device_type=input.device.type, enabled=False):
            (x, h0_, c0_, weight_ih_, weight_hh_, bias_, gamma_x, gamma_h, gamma_c, beta_c) = args
            (mean_x, var_x), (mean_h, var_h), (mean_c, var_c) = stats
            gx, _, _ = _input_side(kernels, x, weight_ih_, bias_, gamma_x, mean_x, var_x, training, eps[0])
            output, c_last = kernels.forward(gx, h0_, c0_, weight_hh_, gamma_h, gamma_c, beta_c, mean_h, var_h, mean_c,
                                             var_c, training, eps[1], eps[2], compact, False)
        h_last = output[-1].clone()
    if training:  # in the reference's order: bn_ih, bn_hh, bn_c
        for bn, (mean, var) in zip(norms, stats):
            bn.update_population(mean, var, start=0)
    return output, h_last, c_last
