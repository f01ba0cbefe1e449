#include "random.h"

#include <cmath>
#include <vector>

#include "../core/check.h"
#include "../core/parallel.h"
#include "cuda_ops.h"
#include "float_span.h"

namespace moe::ops {

namespace {
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr int64_t kBlock = 1 << 13;
constexpr int64_t kMaxSlice = int64_t(1) << 32;

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t slice_state(const RandomStream& s, uint64_t slice) {
  return mix(mix(s.seed + kGolden) ^ ((uint64_t(s.key) << 32) | slice));
}

inline uint64_t bits(uint64_t state, uint64_t i) { return mix(state + (i + 1) * kGolden); }

inline double uniform01(uint64_t state, uint64_t i) { return double(bits(state, i) >> 40) * 0x1p-24; }

inline double normal01(uint64_t state, uint64_t i) {
  const double u1 = double((bits(state, 2 * i) >> 11) + 1) * 0x1p-53;
  const double u2 = double(bits(state, 2 * i + 1) >> 11) * 0x1p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

inline double gumbel01(uint64_t state, uint64_t i) {
  const double u = (double(bits(state, i) >> 11) + 0.5) * 0x1p-53;
  return -std::log(-std::log(u));
}

}  // namespace

Distribution parse_distribution(const std::string& name) {
  if (name == "normal") return Distribution::Normal;
  if (name == "uniform") return Distribution::Uniform;
  if (name == "gumbel") return Distribution::Gumbel;
  fail(Code::Value,
       "fillRandom: expected distribution \"normal\", \"uniform\" or \"gumbel\" but received \"" + name + "\"");
}

Task<bool> fill_random(const Tensor& t, const FillRandomOptions& o) {
  const char* op = "fillRandom";
  check_float(op, "t", t);
  const int64_t n = t.numel();
  const int64_t slice = o.slice_size > 0 ? o.slice_size : std::max<int64_t>(n, 1);
  check_option(op, "sliceSize", o.slice_size >= 0 && (n == 0 || n % slice == 0),
               "0 (the whole tensor) or a divisor of the element count " + std::to_string(n),
               std::to_string(o.slice_size));
  check_option(op, "firstSlice",
               o.first_slice >= 0 && o.first_slice <= kMaxSlice && n / slice <= kMaxSlice - o.first_slice,
               "an integer in [0, 2^32)", std::to_string(o.first_slice));
  if (o.distribution != Distribution::Uniform)
    check_option(op, "std", std::isfinite(o.a) && std::isfinite(o.b) && o.b >= 0, "a finite mean and a std >= 0",
                 num_str(o.a) + ", " + num_str(o.b));
  else
    check_option(op, "uniform bounds", std::isfinite(o.a) && std::isfinite(o.b) && o.a <= o.b, "finite low <= high",
                 num_str(o.a) + ", " + num_str(o.b));
  if (t.device().kind == Device::CUDA) {
    if (o.distribution == Distribution::Gumbel)
      fail(Code::Unsupported, "fillRandom: expected a CPU tensor for the gumbel distribution (it has no CUDA kernel)");
    return cuda_path::fill_random(t, o, slice);
  }
  return [t, o, n, slice] {
    parallel_for(n, kBlock, [&](int64_t i0, int64_t i1) {
      std::vector<float> v(static_cast<size_t>(i1 - i0));
      int64_t s = -1;
      uint64_t state = 0;
      for (int64_t i = i0; i < i1; ++i) {
        if (i / slice != s) {
          s = i / slice;
          state = slice_state(o.stream, uint64_t(o.first_slice + s));
        }
        const uint64_t j = uint64_t(i % slice);
        const double r = o.distribution == Distribution::Normal   ? o.a + o.b * normal01(state, j)
                         : o.distribution == Distribution::Gumbel ? o.a + o.b * gumbel01(state, j)
                                                                  : o.a + (o.b - o.a) * uniform01(state, j);
        v[size_t(i - i0)] = float(r);
      }
      store_f32(v.data(), i1 - i0, t, i0);
    });
    return true;
  };
}

Task<Tensor> jitter(const Tensor& x, double eps, const RandomStream& stream, int64_t slice) {
  const char* op = "jitter";
  check_float(op, "x", x);
  check_option(op, "eps", std::isfinite(eps) && eps >= 0 && eps < 1, "a number in [0, 1)", num_str(eps));
  check_option(op, "slice", slice >= 0 && slice < kMaxSlice, "an integer in [0, 2^32)", std::to_string(slice));
  if (x.device().kind == Device::CUDA) return cuda_path::jitter(x, eps, stream, slice);
  return [x, eps, stream, slice] {
    Tensor out = empty(x.dtype, x.shape, x.device());
    const uint64_t state = slice_state(stream, uint64_t(slice));
    parallel_for(x.numel(), kBlock, [&](int64_t i0, int64_t i1) {
      const int64_t n = i1 - i0;
      std::vector<float> v(static_cast<size_t>(n));
      load_f32(x, i0, n, v.data());
      for (int64_t j = 0; j < n; ++j) {
        const float u = float(1.0 - eps + 2.0 * eps * uniform01(state, uint64_t(i0 + j)));
        v[size_t(j)] *= u;
      }
      store_f32(v.data(), n, out, i0);
    });
    return out;
  };
}

}  // namespace moe::ops
