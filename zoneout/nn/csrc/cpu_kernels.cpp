// Fused zoneout LSTM recurrence for the CPU: the whole time loop runs here, so a step costs one
// recurrent GEMM (MKL's packed-weight GEMM for float32, else at::addmm_; or oneDNN's for float32 under
// options["cpu_gemm"] = "onednn", the `onednn` argument) plus one pass of fused,
// vectorized pointwise code per batch row -- no Python and no autograd nodes per step.
//
// Equations and mask semantics: zoneout/nn/reference.py. Gate order i, f, g, o. Masks, activations
// and the recurrent GEMM: cpu_common.h. The module also holds the GRU / simple-RNN kernels
// (cpu_hidden_kernels.cpp).
#include "cpu_common.h"

namespace {

using namespace zoneout_cpu;

// One timestep's pointwise forward for every batch row. `gates` (B, 4H) holds pre-activations on
// entry and the activated gates on exit; `tanh_cell` receives tanh(c~).
template <typename T>
void forward_pointwise(int64_t t, int64_t B, int64_t H, T* gates, const T* recurrent, const T* h_prev,
                       const T* c_prev, T* h_next, T* c_next, T* tanh_cell, const Mask& keep_cell,
                       const Mask& keep_hidden, const Mask& update_keep) {
  at::parallel_for(0, B, row_grain(4 * H), [&](int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    T* i = gates + b * 4 * H;
    if (recurrent != nullptr) {  // the recurrent GEMM wrote its own buffer: pre-activation = x-part + h-part
      at::vec::map2([](Vectorized<T> x, Vectorized<T> r) { return x + r; }, i, i, recurrent + b * 4 * H, 4 * H);
    }
    T *f = i + H, *g = i + 2 * H, *o = i + 3 * H;
    const T* cp = c_prev + b * H;
    T* tc = tanh_cell + b * H;
    sigmoid_(i, 2 * H);
    tanh_(g, H);
    sigmoid_(o, H);
    // c~ = f * c_prev + update_keep * i * g, written to `tc` for now (tanh'ed below).
    const Row update = row_of(update_keep, t, b, /*absent_keeps=*/true);
    switch (update.mode) {
      case Row::kAll:
        for (int64_t j = 0; j < H; ++j) tc[j] = f[j] * cp[j] + i[j] * g[j];
        break;
      case Row::kNone:
        for (int64_t j = 0; j < H; ++j) tc[j] = f[j] * cp[j];
        break;
      case Row::kWeight: {
        const T w = static_cast<T>(update.weight);
        for (int64_t j = 0; j < H; ++j) tc[j] = f[j] * cp[j] + i[j] * g[j] * w;
        break;
      }
      case Row::kPerUnit:
        for (int64_t j = 0; j < H; ++j) tc[j] = f[j] * cp[j] + i[j] * g[j] * static_cast<T>(update.keep[j]);
        break;
    }
    keep_or_update(row_of(keep_cell, t, b, false), cp, tc, c_next + b * H, H);
    tanh_(tc, H);
    T* hn = h_next + b * H;
    for (int64_t j = 0; j < H; ++j) hn[j] = o[j] * tc[j];
    keep_or_update(row_of(keep_hidden, t, b, false), h_prev + b * H, hn, hn, H);
  }
  });
}

