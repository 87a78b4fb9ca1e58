// Bernoulli masks for the CPU from a counter-based generator (zoneout/nn/counter_masks.py has the
// definition, its PyTorch-op twin and why). Draw i = SplitMix64's output function of key + (i + 1) * gamma;
// element 2i takes its low 32 bits, element 2i + 1 its high 32 bits; an element is true when its 32 bits
// are below floor(p * 2^32). Any thread can compute any slice, so the mask does not depend on the thread
// count, and the loop vectorizes (one draw makes two bytes).
#include "cpu_common.h"

#include <cmath>

namespace zoneout_cpu {
namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

inline uint64_t splitmix64_output(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

Tensor bernoulli_mask(std::vector<int64_t> sizes, double probability, int64_t key) {
  TORCH_CHECK(probability >= 0.0 && probability <= 1.0, "probability must be in [0, 1], got ", probability);
  Tensor mask = at::empty(sizes, at::TensorOptions().dtype(at::kBool));
  const int64_t n = mask.numel();
  uint8_t* out = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  const uint64_t threshold = static_cast<uint64_t>(std::ldexp(probability, 32));  // p = 1 -> 2^32: always
  const uint64_t base = static_cast<uint64_t>(key);
  at::parallel_for(0, n / 2, 1 << 14, [&](int64_t begin, int64_t end) {
    // Locals and one 16-bit store per draw: with the captures read through references, or two byte
    // stores, the loop does not vectorize (5x slower, measured).
    uint16_t* __restrict__ pairs = reinterpret_cast<uint16_t*>(out);
    const uint64_t key_ = base, threshold_ = threshold;
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t x = splitmix64_output(key_ + static_cast<uint64_t>(i + 1) * kGamma);
      const uint16_t low = (x & 0xFFFFFFFFULL) < threshold_, high = (x >> 32) < threshold_;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
      pairs[i] = static_cast<uint16_t>((low << 8) | high);
#else
      pairs[i] = static_cast<uint16_t>(low | (high << 8));  // element 2i in the first byte
#endif
    }
  });
  if (n % 2 == 1) {
    out[n - 1] = (splitmix64_output(base + static_cast<uint64_t>(n / 2 + 1) * kGamma) & 0xFFFFFFFFULL) < threshold;
  }
  return mask;
}

}  // namespace

void register_mask_sampler(pybind11::module_& m) {
  m.def("bernoulli_mask", &bernoulli_mask, "bool mask of `sizes` from the counter-based generator (CPU)",
        pybind11::arg("sizes"), pybind11::arg("probability"), pybind11::arg("key"));
}

}  // namespace zoneout_cpu
