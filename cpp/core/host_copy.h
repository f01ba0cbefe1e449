// Copies between host memory in a caller's element type and tensors. Float
// types convert (bfloat16 and float16 round to nearest even); integer types
// widen or narrow between int32 and int64 (an int64 value outside int32 is
// refused, never wrapped); float <-> int is refused.
#pragma once
#include "tensor.h"

namespace moe {

Tensor from_host(DType dtype, const Shape& shape, Device device, const void* src, DType src_dtype, int64_t count);
void to_host(const Tensor& t, void* dst, DType dst_dtype);

}  // namespace moe
