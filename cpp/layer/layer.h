// One MoE layer in one process, composed of the core's ops (docs/math.md#layer-forward,
// docs/math.md#layer-backward): every expert is local, so there is no dispatch.
// The TypeScript MoELayer composes the same ops in the same order; this is the
// composition the C ABI offers to runtimes without Node.
#pragma once
#include <memory>
#include <optional>

#include "../core/tensor.h"
#include "../ops/activation.h"
#include "../ops/permute.h"
#include "../ops/route.h"

namespace moe::layer {

struct Config {
  int64_t num_experts = 0;
  ops::RouteOptions route;  // top_k, score, renormalize, groups
  ops::ActivationKind activation = ops::ActivationKind::Relu;
  std::optional<double> capacity_factor;  // absent: dropless
  ops::DropPolicy drop_policy = ops::DropPolicy::Probs;
  bool pad_to_capacity = false;
  double aux_loss_coef = 0;
  double z_loss_coef = 0;
};

// Undefined tensors for the absent optional ones.
struct Weights {
  Tensor router_weight;                               // [D, E]
  Tensor expert_bias;                                 // float32 [E]
  Tensor w1, b1, w2, b2;                              // [E, D, F1], [E, F1], [E, F, D], [E, D]
  Tensor shared_w1, shared_b1, shared_w2, shared_b2;  // [1, D, S1], [1, S1], [1, S, D], [1, D]
};

struct Grads {
  Tensor router_weight, w1, b1, w2, b2, shared_w1, shared_b1, shared_w2, shared_b2;
};

// What a forward keeps for its backward.
struct Saved {
  Tensor x, logits, indices, weights, tokens_per_expert;
  Tensor pair_to_row, rows, counts, pre, h, expert_out;
  Tensor shared_counts, shared_pre, shared_h;
};

struct Forward {
  Tensor y;
  double aux_loss = 0;  // with its coefficient
  double z_loss = 0;
  int64_t dropped = 0;
  std::shared_ptr<Saved> saved;  // null unless asked for
};

// Checks config and weights against each other and x: ERR_MOE_SHAPE / ERR_MOE_VALUE naming the weight,
// the expected and the received shape.
void check(const Config& c, const Weights& w, const Tensor& x);

// Runs at once on the calling thread (CUDA work is queued on the device's stream).
Forward forward(const Config& c, const Weights& w, const Tensor& x, bool save);
// dx for dy, and every weight's gradient (float32), the losses' gradients times loss_scale included.
Tensor backward(const Config& c, const Weights& w, const Saved& s, const Tensor& dy, double loss_scale, Grads& grads);

}  // namespace moe::layer
