// Element types and the float conversions the CPU backend needs: it computes in
// float32 and stores bfloat16 / float16 by rounding to nearest even.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace moe {

enum class DType { F32, BF16, F16, I32, I64 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);            // "float32", "bfloat16", ...
DType parse_dtype(const std::string& name);  // throws ERR_MOE_DTYPE
inline bool is_float(DType dt) { return dt == DType::F32 || dt == DType::BF16 || dt == DType::F16; }

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return uint16_t(bits >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace moe
