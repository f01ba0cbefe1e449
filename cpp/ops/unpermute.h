// unpermute: expert rows back to token order, weighted by the gate over the k
// choices (docs/math.md#unpermute).
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// rows [R, dModel] (any float dtype), pairToRow int32 [tokens, topK] (from permute),
// weights float32 [tokens, topK] -> y [tokens, dModel] in rows' dtype:
// y[t] = Σ_j w[t, j] · rows[pairToRow[t, j]] over kept j, in j order, float32 sums.
Task<Tensor> unpermute(const Tensor& rows, const Tensor& pair_to_row, const Tensor& weights);

struct UnpermuteGrads {
  Tensor d_rows;     // [R, dModel], rows' dtype: w[t, j] · dy[t] at row pairToRow[t, j], zero for rows no pair uses
  Tensor d_weights;  // float32 [tokens, topK]: ⟨dy[t], rows[pairToRow[t, j]]⟩, 0 when dropped
};
Task<UnpermuteGrads> unpermute_backward(const Tensor& dy, const Tensor& rows, const Tensor& pair_to_row,
                                        const Tensor& weights);

}  // namespace moe::ops