// The backward of one (t, b) row; restrict-qualified parameters let the compiler vectorize it.
// `recurrent` (kRecurrent): the GEMM's part of dL/dh_t, kept apart from `dh` and added here.
template <typename T, bool kRecurrent>
void backward_row(int64_t H, const T* __restrict__ i, const T* __restrict__ f, const T* __restrict__ g,
                  const T* __restrict__ o, const T* __restrict__ cp, const T* __restrict__ tc,
                  const T* __restrict__ go, const T* __restrict__ recurrent, const T* __restrict__ keep_h,
                  const T* __restrict__ keep_c, const T* __restrict__ m, T* __restrict__ dh,
                  T* __restrict__ dc, T* __restrict__ di, T* __restrict__ df, T* __restrict__ dg,
                  T* __restrict__ dout) {
  for (int64_t j = 0; j < H; ++j) {
    T dh_total = go[j] + dh[j];
    if constexpr (kRecurrent) dh_total += recurrent[j];
    const T dh_candidate = (T(1) - keep_h[j]) * dh_total;
    const T dc_total = dc[j];
    const T dc_candidate = (T(1) - keep_c[j]) * dc_total + dh_candidate * o[j] * (T(1) - tc[j] * tc[j]);
    dout[j] = dh_candidate * tc[j] * o[j] * (T(1) - o[j]);
    df[j] = dc_candidate * cp[j] * f[j] * (T(1) - f[j]);
    di[j] = dc_candidate * m[j] * g[j] * i[j] * (T(1) - i[j]);
    dg[j] = dc_candidate * m[j] * i[j] * (T(1) - g[j] * g[j]);
    dc[j] = keep_c[j] * dc_total + dc_candidate * f[j];
    dh[j] = keep_h[j] * dh_total;
  }
}

// One timestep's pointwise backward. On entry `dh` (plus `recurrent`, the previous GEMM's result, where
// not null) holds dL/dh_t from later steps and `dc` dL/dc_t; on exit `dh` holds the part of dL/dh_{t-1}
// that bypasses the GEMM (zoneout's kept h) and `dc` holds dL/dc_{t-1}. `dgates` (B, 4H) receives
// dL/d(pre-activations).
template <typename T>
void backward_pointwise(int64_t t, int64_t B, int64_t H, const T* gates, const T* c_prev, const T* tanh_cell,
                        const T* grad_output, const T* recurrent, T* dh, T* dc, T* dgates,
                        const Mask& keep_cell, const Mask& keep_hidden, const Mask& update_keep) {
  at::parallel_for(0, B, row_grain(4 * H), [&](int64_t begin, int64_t end) {
  std::vector<T> scratch(3 * H);  // per thread: the row's masks as multipliers
  T *keep_h = scratch.data(), *keep_c = keep_h + H, *m = keep_h + 2 * H;
  for (int64_t b = begin; b < end; ++b) {
    const T* i = gates + b * 4 * H;
    T* di = dgates + b * 4 * H;
    fill_factors(row_of(keep_hidden, t, b, false), keep_h, H);
    fill_factors(row_of(keep_cell, t, b, false), keep_c, H);
    fill_factors(row_of(update_keep, t, b, true), m, H);
    const auto row = recurrent != nullptr ? backward_row<T, true> : backward_row<T, false>;
    row(H, i, i + H, i + 2 * H, i + 3 * H, c_prev + b * H, tanh_cell + b * H, grad_output + b * H,
        recurrent != nullptr ? recurrent + b * H : nullptr, keep_h, keep_c, m, dh + b * H, dc + b * H, di,
        di + H, di + 2 * H, di + 3 * H);
  }
  });
}

