// Recurrent-batch-norm LSTM recurrence for the CPU (Cooijmans et al.; zoneout/nn/bn_lstm.py is the
// reference): the whole time loop runs here, so a step costs one recurrent GEMM plus one fused
// pointwise pass -- no Python and no autograd nodes per step. The input side, gx = BN_t(x_t W_ih^T) + b_ih
// + b_hh, has no recurrence: input_norm_forward normalises the caller's one big GEMM for all timesteps at
// once (torch.var_mean over the batch axis of a (T, B, 4H) tensor took ~60 ms of a ~350 ms step at
// T=100, B=32, H=256, and its autograd backward as much again). Per step t, with batch statistics over the
// batch axis (biased variance) in training or the given population rows in eval:
//   a = h_{t-1} W_hh^T;  xh = (a - mean_h[t]) / sqrt(var_h[t] + eps_h);  pre = gx[t] + gamma_h * xh
//   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of pre (gate order i, f, g, o)
//   cc = f * c_{t-1} + m_t * (i * g);  xc = (cc - mean_c[t]) / sqrt(var_c[t] + eps_c)
//   tc = tanh(gamma_c * xc + beta_c);  c_t = zone(keep_cell, c_{t-1}, cc);
//   h_t = zone(keep_hidden, h_{t-1}, o * tc)
// Every unit is independent of the others except through the GEMM, so the pointwise pass (BN statistics
// included) is parallelised over blocks of units, each thread reading its columns of every batch row.
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "cpu_common.h"

