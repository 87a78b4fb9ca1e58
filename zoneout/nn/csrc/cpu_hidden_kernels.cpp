// Fused GRU and simple-RNN (tanh / relu) recurrences with zoneout on h, for the CPU: as the LSTM
// kernels (cpu_kernels.cpp), a step is one recurrent GEMM plus one fused pointwise pass per batch row
// forward, and one pointwise pass plus one GEMM backward.
//
// Equations: zoneout/nn/gru.py (gate order r, z(update), n as nn.GRU; b_hn stays inside
// r * (h W_hn^T + b_hn)) and zoneout/nn/rnn.py. Zoneout: h_t = d_t * h_{t-1} + (1 - d_t) * h~_t with
// the keep_hidden mask of step t (cpu_common.h).
#include "cpu_common.h"

namespace zoneout_cpu {
namespace {

// One GRU timestep forward. `gates` (B, 3H) holds x W_ih^T + b_ih on entry and r, u, n on exit;
// `recurrent` (B, 3H) is h_{t-1} W_hh^T; `hn` (B, H) receives h_{t-1} W_hn^T + b_hn.
template <typename T>
void gru_forward_pointwise(int64_t t, int64_t B, int64_t H, T* gates, const T* recurrent, const T* bias_hh,
                           const T* h_prev, T* h_next, T* hn, const Mask& keep_hidden) {
  at::parallel_for(0, B, row_grain(3 * H), [&](int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    T* r = gates + b * 3 * H;
    T *u = r + H, *n = r + 2 * H, *hnb = hn + b * H, *hb = h_next + b * H;
    const T* gh = recurrent + b * 3 * H;
    const T* hp = h_prev + b * H;
    if (bias_hh != nullptr) {
      for (int64_t j = 0; j < 2 * H; ++j) r[j] += gh[j] + bias_hh[j];
      for (int64_t j = 0; j < H; ++j) hnb[j] = gh[2 * H + j] + bias_hh[2 * H + j];
    } else {
      for (int64_t j = 0; j < 2 * H; ++j) r[j] += gh[j];
      std::copy(gh + 2 * H, gh + 3 * H, hnb);
    }
    sigmoid_(r, 2 * H);  // r and u
    for (int64_t j = 0; j < H; ++j) n[j] += r[j] * hnb[j];
    tanh_(n, H);
    for (int64_t j = 0; j < H; ++j) hb[j] = n[j] + u[j] * (hp[j] - n[j]);
    keep_or_update(row_of(keep_hidden, t, b, false), hp, hb, hb, H);
  }
  });
}

// One GRU timestep backward. On entry `dh` holds dL/dh_t from later steps; on exit the part of
// dL/dh_{t-1} that bypasses the GEMM. Fills dgh (B, 3H) = dL/d(h W_hh^T + b_hh) and dxn (B, H) =
// dL/d(x W_in^T + b_in) (the r and u parts of the input's gradient are dgh's).
template <typename T>
void gru_backward_pointwise(int64_t t, int64_t B, int64_t H, const T* gates, const T* hn, const T* h_prev,
                            const T* grad_output, T* dh, T* dgh, T* dxn, const Mask& keep_hidden) {
  at::parallel_for(0, B, row_grain(3 * H), [&](int64_t begin, int64_t end) {
  std::vector<T> scratch(H);
  T* __restrict__ k = scratch.data();
  for (int64_t b = begin; b < end; ++b) {
    fill_factors(row_of(keep_hidden, t, b, false), k, H);
    const T* __restrict__ r = gates + b * 3 * H;
    const T* __restrict__ u = r + H;
    const T* __restrict__ n = r + 2 * H;
    const T* __restrict__ hnb = hn + b * H;
    const T* __restrict__ hp = h_prev + b * H;
    const T* __restrict__ go = grad_output + b * H;
    T* __restrict__ dhb = dh + b * H;
    T* __restrict__ dr = dgh + b * 3 * H;
    T* __restrict__ du = dr + H;
    T* __restrict__ dn = dr + 2 * H;
    T* __restrict__ dx = dxn + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const T dh_total = go[j] + dhb[j];
      const T dh_candidate = (T(1) - k[j]) * dh_total;
      const T dpre_n = dh_candidate * (T(1) - u[j]) * (T(1) - n[j] * n[j]);
      du[j] = dh_candidate * (hp[j] - n[j]) * u[j] * (T(1) - u[j]);
      dr[j] = dpre_n * hnb[j] * r[j] * (T(1) - r[j]);
      dn[j] = dpre_n * r[j];
      dx[j] = dpre_n;
      dhb[j] = k[j] * dh_total + dh_candidate * u[j];
    }
  }
  });
}

