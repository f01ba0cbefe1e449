// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), one step
// in place, with PyTorch's torch.optim.AdamW semantics.
#pragma once
#include <cstdint>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  int64_t step = 1;  // the step being taken, counted from 1 (bias correction)
};

// param and grad any float dtype, exp_avg and exp_avg_sq float32, all one shape. Per element,
// in float32:  p -= lr·wd·p;  m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²;
//              p -= lr / (1 − b1^step) · m / (√v / √(1 − b2^step) + eps)
// and p is stored back rounded to its dtype.
Task<bool> adamw(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWOptions& o);

}  // namespace moe::ops