namespace {

using at::Tensor;
using namespace zoneout_cpu;

// Units per parallel chunk: enough work per thread (~32k values a pass) to pay for the fork/join, in
// multiples of 16 so that blocks start on vector boundaries. Without -fopenmp it runs serially.
inline int64_t unit_grain(int64_t B) {
  const int64_t units = std::max<int64_t>(16, 32768 / (6 * std::max<int64_t>(B, 1)));
  return (units + 15) / 16 * 16;
}

// A row mask moved to unit j0 (a per-unit mask points into the row).
inline Row from_unit(Row row, int64_t j0) {
  if (row.mode == Row::kPerUnit) row.keep += j0;
  return row;
}

// Mean and biased variance over the B rows of the n columns starting at x (row stride ld), two-pass.
template <typename T>
void column_stats(const T* x, int64_t B, int64_t ld, int64_t n, T* __restrict__ mean, T* __restrict__ var) {
  std::fill(mean, mean + n, T(0));
  for (int64_t b = 0; b < B; ++b) {
    const T* __restrict__ row = x + b * ld;
    for (int64_t j = 0; j < n; ++j) mean[j] += row[j];
  }
  for (int64_t j = 0; j < n; ++j) mean[j] /= static_cast<T>(B);
  std::fill(var, var + n, T(0));
  for (int64_t b = 0; b < B; ++b) {
    const T* __restrict__ row = x + b * ld;
    for (int64_t j = 0; j < n; ++j) {
      const T d = row[j] - mean[j];
      var[j] += d * d;
    }
  }
  for (int64_t j = 0; j < n; ++j) var[j] /= static_cast<T>(B);
}

template <typename T>
void reciprocal_std(const T* var, T eps, T* rstd, int64_t n) {  // 1 / sqrt(var + eps), vectorized
  using V = at::vec::Vectorized<T>;
  at::vec::map([eps](V v) { return V(T(1)) / (v + V(eps)).sqrt(); }, rstd, var, n);
}

// One timestep's data, as row-major (B, 4H) / (B, H) matrices and (4H) / (H) statistic rows.
template <typename T>
struct Step {
  int64_t t, B, H;
  bool batch_stats;
  T eps_h, eps_c;
  const T *gamma_h, *gamma_c, *beta_c;
  T *mean_h, *var_h, *rstd_h, *mean_c, *var_c, *rstd_c;  // row t; mean/var written in training, read in eval
  const T* gx;                                           // (B, 4H) BN_t(x W_ih^T) + biases
  T* xh;                                                 // (B, 4H) h_{t-1} W_hh^T on entry, normalised on exit
  T* gates;                                              // (B, 4H) activated gates (may be gx itself)
  T* xc;                                                 // (B, H) normalised candidate cell
  T* tc;                                                 // (B, H) tanh(BN(cc))
  const T *h_prev, *c_prev;
  T *h_next, *c_next;
};

template <typename T>
void forward_step(const Step<T>& s, const Mask& keep_cell, const Mask& keep_hidden, const Mask& update_keep) {
  const int64_t B = s.B, H = s.H, G = 4 * H;
  at::parallel_for(0, H, unit_grain(B), [&](int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0;
    for (int64_t k = 0; k < 4; ++k) {  // BN_t of the recurrent term, per gate column
      const int64_t col = k * H + j0;
      if (s.batch_stats) column_stats(s.xh + col, B, G, n, s.mean_h + col, s.var_h + col);
      reciprocal_std(s.var_h + col, s.eps_h, s.rstd_h + col, n);
    }
    for (int64_t b = 0; b < B; ++b) {
      T* xh = s.xh + b * G;
      const T* gx = s.gx + b * G;
      T* gates = s.gates + b * G;
      for (int64_t k = 0; k < 4; ++k) {
        const int64_t col = k * H + j0;
        const T *mean = s.mean_h + col, *rstd = s.rstd_h + col, *gamma = s.gamma_h + col, *x = gx + col;
        T *v = xh + col, *out = gates + col;
        for (int64_t j = 0; j < n; ++j) {
          const T normalised = (v[j] - mean[j]) * rstd[j];
          v[j] = normalised;
          out[j] = x[j] + gamma[j] * normalised;
        }
      }
      T *i = gates + j0, *f = gates + H + j0, *g = gates + 2 * H + j0, *o = gates + 3 * H + j0;
      sigmoid_(i, n);
      sigmoid_(f, n);
      tanh_(g, n);
      sigmoid_(o, n);
      const T* cp = s.c_prev + b * H + j0;
      T* cc = s.xc + b * H + j0;  // the candidate cell, normalised in place below
      const Row update = from_unit(row_of(update_keep, s.t, b, /*absent_keeps=*/true), j0);
      switch (update.mode) {
        case Row::kAll:
          for (int64_t j = 0; j < n; ++j) cc[j] = f[j] * cp[j] + i[j] * g[j];
          break;
        case Row::kNone:
          for (int64_t j = 0; j < n; ++j) cc[j] = f[j] * cp[j];
          break;
        case Row::kWeight: {
          const T w = static_cast<T>(update.weight);
          for (int64_t j = 0; j < n; ++j) cc[j] = f[j] * cp[j] + i[j] * g[j] * w;
          break;
        }
        case Row::kPerUnit:
          for (int64_t j = 0; j < n; ++j) cc[j] = f[j] * cp[j] + i[j] * g[j] * static_cast<T>(update.keep[j]);
          break;
      }
      keep_or_update(from_unit(row_of(keep_cell, s.t, b, false), j0), cp, cc, s.c_next + b * H + j0, n);
    }
    if (s.batch_stats) column_stats(s.xc + j0, B, H, n, s.mean_c + j0, s.var_c + j0);
    reciprocal_std(s.var_c + j0, s.eps_c, s.rstd_c + j0, n);
    const T *mean = s.mean_c + j0, *rstd = s.rstd_c + j0, *gamma = s.gamma_c + j0, *beta = s.beta_c + j0;
    for (int64_t b = 0; b < B; ++b) {
      T* xc = s.xc + b * H + j0;
      T* tc = s.tc + b * H + j0;
      for (int64_t j = 0; j < n; ++j) {
        const T normalised = (xc[j] - mean[j]) * rstd[j];
        xc[j] = normalised;
        tc[j] = gamma[j] * normalised + beta[j];
      }
      tanh_(tc, n);
      const T* o = s.gates + b * G + 3 * H + j0;
      T* hn = s.h_next + b * H + j0;
      for (int64_t j = 0; j < n; ++j) hn[j] = o[j] * tc[j];
      keep_or_update(from_unit(row_of(keep_hidden, s.t, b, false), j0), s.h_prev + b * H + j0, hn, hn, n);
    }
  });
}

// One timestep's backward. On entry dh = dL/dh_t from later steps (without grad_output[t]) and dc = dL/dc_t;
// on exit dh holds the part of dL/dh_{t-1} that bypasses the GEMM (zoneout's kept h) and dc = dL/dc_{t-1}.
// Writes dgx = dL/d(pre-activations) and da = dL/d(h_{t-1} W_hh^T), and accumulates the BN parameters'
// gradients. BN backward with batch statistics: dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)).
template <typename T>
struct BackStep {
  int64_t t, B, H;
  bool batch_stats;
  const T *gamma_h, *gamma_c, *rstd_h, *rstd_c;
  const T *gates, *xh, *c_prev, *xc, *tc, *grad_output;
  T *dh, *dc, *dgx, *da;
  T *dgamma_h, *dgamma_c, *dbeta_c;
};

// Backward pass 1 for one row: h = zone(keep, h_prev, o * tc) and tc = tanh(BN_c output). `dh` in: dL/dh_t from
// later steps, out: the kept part; writes d_o and dcn = d(BN_c output); accumulates sum(dcn), sum(dcn * xc).
template <typename T>
void backward_hidden_row(int64_t n, const T* __restrict__ go, const T* __restrict__ o, const T* __restrict__ tc,
                         const T* __restrict__ xc, const T* __restrict__ keep, T* __restrict__ dh, T* __restrict__ dcn,
                         T* __restrict__ d_o, T* __restrict__ s1, T* __restrict__ s2) {
  for (int64_t j = 0; j < n; ++j) {
    const T dh_total = go[j] + dh[j];
    const T dh_candidate = (T(1) - keep[j]) * dh_total;
    dh[j] = keep[j] * dh_total;
    d_o[j] = dh_candidate * tc[j] * o[j] * (T(1) - o[j]);
    const T d = dh_candidate * o[j] * (T(1) - tc[j] * tc[j]);
    dcn[j] = d;
    s1[j] += d;
    s2[j] += d * xc[j];
  }
}

// Column sums s1 = sum(dy), s2 = sum(dy * xhat) of a BN -> the gradients of gamma (+= s2) and beta (+= s1, if
// given), coef = gamma * rstd, and s1, s2 turned into the means the batch-statistics backward subtracts (0 in eval).
template <typename T>
void finish_sums(int64_t n, bool batch_stats, T inv_b, const T* __restrict__ gamma, const T* __restrict__ rstd,
                 T* __restrict__ s1, T* __restrict__ s2, T* __restrict__ dgamma, T* __restrict__ dbeta,
                 T* __restrict__ coef) {
  for (int64_t j = 0; j < n; ++j) dgamma[j] += s2[j];
  if (dbeta != nullptr) {
    for (int64_t j = 0; j < n; ++j) dbeta[j] += s1[j];
  }
  for (int64_t j = 0; j < n; ++j) coef[j] = gamma[j] * rstd[j];
  const T scale = batch_stats ? inv_b : T(0);
  for (int64_t j = 0; j < n; ++j) {
    s1[j] *= scale;
    s2[j] *= scale;
  }
}

// Backward pass 2 for one row: through BN_c (dcc = d(BN_c input)) and cc = f * c_prev + m * i * g, and c's zoneout.
// `di` holds dcn on entry. `dc` in: dL/dc_t, out: dL/dc_{t-1}.
template <typename T>
void backward_cell_row(int64_t n, const T* __restrict__ i, const T* __restrict__ f, const T* __restrict__ g,
                       const T* __restrict__ cp, const T* __restrict__ xc, const T* __restrict__ keep,
                       const T* __restrict__ update, const T* __restrict__ coef, const T* __restrict__ m1,
                       const T* __restrict__ m2, T* __restrict__ dc, T* __restrict__ di, T* __restrict__ df,
                       T* __restrict__ dg) {
  for (int64_t j = 0; j < n; ++j) {
    const T dcc = (T(1) - keep[j]) * dc[j] + coef[j] * (di[j] - m1[j] - xc[j] * m2[j]);
    df[j] = dcc * cp[j] * f[j] * (T(1) - f[j]);
    di[j] = dcc * update[j] * g[j] * i[j] * (T(1) - i[j]);
    dg[j] = dcc * update[j] * i[j] * (T(1) - g[j] * g[j]);
    dc[j] = keep[j] * dc[j] + dcc * f[j];
  }
}

template <typename T>
void backward_step(const BackStep<T>& s, const Mask& keep_cell, const Mask& keep_hidden, const Mask& update_keep) {
  const int64_t B = s.B, H = s.H, G = 4 * H;
  const T inv_b = T(1) / static_cast<T>(B);
  at::parallel_for(0, H, unit_grain(B), [&](int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0;
    std::vector<T> scratch(13 * n, T(0));  // per thread: row masks as multipliers, column sums, coefficients
    T *keep = scratch.data(), *update = keep + n, *s1 = keep + 2 * n, *s2 = keep + 3 * n;
    T *r1 = keep + 4 * n, *r2 = keep + 8 * n, *coef = keep + 12 * n;
    // Pass 1: through h = zone(o * tc) down to d(BN_c output), kept (for pass 2) in dgx's i columns.
    for (int64_t b = 0; b < B; ++b) {
      fill_factors(from_unit(row_of(keep_hidden, s.t, b, false), j0), keep, n);
      T* dgx = s.dgx + b * G;
      backward_hidden_row(n, s.grad_output + b * H + j0, s.gates + b * G + 3 * H + j0, s.tc + b * H + j0,
                          s.xc + b * H + j0, keep, s.dh + b * H + j0, dgx + j0, dgx + 3 * H + j0, s1, s2);
    }
    finish_sums(n, s.batch_stats, inv_b, s.gamma_c + j0, s.rstd_c + j0, s1, s2, s.dgamma_c + j0, s.dbeta_c + j0,
                coef);
    // Pass 2: through BN_c and the cell update to the gates; the BN_h reductions.
    for (int64_t b = 0; b < B; ++b) {
      fill_factors(from_unit(row_of(keep_cell, s.t, b, false), j0), keep, n);
      fill_factors(from_unit(row_of(update_keep, s.t, b, true), j0), update, n);
      const T* gates = s.gates + b * G;
      T* dgx = s.dgx + b * G;
      backward_cell_row(n, gates + j0, gates + H + j0, gates + 2 * H + j0, s.c_prev + b * H + j0, s.xc + b * H + j0,
                        keep, update, coef, s1, s2, s.dc + b * H + j0, dgx + j0, dgx + H + j0, dgx + 2 * H + j0);
      const T* xh = s.xh + b * G;
      for (int64_t k = 0; k < 4; ++k) {
        const T* __restrict__ d = dgx + k * H + j0;
        const T* __restrict__ x = xh + k * H + j0;
        T* __restrict__ a1 = r1 + k * n;
        T* __restrict__ a2 = r2 + k * n;
        for (int64_t j = 0; j < n; ++j) {
          a1[j] += d[j];
          a2[j] += d[j] * x[j];
        }
      }
    }
    // Pass 3: through BN_h to the recurrent GEMM's output.
    for (int64_t k = 0; k < 4; ++k) {
      const int64_t col = k * H + j0;
      T* a1 = r1 + k * n;
      T* a2 = r2 + k * n;
      T* c = coef;  // reused: gamma_h * rstd_h of this gate's columns
      finish_sums(n, s.batch_stats, inv_b, s.gamma_h + col, s.rstd_h + col, a1, a2, s.dgamma_h + col,
                  static_cast<T*>(nullptr), c);
      for (int64_t b = 0; b < B; ++b) {
        const T* __restrict__ d = s.dgx + b * G + col;
        const T* __restrict__ x = s.xh + b * G + col;
        T* __restrict__ out = s.da + b * G + col;
        for (int64_t j = 0; j < n; ++j) out[j] = c[j] * (d[j] - a1[j] - x[j] * a2[j]);
      }
    }
  });
}

// The input side, for all timesteps at once (parallel over them): ax (T, B, G) = x W_ih^T on entry, normalised
// (xhat) on exit; mean/var (T, G) filled with the batch statistics when batch_stats, else read. Returns
// gx = gamma * xhat + bias and rstd (T, G).
std::vector<Tensor> input_norm_forward(Tensor ax, Tensor gamma, Tensor bias, Tensor mean, Tensor var, bool batch_stats,
                                       double eps) {
  for (const Tensor& x : {ax, gamma, bias, mean, var}) {
    TORCH_CHECK(x.is_contiguous() && x.scalar_type() == ax.scalar_type(), "contiguous inputs of one dtype expected");
  }
  const int64_t T = ax.size(0), B = ax.size(1), G = ax.size(2);
  Tensor gx = at::empty_like(ax);
  Tensor rstd = at::empty({T, G}, ax.options());
  AT_DISPATCH_FLOATING_TYPES(ax.scalar_type(), "zoneout_bn_lstm_input_forward", [&] {
    using T_ = scalar_t;
    T_ *x = ax.data_ptr<T_>(), *out = gx.data_ptr<T_>(), *m = mean.data_ptr<T_>(), *v = var.data_ptr<T_>();
    T_* r = rstd.data_ptr<T_>();
    const T_ *g = gamma.data_ptr<T_>(), *c = bias.data_ptr<T_>();
    const T_ e = static_cast<T_>(eps);
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        T_ *mt = m + t * G, *vt = v + t * G, *rt = r + t * G;
        if (batch_stats) column_stats(x + t * B * G, B, G, G, mt, vt);
        reciprocal_std(vt, e, rt, G);
        for (int64_t b = 0; b < B; ++b) {
          T_* __restrict__ row = x + (t * B + b) * G;
          T_* __restrict__ o = out + (t * B + b) * G;
          for (int64_t j = 0; j < G; ++j) {
            const T_ normalised = (row[j] - mt[j]) * rt[j];
            row[j] = normalised;
            o[j] = c[j] + g[j] * normalised;
          }
        }
      }
    });
  });
  return {gx, rstd};
}