// One simple-RNN timestep forward: `pre` (B, H) holds x W_ih^T + b_ih + b_hh (+ h W_hh^T when
// `recurrent` is null) on entry and the activation h~ on exit.
template <typename T>
void rnn_forward_pointwise(int64_t t, int64_t B, int64_t H, T* pre, const T* recurrent, bool relu,
                           const T* h_prev, T* h_next, const Mask& keep_hidden) {
  at::parallel_for(0, B, row_grain(H), [&](int64_t begin, int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    T* y = pre + b * H;
    if (recurrent != nullptr) {
      at::vec::map2([](Vectorized<T> x, Vectorized<T> r) { return x + r; }, y, y, recurrent + b * H, H);
    }
    if (relu) {
      for (int64_t j = 0; j < H; ++j) y[j] = y[j] < T(0) ? T(0) : y[j];  // NaN stays NaN, as torch.relu
    } else {
      tanh_(y, H);
    }
    keep_or_update(row_of(keep_hidden, t, b, false), h_prev + b * H, y, h_next + b * H, H);
  }
  });
}

// One simple-RNN timestep backward: `dh` as in the GRU; dpre (B, H) = dL/d(pre-activation).
template <typename T>
void rnn_backward_pointwise(int64_t t, int64_t B, int64_t H, const T* activations, bool relu,
                            const T* grad_output, T* dh, T* dpre, const Mask& keep_hidden) {
  at::parallel_for(0, B, row_grain(H), [&](int64_t begin, int64_t end) {
  std::vector<T> scratch(H);
  T* __restrict__ k = scratch.data();
  for (int64_t b = begin; b < end; ++b) {
    fill_factors(row_of(keep_hidden, t, b, false), k, H);
    const T* __restrict__ y = activations + b * H;
    const T* __restrict__ go = grad_output + b * H;
    T* __restrict__ dhb = dh + b * H;
    T* __restrict__ dp = dpre + b * H;
    if (relu) {  // torch's threshold_backward on the result: 0 where y <= 0
      for (int64_t j = 0; j < H; ++j) {
        const T dh_total = go[j] + dhb[j];
        dp[j] = y[j] <= T(0) ? T(0) : (T(1) - k[j]) * dh_total;
        dhb[j] = k[j] * dh_total;
      }
    } else {
      for (int64_t j = 0; j < H; ++j) {
        const T dh_total = go[j] + dhb[j];
        dp[j] = (T(1) - k[j]) * dh_total * (T(1) - y[j] * y[j]);
        dhb[j] = k[j] * dh_total;
      }
    }
  }
  });
}

void check_contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* tensor : tensors) TORCH_CHECK(tensor->is_contiguous(), "contiguous inputs expected");
}

// gates (T, B, 3H): x W_ih^T + b_ih, overwritten with r, u, n. Returns output (T, B, H) and, when
// `save`, hn (T, B, H) = h_{t-1} W_hn^T + b_hn (the backward needs r, u, n, hn and h_{t-1}); else hn
// holds one step. `buffers`: those two to write into (result_tensor), or none.
std::vector<Tensor> gru_forward(Tensor gates, Tensor h0, Tensor weight_hh, std::optional<Tensor> bias_hh,
                                int64_t kind, double value, std::optional<Tensor> mask, bool save,
                                std::vector<Tensor> buffers) {
  check_contiguous({&gates, &h0, &weight_hh});
  if (bias_hh) check_contiguous({&*bias_hh});
  const Mask keep_hidden(kind, value, mask);
  const int64_t T = gates.size(0), B = gates.size(1), H = h0.size(1);
  Tensor output = result_tensor(buffers, 0, 2, {T, B, H}, h0);
  Tensor hn = result_tensor(buffers, 1, 2, {save ? T : 1, B, H}, h0);
  Tensor step = at::empty({B, 3 * H}, h0.options());
  const RecurrentGemm recurrent_gemm(weight_hh, B, T);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "zoneout_gru_forward", [&] {
    const scalar_t* bias = bias_hh ? bias_hh->data_ptr<scalar_t>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      const Tensor h_prev = t == 0 ? h0 : output[t - 1];
      const Tensor recurrent = recurrent_gemm.product(h_prev, step);
      gru_forward_pointwise<scalar_t>(t, B, H, gates[t].data_ptr<scalar_t>(), recurrent.data_ptr<scalar_t>(), bias,
                                      h_prev.data_ptr<scalar_t>(), output[t].data_ptr<scalar_t>(),
                                      hn[save ? t : 0].data_ptr<scalar_t>(), keep_hidden);
    }
  });
  if (save) return {output, hn};
  return {output};
}

