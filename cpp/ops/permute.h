// permute: the (token, choice) pairs that survive capacity, sorted by expert
// into expert-contiguous rows (docs/math.md#permute).
#pragma once
#include <optional>
#include <string>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

// Which choices an expert keeps when it receives more than its capacity C.
enum class DropPolicy {
  Probs,     // the C with the largest weight (ties: lower token, then lower choice)
  Position,  // the first C in (token, choice) order
  Choice,    // the first C in (choice, token) order: every first choice before any second (CPU only)
};
// "probs" | "position" | "choice"; throws ERR_MOE_VALUE
DropPolicy parse_drop_policy(const std::string& name);

struct PermuteOptions {
  int64_t num_experts = 0;
  std::optional<double> capacity_factor;  // absent: dropless
  int64_t min_capacity = 0;               // C is at least this (with capacity_factor)
  DropPolicy drop_policy = DropPolicy::Probs;
  bool pad_to_capacity = false;  // every expert gets exactly C rows (needs capacity_factor)
};

struct Permuted {
  Tensor rows;             // [R, dModel], x's dtype
  Tensor rows_per_expert;  // int32 [numExperts], padding included
  Tensor pair_to_row;      // int32 [tokens, topK]: the row of pair (t, j), -1 when dropped
  Tensor row_to_pair;      // int32 [R]: t * topK + j, -1 for a padding row
  int64_t dropped = 0;     // choices dropped by capacity
  int64_t capacity = -1;   // C, or -1 when dropless
};

// C = max(ceil(T · k / E · capacityFactor), minCapacity), in double (docs/math.md#capacity-and-drop-policies).
int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t num_experts, double capacity_factor,
                        int64_t min_capacity = 0);

// x [tokens, dModel] (any float dtype), indices int32 [tokens, topK] in [0, numExperts),
// weights float32 [tokens, topK] (used by the "probs" drop policy).
Task<Permuted> permute(const Tensor& x, const Tensor& indices, const Tensor& weights, const PermuteOptions& options);

// The gather's adjoint: dx[t] = Σ_j dRows[pairToRow[t, j]] over kept j, in j order (float32 sums).
// dRows [R, dModel] (any float dtype), pairToRow int32 [tokens, topK] -> dx [tokens, dModel], dRows' dtype.
Task<Tensor> permute_backward(const Tensor& d_rows, const Tensor& pair_to_row);

// Shared with unpermute: a row map's entries lie in [-1, rows), or ERR_MOE_VALUE naming the first that does not.
void check_row_map(const char* op, const int32_t* pair_to_row, int64_t pairs, int64_t rows);

}  // namespace moe::ops