// Backward of input_norm_forward given dgx (T, B, G), which is overwritten with d(ax): returns d(ax), dgamma, dbias.
std::vector<Tensor> input_norm_backward(Tensor dgx, Tensor xhat, Tensor rstd, Tensor gamma, bool batch_stats) {
  for (const Tensor& x : {dgx, xhat, rstd, gamma}) {
    TORCH_CHECK(x.is_contiguous() && x.scalar_type() == dgx.scalar_type(), "contiguous inputs of one dtype expected");
  }
  const int64_t T = dgx.size(0), B = dgx.size(1), G = dgx.size(2);
  Tensor dax = dgx;
  Tensor sums = at::zeros({2, T, G}, dgx.options());  // per timestep: sum_b dy, sum_b dy * xhat
  AT_DISPATCH_FLOATING_TYPES(dgx.scalar_type(), "zoneout_bn_lstm_input_backward", [&] {
    using T_ = scalar_t;
    const T_ *d = dgx.data_ptr<T_>(), *x = xhat.data_ptr<T_>(), *r = rstd.data_ptr<T_>(), *g = gamma.data_ptr<T_>();
    T_ *out = dax.data_ptr<T_>(), *s = sums.data_ptr<T_>();
    const T_ inv_b = T_(1) / static_cast<T_>(B);
    at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T_> coef(G), m1(G), m2(G);
      for (int64_t t = t0; t < t1; ++t) {
        T_* __restrict__ s1 = s + t * G;
        T_* __restrict__ s2 = s + (T + t) * G;
        for (int64_t b = 0; b < B; ++b) {
          const T_* __restrict__ dy = d + (t * B + b) * G;
          const T_* __restrict__ xh = x + (t * B + b) * G;
          for (int64_t j = 0; j < G; ++j) {
            s1[j] += dy[j];
            s2[j] += dy[j] * xh[j];
          }
        }
        for (int64_t j = 0; j < G; ++j) {
          coef[j] = g[j] * r[t * G + j];
          m1[j] = batch_stats ? s1[j] * inv_b : T_(0);
          m2[j] = batch_stats ? s2[j] * inv_b : T_(0);
        }
        for (int64_t b = 0; b < B; ++b) {
          const T_* __restrict__ dy = d + (t * B + b) * G;
          const T_* __restrict__ xh = x + (t * B + b) * G;
          T_* __restrict__ o = out + (t * B + b) * G;
          for (int64_t j = 0; j < G; ++j) o[j] = coef[j] * (dy[j] - m1[j] - xh[j] * m2[j]);
        }
      }
    });
  });
  const Tensor totals = sums.sum(1);
  return {dax, totals[1], totals[0]};
}

