// renormalizeKept: the gate weights renormalised over the choices that survive
// capacity, as DeepSpeed's top-2 and top-k gating do (docs/math.md#weights-after-capacity).
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// weights float32 [tokens, topK], pairToRow int32 [tokens, topK] (permute's; -1: dropped) ->
// float32 [tokens, topK]: w[t, j] / max(S_t, FLT_EPSILON) for kept j, 0 for dropped j,
// S_t = Σ over kept j of w[t, j] (in double).
Task<Tensor> renormalize_kept(const Tensor& weights, const Tensor& pair_to_row);

// The gradient of the raw weights from d_kept, the gradient of renormalize_kept's output.
Task<Tensor> renormalize_kept_backward(const Tensor& weights, const Tensor& pair_to_row, const Tensor& d_kept);

}  // namespace moe::ops
