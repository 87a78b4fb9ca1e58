// Shared by the fused CPU kernels (cpu_kernels.cpp: LSTM; cpu_hidden_kernels.cpp: GRU, simple RNN;
// bn_cpu_kernels.cpp: recurrent-BN LSTM, a module of its own):
// the mask representation, the vectorized activations and the recurrent GEMM of one step (MKL or oneDNN).
// A mask is either absent, a scalar (eval expectation) or a bool tensor expanded to (T, B, H) whose
// last stride is 0 or 1 (so (T,B,1) stochastic depth and (T,1,H) static masks are read without copies).
#pragma once

#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace zoneout_cpu {

using at::Tensor;
using at::vec::Vectorized;

enum Kind : int64_t { kAbsent = 0, kScalar = 1, kBool = 2 };

// One RecurrentNoise field as the kernels read it.
struct Mask {
  int64_t kind;
  double value;
  const uint8_t* data = nullptr;  // bool storage, read as bytes so loops vectorize
  int64_t stride_t = 0, stride_b = 0, stride_h = 0;

  Mask(int64_t kind_, double value_, const std::optional<Tensor>& tensor) : kind(kind_), value(value_) {
    if (kind == kBool) {
      TORCH_CHECK(tensor.has_value() && tensor->scalar_type() == at::kBool && tensor->dim() == 3,
                  "bool mask must be a (T, B, H) bool tensor view");
      TORCH_CHECK(tensor->stride(2) == 0 || tensor->stride(2) == 1, "bool mask must have last stride 0 or 1");
      data = reinterpret_cast<const uint8_t*>(tensor->data_ptr<bool>());
      stride_t = tensor->stride(0), stride_b = tensor->stride(1), stride_h = tensor->stride(2);
    }
  }
};

// A mask restricted to one (t, b) row: every unit keeps, none does, a scalar weight, or per unit.
struct Row {
  enum Mode { kNone, kAll, kWeight, kPerUnit } mode;
  double weight = 0.0;
  const uint8_t* keep = nullptr;
};

// `absent_keeps` says what "no mask" means: the zoneout keep masks keep nothing, the
// recurrent-dropout update mask keeps every update.
inline Row row_of(const Mask& mask, int64_t t, int64_t b, bool absent_keeps) {
  if (mask.kind == kAbsent) return {absent_keeps ? Row::kAll : Row::kNone};
  if (mask.kind == kScalar) return {Row::kWeight, mask.value};
  const uint8_t* first = mask.data + t * mask.stride_t + b * mask.stride_b;
  if (mask.stride_h == 0) return {*first ? Row::kAll : Row::kNone};
  return {Row::kPerUnit, 0.0, first};
}

// out = keep ? previous : candidate (bool), or candidate + w * (previous - candidate) (expectation).
template <typename T>
void keep_or_update(const Row& keep, const T* __restrict__ previous, const T* candidate, T* out, int64_t n) {
  switch (keep.mode) {
    case Row::kNone: if (out != candidate) std::copy(candidate, candidate + n, out); break;
    case Row::kAll: std::copy(previous, previous + n, out); break;
    case Row::kWeight: {
      const T w = static_cast<T>(keep.weight);
      for (int64_t j = 0; j < n; ++j) out[j] = candidate[j] + w * (previous[j] - candidate[j]);
      break;
    }
    case Row::kPerUnit:
      for (int64_t j = 0; j < n; ++j) out[j] = keep.keep[j] != 0 ? previous[j] : candidate[j];
      break;
  }
}

// A row's mask as multipliers in `out` (bool -> 0/1), so the backward loop is branch-free and vectorizes.
template <typename T>
void fill_factors(const Row& keep, T* __restrict__ out, int64_t n) {
  switch (keep.mode) {
    case Row::kNone: std::fill(out, out + n, T(0)); break;
    case Row::kAll: std::fill(out, out + n, T(1)); break;
    case Row::kWeight: std::fill(out, out + n, static_cast<T>(keep.weight)); break;
    case Row::kPerUnit:
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(keep.keep[j]);
      break;
  }
}

template <typename T>
void sigmoid_(T* x, int64_t n) {
  using V = Vectorized<T>;
  at::vec::map([](V v) { return V(T(1)) / (V(T(1)) + v.neg().exp()); }, x, x, n);
}