// gx (T, B, 4H): BN_t(x W_ih^T) + b_ih + b_hh, overwritten with the activated gates (one buffer fewer to
// fault in). mean_h/var_h (T, 4H) and mean_c/var_c (T, H): filled with the batch statistics when batch_stats,
// else the population statistics to use. Returns, when `save`: output (T,B,H), cells (T+1,B,H; cells[0] = c0),
// gates (= gx), xh, rstd_h (T,4H), xc, rstd_c (T,H), tc; else output and c_T.
std::vector<Tensor> forward(Tensor gx, Tensor h0, Tensor c0, Tensor weight_hh, Tensor gamma_h, Tensor gamma_c,
                            Tensor beta_c, Tensor mean_h, Tensor var_h, Tensor mean_c, Tensor var_c, bool batch_stats,
                            double eps_h, double eps_c, std::vector<int64_t> kinds, std::vector<double> values,
                            std::vector<std::optional<Tensor>> tensors, bool save) {
  for (const Tensor& x : {gx, h0, c0, gamma_h, gamma_c, beta_c, mean_h, var_h, mean_c, var_c}) {
    TORCH_CHECK(x.is_contiguous() && x.scalar_type() == gx.scalar_type(), "contiguous inputs of one dtype expected");
  }
  const auto masks = masks_of(kinds, values, tensors);
  const int64_t T = gx.size(0), B = gx.size(1), H = h0.size(1);
  const int64_t kept = save ? T : 1;
  Tensor output = at::empty({T, B, H}, h0.options());
  Tensor cells = at::empty({save ? T + 1 : 2, B, H}, h0.options());
  Tensor gates = gx;
  Tensor xh = at::empty({kept, B, 4 * H}, gx.options());
  Tensor xc = at::empty({kept, B, H}, gx.options());
  Tensor tc = at::empty({kept, B, H}, gx.options());
  Tensor rstd_h = at::empty({T, 4 * H}, gx.options());
  Tensor rstd_c = at::empty({T, H}, gx.options());
  cells[0].copy_(c0);
  const Tensor weight_t = weight_hh.t().contiguous();  // (H, 4H): the faster GEMM layout, once per sequence
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "zoneout_bn_lstm_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t k = save ? t : 0, c_in = save ? t : t % 2, c_out = save ? t + 1 : (t + 1) % 2;
      const Tensor h_prev = t == 0 ? h0 : output[t - 1];
      Tensor xh_t = xh[k];
      at::mm_out(xh_t, h_prev, weight_t);
      Step<scalar_t> s{t, B, H, batch_stats, static_cast<scalar_t>(eps_h), static_cast<scalar_t>(eps_c),
                       gamma_h.data_ptr<scalar_t>(), gamma_c.data_ptr<scalar_t>(), beta_c.data_ptr<scalar_t>(),
                       mean_h[t].data_ptr<scalar_t>(), var_h[t].data_ptr<scalar_t>(), rstd_h[t].data_ptr<scalar_t>(),
                       mean_c[t].data_ptr<scalar_t>(), var_c[t].data_ptr<scalar_t>(), rstd_c[t].data_ptr<scalar_t>(),
                       gx[t].data_ptr<scalar_t>(), xh_t.data_ptr<scalar_t>(), gates[t].data_ptr<scalar_t>(),
                       xc[k].data_ptr<scalar_t>(), tc[k].data_ptr<scalar_t>(), h_prev.data_ptr<scalar_t>(),
                       cells[c_in].data_ptr<scalar_t>(), output[t].data_ptr<scalar_t>(),
                       cells[c_out].data_ptr<scalar_t>()};
      forward_step<scalar_t>(s, masks[0], masks[1], masks[2]);
    }
  });
  if (save) return {output, cells, gates, xh, rstd_h, xc, rstd_c, tc};
  return {output, cells[T % 2].clone()};
}

