// The CPU backend computes in float32 whatever the storage dtype: these views
// read a float tensor as float32 (copying only for bf16/f16) and write float32
// results into a tensor of any float dtype.
#pragma once
#include <vector>

#include "tensor.h"

namespace moe {

class F32Read {
 public:
  explicit F32Read(const Tensor& t);
  const float* data() const { return ptr_; }

 private:
  std::vector<float> buf_;
  const float* ptr_;
};

// Converts n values between float32 and a tensor's dtype (parallel for large n).
void to_f32(const void* src, DType dtype, float* dst, int64_t n);
void from_f32(const float* src, void* dst, DType dtype, int64_t n);

// A float32 scratch buffer that lands in `out` on commit() (in place when out is float32).
class F32Write {
 public:
  explicit F32Write(Tensor& out);
  float* data() { return ptr_; }
  void commit();

 private:
  Tensor& out_;
  std::vector<float> buf_;
  float* ptr_;
};

}  // namespace moe
