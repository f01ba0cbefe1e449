// grouped GEMM: every local expert multiplies its own contiguous block of rows
// by its own weight matrix (docs/math.md#grouped-gemm).
#pragma once
#include <string>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// x [R, K] (any float dtype), w [L, K, N] (any float dtype), rowsPerExpert int32/int64 [L]
// summing to R (rows of expert e are the segment that starts at the prefix sum of the counts
// before e; zero rows allowed), optional bias [L, N] (any float dtype).
// y [R, N] in x's dtype: Y_e = X_e · W_e (+ b_e).
Task<Tensor> grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& rows_per_expert, const Tensor& bias);

struct GroupedGemmNeeds {
  bool dx = true;
  bool dw = true;
  bool dbias = false;
  // Where dW goes (float32, w's shape; optional): the GEMM writes it there (beta = 0), or adds
  // it there when accumulate (beta = 1: C + X_eᵀ · dY_e rounds inside the GEMM, docs/math.md#grouped-gemm).
  Tensor dw_into;
  bool accumulate = false;
};

struct GroupedGemmGrads {
  Tensor dx;     // [R, K], x's dtype (undefined unless asked for)
  Tensor dw;     // [L, K, N], float32 (needs.dw_into when given)
  Tensor dbias;  // [L, N], float32
};

// dX_e = dY_e · W_eᵀ, dW_e = X_eᵀ · dY_e (zero for an expert with no rows), dbias_e = Σ_rows dY_e.
Task<GroupedGemmGrads> grouped_gemm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                             const Tensor& rows_per_expert, GroupedGemmNeeds needs);

// Why the CUDA path cannot run a grouped GEMM with x [R, K] and w [L, K, N] of
// this dtype (with the bias gradient when dbias), or an empty string when it
// can: the rules the CUDA path applies to every call (one dtype for x and w
// aside), from the kernels' plan (cuda/grouped_gemm_plan.h).
std::string grouped_gemm_cuda_unsupported(DType dtype, int64_t k, int64_t n, bool dbias);

}  // namespace moe::ops
