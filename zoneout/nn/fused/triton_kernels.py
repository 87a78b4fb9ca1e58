"""Triton kernels for one timestep's fused pointwise work (forward and backward) of the zoneout LSTM.

One program handles BLOCK consecutive (example, unit) pairs of a (B, H) step; it reads the four
gate pre-activations of each pair, so the in-place write of the activated gates is race-free.
Masks are read as bytes through their (B, H) view of the timestep's (T, B, H) expansion (strides
0 or 1 for broadcast dims), the expectations from a 3-element tensor of the compute dtype (a
Python float would arrive as fp32 and spoil float64). A mask KIND is 0 absent, 1 scalar, 2 bool.
Runs on CUDA, and on CPU tensors under TRITON_INTERPRET=1 (how the tests check it).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x, FP64: tl.constexpr):
    # 1 - 2/(exp(2|x|)+1) with the sign restored; in fp32 Cephes' odd polynomial below |x| = 0.625,
    # where the difference cancels (in fp64 the cancellation costs ~1e-16 absolute, which is fine).
    a = tl.abs(x)
    large = 1.0 - 2.0 / (tl.exp(a + a) + 1.0)
    large = tl.where(x < 0, -large, large)
    if FP64:
        return large
    z = x * x
    small = ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z + 1.33314422036e-1) * z
             - 3.33332819422e-1) * z * x + x
    return tl.where(a < 0.625, small, large)


@triton.jit
def _mask_factor(ptr, stride_b, stride_h, values, index: tl.constexpr, b, j, valid, like,
                 KIND: tl.constexpr, ABSENT: tl.constexpr):
    """The mask as a multiplier (bool -> 0/1) of like's dtype; ABSENT where there is no mask."""
    if KIND == 1:
        return tl.zeros_like(like) + tl.load(values + index)
    elif KIND == 2:
        keep = tl.load(ptr + b * stride_b + j * stride_h, mask=valid, other=0)
        return (keep != 0).to(like.dtype)
    else:
        return tl.zeros_like(like) + ABSENT


@triton.jit
def _keep_or_update(previous, candidate, ptr, stride_b, stride_h, values, index: tl.constexpr, b, j, valid,
                    KIND: tl.constexpr):
    """Zoneout: keep ? previous : candidate for bool masks (exact), the lerp for expectations."""
    if KIND == 1:
        return candidate + tl.load(values + index) * (previous - candidate)
    elif KIND == 2:
        keep = tl.load(ptr + b * stride_b + j * stride_h, mask=valid, other=0)
        return tl.where(keep != 0, previous, candidate)
    else:
        return candidate


@triton.jit
def _pair_indices(B, H, BLOCK: tl.constexpr):
    """This program's (example, unit) pairs: flat offsets into (B, H), their bounds mask, b, j, and
    the offset of gate i of each pair in a (B, 4H) tensor."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = offs // H
    j = offs % H
    return offs, offs < B * H, b, j, b * 4 * H + j


@triton.jit
def _load_gates(ptr, row, H, valid):
    """The four gate values (i, f, g, o) of each (example, unit) pair of a (B, 4H) row-major tensor."""
    return (tl.load(ptr + row, mask=valid, other=0.0), tl.load(ptr + row + H, mask=valid, other=0.0),
            tl.load(ptr + row + 2 * H, mask=valid, other=0.0), tl.load(ptr + row + 3 * H, mask=valid, other=0.0))


@triton.jit
def _store_gates(ptr, row, H, valid, i, f, g, o):
    """Store (i, f, g, o) into a (B, 4H) tensor, converted to its dtype."""
    dtype = ptr.dtype.element_ty
    tl.store(ptr + row, i.to(dtype), mask=valid)
    tl.store(ptr + row + H, f.to(dtype), mask=valid)
    tl.store(ptr + row + 2 * H, g.to(dtype), mask=valid)
    tl.store(ptr + row + 3 * H, o.to(dtype), mask=valid)


@triton.jit
def forward_step_kernel(gates, recurrent, h_prev, c_prev, h_next, c_next, tanh_cell, h_next_lowp,
                        keep_c, kc_sb, kc_sh, keep_h, kh_sb, kh_sh, update, u_sb, u_sh, values, B, H,
                        KC: tl.constexpr, KH: tl.constexpr, KU: tl.constexpr, ADD_RECURRENT: tl.constexpr,
                        SAVE: tl.constexpr, WRITE_LOWP: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    """gates (B,4H): pre-activations (plus `recurrent` (B,4H) if ADD_RECURRENT, e.g. a bf16 GEMM's
    result); overwritten with the activated gates if SAVE. Writes h_next, c_next, tanh(c~) if SAVE,
    and a low-precision copy of h_next for the next step's GEMM if WRITE_LOWP."""
    offs, valid, b, j, row = _pair_indices(B, H, BLOCK)
    pre_i, pre_f, pre_g, pre_o = _load_gates(gates, row, H, valid)
    if ADD_RECURRENT:
        rec_i, rec_f, rec_g, rec_o = _load_gates(recurrent, row, H, valid)
        pre_i += rec_i.to(pre_i.dtype)
        pre_f += rec_f.to(pre_i.dtype)
        pre_g += rec_g.to(pre_i.dtype)
        pre_o += rec_o.to(pre_i.dtype)
    i = _sigmoid(pre_i)
    f = _sigmoid(pre_f)
    g = _tanh(pre_g, FP64)
    o = _sigmoid(pre_o)
    cp = tl.load(c_prev + offs, mask=valid, other=0.0)
    hp = tl.load(h_prev + offs, mask=valid, other=0.0)
    update_keep = _mask_factor(update, u_sb, u_sh, values, 2, b, j, valid, i, KU, 1.0)
    candidate = f * cp + i * g * update_keep
    c = _keep_or_update(cp, candidate, keep_c, kc_sb, kc_sh, values, 0, b, j, valid, KC)
    tc = _tanh(candidate, FP64)
    h = _keep_or_update(hp, o * tc, keep_h, kh_sb, kh_sh, values, 1, b, j, valid, KH)
    tl.store(c_next + offs, c, mask=valid)
    tl.store(h_next + offs, h, mask=valid)
    if WRITE_LOWP:
        tl.store(h_next_lowp + offs, h.to(h_next_lowp.dtype.element_ty), mask=valid)
    if SAVE:
        tl.store(tanh_cell + offs, tc, mask=valid)
        _store_gates(gates, row, H, valid, i, f, g, o)


