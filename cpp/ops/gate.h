// gate: logits = x · Wg, the router's linear layer, kept in float32 (docs/math.md#gate).
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// x [tokens, dModel] (any float dtype), wg [dModel, numExperts] float32 -> logits float32 [tokens, numExperts].
Task<Tensor> gate(const Tensor& x, const Tensor& wg);

struct GateGrads {
  Tensor dx;   // [tokens, dModel], x's dtype
  Tensor dwg;  // [dModel, numExperts], float32
};
Task<GateGrads> gate_backward(const Tensor& x, const Tensor& wg, const Tensor& dlogits);

}  // namespace moe::ops