// gates (T, B, 4H): the input projection plus biases; overwritten with the activated gates.
// Returns output (T,B,H), cells (T+1,B,H; cells[0] = c0) and tanh(c~) (T,B,H) when `save`,
// else output and c_T only (cells then holds 2 steps, tanh(c~) 1). `buffers`: those three to write
// into (result_tensor, cpu_common.h), or none.
std::vector<Tensor> forward(Tensor gates, Tensor h0, Tensor c0, Tensor weight_hh, std::vector<int64_t> kinds,
                            std::vector<double> values, std::vector<std::optional<Tensor>> tensors, bool save,
                            bool onednn, std::vector<Tensor> buffers) {
  TORCH_CHECK(gates.is_contiguous() && h0.is_contiguous() && c0.is_contiguous(), "contiguous inputs expected");
  const auto masks = masks_of(kinds, values, tensors);
  const int64_t T = gates.size(0), B = gates.size(1), H = h0.size(1);
  Tensor output = result_tensor(buffers, 0, 3, {T, B, H}, h0);
  Tensor cells = result_tensor(buffers, 1, 3, {save ? T + 1 : 2, B, H}, h0);
  Tensor tanh_cells = result_tensor(buffers, 2, 3, {save ? T : 1, B, H}, h0);
  cells[0].copy_(c0);
  const RecurrentGemm recurrent_gemm(weight_hh, B, T, onednn);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "zoneout_lstm_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      const Tensor h_prev = t == 0 ? h0 : output[t - 1];
      Tensor gates_t = gates[t];
      const Tensor recurrent = recurrent_gemm(h_prev, gates_t);
      const int64_t c_in = save ? t : t % 2, c_out = save ? t + 1 : (t + 1) % 2;
      forward_pointwise<scalar_t>(t, B, H, gates_t.data_ptr<scalar_t>(),
                                  recurrent.defined() ? recurrent.data_ptr<scalar_t>() : nullptr,
                                  h_prev.data_ptr<scalar_t>(),
                                  cells[c_in].data_ptr<scalar_t>(), output[t].data_ptr<scalar_t>(),
                                  cells[c_out].data_ptr<scalar_t>(), tanh_cells[save ? t : 0].data_ptr<scalar_t>(),
                                  masks[0], masks[1], masks[2]);
    }
  });
  if (save) return {output, cells, tanh_cells};
  return {output, cells[T % 2].clone()};
}

// Walks time backwards. Fills dgates (T,B,4H) (for the weight, bias and input gradients, which the
// caller computes as large GEMMs; a reused workspace spares the page faults of a fresh buffer) and
// returns it with dh0 and dc0. Per step dh += dgates_t @ W_hh: addmm_, or with `onednn` oneDNN's
// x @ W^T with W = W_hh^T (packed once for a sequence).
std::vector<Tensor> backward(Tensor grad_output, Tensor grad_h, Tensor grad_c, Tensor gates, Tensor cells,
                             Tensor tanh_cells, Tensor weight_hh, std::vector<int64_t> kinds,
                             std::vector<double> values, std::vector<std::optional<Tensor>> tensors, Tensor dgates,
                             bool onednn) {
  TORCH_CHECK(grad_output.is_contiguous() && gates.is_contiguous(), "contiguous inputs expected");
  const auto masks = masks_of(kinds, values, tensors);
  const int64_t T = gates.size(0), B = gates.size(1), H = cells.size(2);
  TORCH_CHECK(dgates.sizes() == gates.sizes() && dgates.is_contiguous() && dgates.dtype() == gates.dtype(),
              "dgates must be a contiguous tensor shaped and typed like gates");
  Tensor dh = grad_h.clone(at::MemoryFormat::Contiguous);
  Tensor dc = grad_c.clone(at::MemoryFormat::Contiguous);
  std::optional<OnednnLinear> backward_gemm;
  if (onednn) backward_gemm.emplace(weight_hh.t(), B, /*pack=*/T > 1);
  // oneDNN's GEMM returns a new tensor: rather than adding it to dh in a pass of its own, the next step's
  // pointwise pass reads it (`recurrent`); after the loop it is added to dh0.
  Tensor recurrent;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "zoneout_lstm_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      Tensor dgates_t = dgates[t];
      backward_pointwise<scalar_t>(t, B, H, gates[t].data_ptr<scalar_t>(), cells[t].data_ptr<scalar_t>(),
                                   tanh_cells[t].data_ptr<scalar_t>(), grad_output[t].data_ptr<scalar_t>(),
                                   recurrent.defined() ? recurrent.data_ptr<scalar_t>() : nullptr,
                                   dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), dgates_t.data_ptr<scalar_t>(),
                                   masks[0], masks[1], masks[2]);
      if (backward_gemm) {
        recurrent = (*backward_gemm)(dgates_t);
      } else {
        dh.addmm_(dgates_t, weight_hh);
      }
    }
  });
  if (recurrent.defined()) dh.add_(recurrent);
  return {dgates, dh, dc};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused zoneout LSTM layer forward (CPU)");
  m.def("backward", &backward, "fused zoneout LSTM layer backward (CPU)");
  zoneout_cpu::register_hidden_kernels(m);
  zoneout_cpu::register_mask_sampler(m);
}