// Walks time backwards, filling the workspaces dgh (T, B, 3H) and dxn (T, B, H) (see
// gru_backward_pointwise); the caller turns them into the weight, bias and input gradients. Returns dh0.
Tensor gru_backward(Tensor grad_output, Tensor grad_h, Tensor gates, Tensor hn, Tensor output, Tensor h0,
                    Tensor weight_hh, int64_t kind, double value, std::optional<Tensor> mask, Tensor dgh,
                    Tensor dxn) {
  check_contiguous({&grad_output, &gates, &hn, &output, &h0, &dgh, &dxn});
  TORCH_CHECK(dgh.sizes() == gates.sizes() && dgh.dtype() == gates.dtype() && dxn.sizes() == hn.sizes() &&
              dxn.dtype() == gates.dtype(), "dgh / dxn must be shaped and typed like gates / hn");
  const Mask keep_hidden(kind, value, mask);
  const int64_t T = gates.size(0), B = gates.size(1), H = h0.size(1);
  Tensor dh = grad_h.clone(at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "zoneout_gru_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const Tensor h_prev = t == 0 ? h0 : output[t - 1];
      Tensor dgh_t = dgh[t];
      gru_backward_pointwise<scalar_t>(t, B, H, gates[t].data_ptr<scalar_t>(), hn[t].data_ptr<scalar_t>(),
                                       h_prev.data_ptr<scalar_t>(), grad_output[t].data_ptr<scalar_t>(),
                                       dh.data_ptr<scalar_t>(), dgh_t.data_ptr<scalar_t>(),
                                       dxn[t].data_ptr<scalar_t>(), keep_hidden);
      dh.addmm_(dgh_t, weight_hh);
    }
  });
  return dh;
}

// pre (T, B, H): x W_ih^T + b_ih + b_hh, overwritten with the activations h~ (all the backward needs
// besides the masks). Returns output (T, B, H), written into buffers[0] where given (result_tensor).
Tensor rnn_forward(Tensor pre, Tensor h0, Tensor weight_hh, bool relu, int64_t kind, double value,
                   std::optional<Tensor> mask, std::vector<Tensor> buffers) {
  check_contiguous({&pre, &h0, &weight_hh});
  const Mask keep_hidden(kind, value, mask);
  const int64_t T = pre.size(0), B = pre.size(1), H = h0.size(1);
  Tensor output = result_tensor(buffers, 0, 1, {T, B, H}, h0);
  const RecurrentGemm recurrent_gemm(weight_hh, B, T);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "zoneout_rnn_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      const Tensor h_prev = t == 0 ? h0 : output[t - 1];
      Tensor pre_t = pre[t];
      const Tensor recurrent = recurrent_gemm(h_prev, pre_t);
      rnn_forward_pointwise<scalar_t>(t, B, H, pre_t.data_ptr<scalar_t>(),
                                      recurrent.defined() ? recurrent.data_ptr<scalar_t>() : nullptr, relu,
                                      h_prev.data_ptr<scalar_t>(), output[t].data_ptr<scalar_t>(), keep_hidden);
    }
  });
  return output;
}

// Walks time backwards, filling the workspace dpre (T, B, H) = dL/d(pre-activations). Returns dh0.
Tensor rnn_backward(Tensor grad_output, Tensor grad_h, Tensor activations, Tensor weight_hh, bool relu,
                    int64_t kind, double value, std::optional<Tensor> mask, Tensor dpre) {
  check_contiguous({&grad_output, &activations, &dpre});
  TORCH_CHECK(dpre.sizes() == activations.sizes() && dpre.dtype() == activations.dtype(),
              "dpre must be shaped and typed like the activations");
  const Mask keep_hidden(kind, value, mask);
  const int64_t T = activations.size(0), B = activations.size(1), H = activations.size(2);
  Tensor dh = grad_h.clone(at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(activations.scalar_type(), "zoneout_rnn_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      Tensor dpre_t = dpre[t];
      rnn_backward_pointwise<scalar_t>(t, B, H, activations[t].data_ptr<scalar_t>(), relu,
                                       grad_output[t].data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
                                       dpre_t.data_ptr<scalar_t>(), keep_hidden);
      dh.addmm_(dpre_t, weight_hh);
    }
  });
  return dh;
}

}  // namespace

void register_hidden_kernels(pybind11::module_& m) {
  m.def("gru_forward", &gru_forward, "fused zoneout GRU layer forward (CPU)");
  m.def("gru_backward", &gru_backward, "fused zoneout GRU layer backward (CPU)");
  m.def("rnn_forward", &rnn_forward, "fused zoneout simple-RNN layer forward (CPU)");
  m.def("rnn_backward", &rnn_backward, "fused zoneout simple-RNN layer backward (CPU)");
}

}  // namespace zoneout_cpu
