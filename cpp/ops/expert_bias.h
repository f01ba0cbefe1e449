// Aux-loss-free load balancing (DeepSeek-V3, Wang et al. 2024, "Auxiliary-Loss-Free
// Load Balancing Strategy for Mixture-of-Experts"), docs/math.md#expert-bias.
#pragma once
#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// In place: b_e += rate · sign(mean_e(load) − load_e), for bias float32 [E] and load
// [E] (int32 or float32; the global tokens per expert of the step). sign(0) = 0.
Task<bool> expert_bias_update(const Tensor& bias, const Tensor& load, double rate);

}  // namespace moe::ops