// float tanh with one exp (Sleef's tanhf_u10 costs several): 1 - 2 / (exp(2|x|) + 1) with the sign
// restored, and for |x| < 0.625, where that cancels, Cephes' odd polynomial. Max error ~2 ulp.
// double keeps Sleef's tanh (the float64 tests compare to torch.tanh at 1e-10).
template <typename T>
void tanh_(T* x, int64_t n) {
  using V = Vectorized<T>;
  if constexpr (std::is_same_v<T, float>) {
    at::vec::map([](V v) {
      const V a = v.abs();
      const V large = V(1.0f) - V(2.0f) / ((a + a).exp() + V(1.0f));
      const V z = v * v;
      const V small = ((((V(-5.70498872745e-3f) * z + V(2.06390887954e-2f)) * z - V(5.37397155531e-2f)) * z +
                        V(1.33314422036e-1f)) * z - V(3.33332819422e-1f)) * z * v + v;
      const V signed_large = V::blendv(large, large.neg(), v < V(0.0f));
      return V::blendv(signed_large, small, a < V(0.625f));
    }, x, x, n);
  } else {
    at::vec::map([](V v) { return v.tanh(); }, x, x, n);
  }
}

// The three RecurrentNoise fields (keep_cell, keep_hidden, update_keep) as passed from Python.
inline std::vector<Mask> masks_of(const std::vector<int64_t>& kinds, const std::vector<double>& values,
                           const std::vector<std::optional<Tensor>>& tensors) {
  TORCH_CHECK(kinds.size() == 3 && values.size() == 3 && tensors.size() == 3, "need 3 masks");
  return {Mask(kinds[0], values[0], tensors[0]), Mask(kinds[1], values[1], tensors[1]),
          Mask(kinds[2], values[2], tensors[2])};
}

