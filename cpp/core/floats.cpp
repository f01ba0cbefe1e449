#include "floats.h"

#include "parallel.h"

namespace moe {

void to_f32(const void* src, DType dtype, float* dst, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    if (dtype == DType::F32) {
      const float* s = static_cast<const float*>(src);
      std::copy(s + b, s + e, dst + b);
    } else if (dtype == DType::BF16) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = b; i < e; ++i) dst[i] = bf16_to_f32(s[i]);
    } else if (dtype == DType::F16) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = b; i < e; ++i) dst[i] = f16_to_f32(s[i]);
    } else if (dtype == DType::I32) {
      const int32_t* s = static_cast<const int32_t*>(src);
      for (int64_t i = b; i < e; ++i) dst[i] = float(s[i]);
    } else {
      const int64_t* s = static_cast<const int64_t*>(src);
      for (int64_t i = b; i < e; ++i) dst[i] = float(s[i]);
    }
  });
}

void from_f32(const float* src, void* dst, DType dtype, int64_t n) {
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    if (dtype == DType::F32) {
      std::copy(src + b, src + e, static_cast<float*>(dst) + b);
    } else if (dtype == DType::BF16) {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = b; i < e; ++i) d[i] = f32_to_bf16(src[i]);
    } else if (dtype == DType::F16) {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = b; i < e; ++i) d[i] = f32_to_f16(src[i]);
    } else if (dtype == DType::I32) {
      int32_t* d = static_cast<int32_t*>(dst);
      for (int64_t i = b; i < e; ++i) d[i] = int32_t(src[i]);
    } else {
      int64_t* d = static_cast<int64_t*>(dst);
      for (int64_t i = b; i < e; ++i) d[i] = int64_t(src[i]);
    }
  });
}

F32Read::F32Read(const Tensor& t) {
  if (t.dtype == DType::F32) {
    ptr_ = t.data<float>();
  } else {
    buf_.resize(size_t(t.numel()));
    to_f32(t.raw(), t.dtype, buf_.data(), t.numel());
    ptr_ = buf_.data();
  }
}

F32Write::F32Write(Tensor& out) : out_(out) {
  if (out.dtype == DType::F32) {
    ptr_ = out.data<float>();
  } else {
    buf_.resize(size_t(out.numel()));
    ptr_ = buf_.data();
  }
}

void F32Write::commit() {
  if (out_.dtype != DType::F32) from_f32(buf_.data(), out_.raw(), out_.dtype, out_.numel());
}

}  // namespace moe
