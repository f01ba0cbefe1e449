// Seeded, counter-based random numbers: every element's value is a pure
// function of (seed, key, slice, index), so a tensor filled in pieces (the
// experts of one EP rank) holds exactly what the same slices of a tensor
// filled whole would hold, whatever the split and the number of threads.
//
// The generator is SplitMix64 (Steele, Lea & Flood, "Fast splittable
// pseudorandom number generators", 2014), G = 0x9E3779B97F4A7C15:
//   mix(z)    = z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27, z *= 0x94D049BB133111EB, z ^ (z >> 31)
//   state     = mix(mix(seed + G) ^ (key << 32 | slice))
//   bits(i)   = mix(state + (i + 1)·G)                      (all mod 2^64)
//   uniform i = (bits(i) >> 40) · 2^-24                     in [0, 1), exact in float32
//   normal i  = √(−2 ln u1) · cos(2π u2), u1 = ((bits(2i) >> 11) + 1) · 2^-53, u2 = (bits(2i+1) >> 11) · 2^-53
//   gumbel i  = −ln(−ln u), u = ((bits(i) >> 11) + 1/2) · 2^-53   in (0, 1)
// Values are formed in double and rounded once to the tensor's dtype.
#pragma once
#include <cstdint>
#include <string>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

enum class Distribution { Normal, Uniform, Gumbel };
// "normal" | "uniform" | "gumbel"; throws ERR_MOE_VALUE
Distribution parse_distribution(const std::string& name);

struct RandomStream {
  uint64_t seed = 0;
  uint32_t key = 0;  // e.g. a hash of the parameter's name
};

struct FillRandomOptions {
  RandomStream stream;
  Distribution distribution = Distribution::Normal;
  double a = 0;  // normal: mean; uniform: low; gumbel: location
  double b = 1;  // normal: standard deviation; uniform: high; gumbel: scale (CPU only)
  // The tensor is a run of slices of slice_size elements each (the whole tensor when 0):
  // element j of slice s takes value index j of slice first_slice + s.
  int64_t slice_size = 0;
  int64_t first_slice = 0;
};

// Fills t (any float dtype) in place.
Task<bool> fill_random(const Tensor& t, const FillRandomOptions& o);

// Router jitter (docs/math.md#jitter): x ⊙ u with u_i = 1 − eps + 2·eps·uniform_i of slice `slice`,
// in x's dtype. The same call on a gradient is the jitter's backward.
Task<Tensor> jitter(const Tensor& x, double eps, const RandomStream& stream, int64_t slice);

}  // namespace moe::ops
