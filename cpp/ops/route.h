// route: scores, top-k choice, gate weights, per-expert counts and the router's
// losses, forward and backward (docs/math.md#route).
#pragma once
#include <cstdint>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

enum class ScoreFunction { Softmax, Sigmoid };

struct RouteOptions {
  int64_t top_k = 1;
  ScoreFunction score = ScoreFunction::Softmax;
  bool renormalize = false;
  // Group-limited choice (DeepSeek-V3): both 0 (off) or both set.
  int64_t num_groups = 0;
  int64_t topk_groups = 0;
  // float32 [tokens, numExperts] or undefined: the choice takes the keys logits + noise (+ the
  // expert bias) instead of the scores (+ bias); weights and losses keep the scores (CPU only).
  Tensor selection_noise;
  // With selection_noise: the first noise_from choices take the noiseless keys, the others the
  // noisy keys among the experts not yet chosen (DeepSpeed's top-2 second-expert sampling: 1).
  int64_t noise_from = 0;
};

struct RouteResult {
  Tensor indices;            // int32 [tokens, topK], best first (ties: lower expert index)
  Tensor weights;            // float32 [tokens, topK]
  Tensor scores;             // float32 [tokens, numExperts]
  Tensor tokens_per_expert;  // int32 [numExperts]
  Tensor aux_loss;           // float32 [], E · Σ_e f_e · P_e, without its coefficient
  Tensor z_loss;             // float32 [], mean_t logsumexp(logits[t])², without its coefficient
};

// The ranges of the options for num_experts experts: 1 <= topK <= numExperts
// and, with groups, numGroups dividing numExperts, 1 <= topkGroups <=
// numGroups and topK within the chosen groups' experts. ERR_MOE_VALUE naming
// `op` and the limit otherwise. route() checks them; the layer asks this
// before it has any logits.
void check_route_options(const char* op, int64_t num_experts, const RouteOptions& options);

// logits float32 [tokens, numExperts]; expert_bias float32 [numExperts] or undefined.
Task<RouteResult> route(const Tensor& logits, const Tensor& expert_bias, const RouteOptions& options);

struct RouteBackwardOptions {
  ScoreFunction score = ScoreFunction::Softmax;
  bool renormalize = false;
  double aux_loss_grad = 0;  // d total / d auxLoss
  double z_loss_grad = 0;    // d total / d zLoss
};

// d logits float32 [tokens, numExperts] from d weights (float32 [tokens, topK] or undefined)
// and from the losses; indices and tokens_per_expert are route's outputs for these logits.
Task<Tensor> route_backward(const Tensor& logits, const Tensor& indices, const Tensor& tokens_per_expert,
                            const Tensor& dweights, const RouteBackwardOptions& options);

}  // namespace moe::ops