// Walks time backwards over what `forward` saved. Fills dgx and da (T,B,4H; caller's buffers, e.g. a reused
// workspace that spares the page faults of fresh ones): dL/d(pre-activations) and dL/d(h_{t-1} W_hh^T) (for the
// caller's weight-gradient GEMM). Returns dgx, da, dh0, dc0, dgamma_h (4H), dgamma_c (H), dbeta_c (H).
std::vector<Tensor> backward(Tensor grad_output, Tensor grad_h, Tensor grad_c, Tensor cells, Tensor gates, Tensor xh,
                             Tensor rstd_h, Tensor xc, Tensor rstd_c, Tensor tc, Tensor weight_hh, Tensor gamma_h,
                             Tensor gamma_c, bool batch_stats, std::vector<int64_t> kinds, std::vector<double> values,
                             std::vector<std::optional<Tensor>> tensors, Tensor dgx, Tensor da) {
  for (const Tensor& x : {grad_output, cells, gates, xh, rstd_h, xc, rstd_c, tc, gamma_h, gamma_c, dgx, da}) {
    TORCH_CHECK(x.is_contiguous() && x.scalar_type() == gates.scalar_type(), "contiguous inputs of one dtype expected");
  }
  const auto masks = masks_of(kinds, values, tensors);
  const int64_t T = gates.size(0), B = gates.size(1), H = cells.size(2);
  TORCH_CHECK(dgx.sizes() == gates.sizes() && da.sizes() == gates.sizes(), "dgx and da must be shaped like gates");
  Tensor dgamma_h = at::zeros({4 * H}, gates.options());
  Tensor dgamma_c = at::zeros({H}, gates.options());
  Tensor dbeta_c = at::zeros({H}, gates.options());
  Tensor dh = grad_h.clone(at::MemoryFormat::Contiguous);
  Tensor dc = grad_c.clone(at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "zoneout_bn_lstm_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      Tensor da_t = da[t];
      BackStep<scalar_t> s{t, B, H, batch_stats, gamma_h.data_ptr<scalar_t>(), gamma_c.data_ptr<scalar_t>(),
                           rstd_h[t].data_ptr<scalar_t>(), rstd_c[t].data_ptr<scalar_t>(),
                           gates[t].data_ptr<scalar_t>(),
                           xh[t].data_ptr<scalar_t>(), cells[t].data_ptr<scalar_t>(), xc[t].data_ptr<scalar_t>(),
                           tc[t].data_ptr<scalar_t>(), grad_output[t].data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
                           dc.data_ptr<scalar_t>(), dgx[t].data_ptr<scalar_t>(), da_t.data_ptr<scalar_t>(),
                           dgamma_h.data_ptr<scalar_t>(), dgamma_c.data_ptr<scalar_t>(), dbeta_c.data_ptr<scalar_t>()};
      backward_step<scalar_t>(s, masks[0], masks[1], masks[2]);
      dh.addmm_(da_t, weight_hh);
    }
  });
  return {dgx, da, dh, dc, dgamma_h, dgamma_c, dbeta_c};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "recurrent-BN LSTM layer forward (CPU)");
  m.def("backward", &backward, "recurrent-BN LSTM layer backward (CPU)");
  m.def("input_norm_forward", &input_norm_forward, "recurrent-BN LSTM input-side batch norm, all timesteps (CPU)");
  m.def("input_norm_backward", &input_norm_backward, "its backward (CPU)");
}
