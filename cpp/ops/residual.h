// residualMix: the residual MoE's output (PR-MoE), the routed experts' output
// and a dense MLP's output mixed per token by a learned two-way softmax
// (docs/math.md#residual-moe).
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// moe, mlp [tokens, dModel] (one float dtype), logits float32 [tokens, 2] (x · Wc), bias float32 [2]:
// c = softmax(logits[t] + bias), y[t] = c0 · moe[t] + c1 · mlp[t], in moe's dtype.
Task<Tensor> residual_mix(const Tensor& moe, const Tensor& mlp, const Tensor& logits, const Tensor& bias);

struct ResidualMixGrads {
  Tensor d_moe;     // [tokens, dModel], moe's dtype: c0 · dy
  Tensor d_mlp;     // [tokens, dModel], moe's dtype: c1 · dy
  Tensor d_logits;  // float32 [tokens, 2]
  Tensor d_bias;    // float32 [2]
};
Task<ResidualMixGrads> residual_mix_backward(const Tensor& dy, const Tensor& moe, const Tensor& mlp,
                                             const Tensor& logits, const Tensor& bias);

}  // namespace moe::ops
