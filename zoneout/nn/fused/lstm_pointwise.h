// Pointwise helpers shared by the CPU kernels of the fused zoneout LSTM (cpu_kernels.cpp) and of the
// recurrent-BN LSTM (bn_cpu_kernels.cpp): how a RecurrentNoise field is read (fused/masks.py's compact
// form), zoneout mixing, and vectorized sigmoid / tanh. Internal linkage: each extension compiles its own
// copy. cpu_ext.py hashes this file into both extensions' build names, so editing it rebuilds both.
#pragma once
#include <torch/extension.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace zoneout_kernels {
namespace {

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
Row row_of(const Mask& mask, int64_t t, int64_t b, bool absent_keeps) {
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


std::vector<Mask> masks_of(const std::vector<int64_t>& kinds, const std::vector<double>& values,
                           const std::vector<std::optional<Tensor>>& tensors) {
  TORCH_CHECK(kinds.size() == 3 && values.size() == 3 && tensors.size() == 3, "need 3 masks");
  return {Mask(kinds[0], values[0], tensors[0]), Mask(kinds[1], values[1], tensors[1]),
          Mask(kinds[2], values[2], tensors[2])};
}

}  // namespace
}  // namespace zoneout_kernels