@triton.jit
def backward_step_kernel(gates, c_prev, tanh_cell, grad_output, dh, dh_gemm, dc, dgates, dgates_lowp,
                         keep_c, kc_sb, kc_sh, keep_h, kh_sb, kh_sh, update, u_sb, u_sh, values, B, H,
                         KC: tl.constexpr, KH: tl.constexpr, KU: tl.constexpr, ADD_DH_GEMM: tl.constexpr,
                         WRITE_LOWP: tl.constexpr, BLOCK: tl.constexpr):
    """dh, dc (B,H): on entry dL/dh_t (minus `dh_gemm`'s GEMM part if ADD_DH_GEMM) and dL/dc_t; on exit
    the non-GEMM part of dL/dh_{t-1} and dL/dc_{t-1}. dgates (B,4H) gets dL/d(pre-activations)."""
    offs, valid, b, j, row = _pair_indices(B, H, BLOCK)
    i, f, g, o = _load_gates(gates, row, H, valid)
    cp = tl.load(c_prev + offs, mask=valid, other=0.0)
    tc = tl.load(tanh_cell + offs, mask=valid, other=0.0)
    dh_total = tl.load(grad_output + offs, mask=valid, other=0.0) + tl.load(dh + offs, mask=valid, other=0.0)
    if ADD_DH_GEMM:
        dh_total += tl.load(dh_gemm + offs, mask=valid, other=0.0).to(dh_total.dtype)
    dc_total = tl.load(dc + offs, mask=valid, other=0.0)
    keep_h = _mask_factor(keep_h, kh_sb, kh_sh, values, 1, b, j, valid, i, KH, 0.0)
    keep_c = _mask_factor(keep_c, kc_sb, kc_sh, values, 0, b, j, valid, i, KC, 0.0)
    m = _mask_factor(update, u_sb, u_sh, values, 2, b, j, valid, i, KU, 1.0)
    dh_candidate = (1.0 - keep_h) * dh_total
    dc_candidate = (1.0 - keep_c) * dc_total + dh_candidate * o * (1.0 - tc * tc)
    d_i = dc_candidate * m * g * i * (1.0 - i)
    d_f = dc_candidate * cp * f * (1.0 - f)
    d_g = dc_candidate * m * i * (1.0 - g * g)
    d_o = dh_candidate * tc * o * (1.0 - o)
    _store_gates(dgates, row, H, valid, d_i, d_f, d_g, d_o)
    if WRITE_LOWP:
        _store_gates(dgates_lowp, row, H, valid, d_i, d_f, d_g, d_o)
    tl.store(dc + offs, keep_c * dc_total + dc_candidate * f, mask=valid)
    tl.store(dh + offs, keep_h * dh_total, mask=valid)


def block_size(n: int) -> int:
    return min(1024, max(32, triton.next_power_of_2(n)))
