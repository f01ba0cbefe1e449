// Reordering row chunks between the all-to-all and the experts
// (docs/math.md#dispatch-and-combine): rows arrive grouped [source rank][local
// expert] and the grouped GEMM wants them [local expert][source rank]; the
// combine needs the inverse.
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// x [R, ...] holds A·B chunks in a-major order, chunk (a, b) being counts[a, b]
// consecutive rows (counts int32 [A, B], Σ counts = R). Returns the same rows
// with the chunks in b-major order: (0,0), (1,0), ..., (A−1,0), (0,1), ...
// The inverse is chunk_transpose with countsᵀ. Negative counts, or counts that
// do not sum to R, reject with ERR_MOE_VALUE.
Task<Tensor> chunk_transpose(const Tensor& x, const Tensor& counts);

}  // namespace moe::ops