// x @ W^T through oneDNN (options["cpu_gemm"] = "onednn", float32; see cpu_gemm.py): torch's
// mkldnn::_linear_pointwise, called through the dispatcher like the MKL ops below. For a sequence
// (`pack`) the weight is reordered once into oneDNN's blocked layout for batch B
// (mkldnn::_reorder_linear_weight), as oneDNN's RNN keeps its weights; a one-step call passes it dense,
// where a transposed view is read as is. Returns a new (B, rows of W) tensor.
struct OnednnLinear {
  using Linear = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, std::string_view,
                        c10::List<std::optional<at::Scalar>>, std::optional<std::string_view>);
  Tensor weight;
  c10::TypedOperatorHandle<Linear> linear;

  static c10::OperatorHandle op(const char* name) {
    const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
    TORCH_CHECK(handle.has_value(), "this torch has no ", name, ", which options['cpu_gemm'] = 'onednn' needs");
    return *handle;
  }

  OnednnLinear(const Tensor& weight_, int64_t B, bool pack)
      : weight(weight_), linear(op("mkldnn::_linear_pointwise").typed<Linear>()) {
    TORCH_CHECK(weight_.scalar_type() == at::kFloat, "the oneDNN GEMMs are float32 only");
    if (pack) {
      weight = op("mkldnn::_reorder_linear_weight").typed<Tensor(const Tensor&, std::optional<int64_t>)>()
                   .call(contiguous_in_chunks(weight_), B);
    }
  }

  // The reorder copies a transposed view (the backward's W_hh^T) to dense in one pass that reads a new
  // cache line per value written; copied here in chunks of source rows first, the copy and the reorder
  // take 7.4 instead of 11.6 ms at H = 1000 (AMD EPYC, 2 threads; cpu_gemm.transpose_into's reason).
  static Tensor contiguous_in_chunks(const Tensor& weight) {
    if (weight.dim() != 2 || weight.is_contiguous() || !weight.t().is_contiguous()) return weight;
    const Tensor source = weight.t();  // dense (cols, rows)
    Tensor out = at::empty(weight.sizes(), weight.options());
    constexpr int64_t kChunk = 256;
    for (int64_t start = 0; start < source.size(0); start += kChunk) {
      const int64_t n = std::min(kChunk, source.size(0) - start);
      out.narrow(1, start, n).copy_(source.narrow(0, start, n).t());
    }
    return out;
  }

  Tensor operator()(const Tensor& x) const {
    return linear.call(x, weight, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
};

// The recurrent GEMM h_prev @ W_hh^T of one step. `use_onednn` (the LSTM's float32 under
// options["cpu_gemm"] = "onednn"; the GRU / simple-RNN kernels never pass it): OnednnLinear. Else
// float32 with MKL and H >= 256: torch's mkl::_mkl_linear with the weight packed once per sequence
// (measured 10-40% faster than addmm at B in {32, 128}, H in {256, 1000}, as oneDNN's RNN also keeps
// its weights packed; no gain at H=100, where the extra output buffer per step costs more). Both return
// a new (B, G*H) tensor (G gates) that the pointwise pass adds. Otherwise addmm_ accumulates into the
// gates in place: nothing to add.
struct RecurrentGemm {
  Tensor weight, weight_t, packed;
  std::optional<c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                                const std::optional<Tensor>&, int64_t)>> linear;
  std::optional<OnednnLinear> onednn;

  // A one-step call (ZoneoutLSTMCell) skips the packing: it would be redone every step and costs
  // about as much as the GEMM it speeds up.
  RecurrentGemm(const Tensor& weight_hh, int64_t B, int64_t T, bool use_onednn = false) : weight(weight_hh) {
    if (use_onednn) {
      onednn.emplace(weight_hh, B, /*pack=*/T > 1);
      return;
    }
    if (T > 1 && weight_hh.scalar_type() == at::kFloat && weight_hh.size(1) >= 256) {
      auto& dispatcher = c10::Dispatcher::singleton();
      auto reorder = dispatcher.findOp({"mkl::_mkl_reorder_linear_weight", ""});
      auto op = dispatcher.findOp({"mkl::_mkl_linear", ""});
      if (reorder && op) {
        try {
          packed = reorder->typed<Tensor(const Tensor&, int64_t)>().call(weight_hh, B);
          linear = op->typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                    int64_t)>();
        } catch (const std::exception&) {  // e.g. a build whose MKL lacks packed GEMM: plain addmm
          linear.reset();
        }
      }
    }
    // (H, G*H) contiguous: addmm's faster layout for small B, worth its copy over a sequence; a one-step
    // call would copy the whole matrix for one GEMM, so it passes the transposed view (MKL reads it as is).
    if (!linear) weight_t = T > 1 ? weight_hh.t().contiguous() : weight_hh.t();
  }

  // Returns the buffer to add to `gates_t`, or an undefined tensor if it was accumulated in place.
  Tensor operator()(const Tensor& h_prev, Tensor& gates_t) const {
    if (onednn) return (*onednn)(h_prev);
    if (linear) return linear->call(h_prev, packed, weight, std::nullopt, h_prev.size(0)).contiguous();
    gates_t.addmm_(h_prev, weight_t);
    return Tensor();
  }

  // h_prev @ W_hh^T on its own (the GRU keeps it apart from the input part): written into `out`
  // (B, G*H) and returned, or a new contiguous tensor from the packed GEMM.
  Tensor product(const Tensor& h_prev, Tensor& out) const {
    if (linear) return linear->call(h_prev, packed, weight, std::nullopt, h_prev.size(0)).contiguous();
    at::mm_out(out, h_prev, weight_t);
    return out;
  }
};


// Result k of the n tensors a forward returns: the caller's buffers[k] (a pooled block, buffers.py; checked
// against `shape` and the dtype of `like`), or a new tensor where the caller passed no buffers.
inline Tensor result_tensor(const std::vector<Tensor>& buffers, size_t k, size_t n, at::IntArrayRef shape,
                            const Tensor& like) {
  if (buffers.empty()) return at::empty(shape, like.options());
  TORCH_CHECK(buffers.size() == n, "buffers: ", n, " tensors (one per result) or none, got ", buffers.size());
  const Tensor& buffer = buffers[k];
  TORCH_CHECK(buffer.sizes() == shape && buffer.is_contiguous() && buffer.dtype() == like.dtype(), "buffers[", k,
              "] must be a contiguous ", shape, " tensor of dtype ", like.dtype());
  return buffer;
}

// Rows per parallel chunk: enough work per thread (~16k values) to pay for the fork/join; `width` is
// the number of values one row touches. Without -fopenmp at::parallel_for runs the rows serially.
inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / width); }

// The GRU and simple-RNN entry points (cpu_hidden_kernels.cpp), added to the module by cpu_kernels.cpp.
void register_hidden_kernels(pybind11::module_& m);
// The counter-based Bernoulli mask sampler (cpu_masks.cpp).
void register_mask_sampler(pybind11::module_& m);

}  // namespace zoneout_cpu
