// Serial float32 views of a span of a float tensor, for kernels that convert
// inside their own parallel_for chunks (a chunk must not start a parallel region).
#pragma once
#include <algorithm>
#include <cstdint>

#include "../core/tensor.h"

namespace moe::ops {

// dst[0, n) = t[begin, begin + n) as float32 (t of dtype float32, bfloat16 or float16).
inline void load_f32(const Tensor& t, int64_t begin, int64_t n, float* dst) {
  if (t.dtype == DType::F32) {
    const float* s = t.data<float>() + begin;
    std::copy(s, s + n, dst);
  } else if (t.dtype == DType::BF16) {
    const uint16_t* s = t.data<uint16_t>() + begin;
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  } else {
    const uint16_t* s = t.data<uint16_t>() + begin;
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  }
}

// t[begin, begin + n) = src[0, n), rounded to t's dtype (nearest even).
inline void store_f32(const float* src, int64_t n, const Tensor& t, int64_t begin) {
  if (t.dtype == DType::F32) {
    std::copy(src, src + n, t.data<float>() + begin);
  } else if (t.dtype == DType::BF16) {
    uint16_t* d = t.data<uint16_t>() + begin;
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
  } else {
    uint16_t* d = t.data<uint16_t>() + begin;
    for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
  }
}

}  // namespace moe::ops
