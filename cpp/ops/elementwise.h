// Elementwise and reducing ops the MoE layer composes around the expert math:
// residual sums, gradient accumulation and scaling, and the sum of squares of
// global-norm gradient clipping.
#pragma once
#include <vector>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// a, b any float dtypes, one shape -> a + b in a's dtype (float32 sum, rounded once).
Task<Tensor> add(const Tensor& a, const Tensor& b);

// In place, in float32: y = alpha·y + beta·x (y stored back rounded to its dtype).
// x may be undefined (y = alpha·y). alpha = 0 does not read y, as BLAS's axpby:
// y = beta·x even where y held NaN (a copy when beta = 1).
Task<bool> axpby(const Tensor& y, const Tensor& x, double alpha, double beta);

// Σ over the tensors of Σ_i t[i]² (float tensors of any shape and dtype) -> float32 [].
// Summed in double over fixed blocks of elements, the blocks then in order: the
// result does not depend on the number of threads.
Task<Tensor> sum_squares(const std::vector<Tensor>& tensors);

}  // namespace moe::ops
