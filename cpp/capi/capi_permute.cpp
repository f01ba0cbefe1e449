// C ABI: permutation, unpermutation and the chunk transpose of the dispatch.
#include "../ops/chunks.h"
#include "../ops/permute.h"
#include "../ops/unpermute.h"
#include "capi_ops.h"

using namespace moe;
using namespace moe::capi;

namespace moe::capi {

ops::PermuteOptions permute_options(int64_t num_experts, double capacity_factor, const moe_drop_policy& drop_policy,
                                    int pad_to_capacity, const char* op) {
  ops::PermuteOptions p;
  p.num_experts = num_experts;
  if (capacity_factor != 0) p.capacity_factor = capacity_factor;
  const int policy = enum_value(drop_policy);
  if (policy != MOE_DROP_PROBS && policy != MOE_DROP_POSITION)
    fail(Code::Value, std::string(op) + ": expected drop_policy MOE_DROP_PROBS or MOE_DROP_POSITION but received " +
                          std::to_string(policy));
  p.drop_policy = policy == MOE_DROP_POSITION ? ops::DropPolicy::Position : ops::DropPolicy::Probs;
  p.pad_to_capacity = pad_to_capacity != 0;
  return p;
}

}  // namespace moe::capi

extern "C" {

moe_status moe_expert_capacity(int64_t tokens, int64_t top_k, int64_t num_experts, double capacity_factor,
                               int64_t* capacity) {
  return guarded([&] {
    if (!capacity) fail(Code::Value, "moe_expert_capacity: expected an out pointer but received NULL");
    *capacity = ops::expert_capacity(tokens, top_k, num_experts, capacity_factor);
  });
}

moe_status moe_permute(moe_tensor x, moe_tensor indices, moe_tensor weights, const moe_permute_options* options,
                       moe_tensor* rows, moe_tensor* rows_per_expert, moe_tensor* pair_to_row, moe_tensor* row_to_pair,
                       int64_t* dropped, int64_t* capacity) {
  return guarded([&] {
    clear({rows, rows_per_expert, pair_to_row, row_to_pair});
    const moe_permute_options& po = options_in(options, "moe_permute");
    ops::PermuteOptions o =
        permute_options(po.num_experts, po.capacity_factor, po.drop_policy, po.pad_to_capacity, "moe_permute");
    ops::Permuted p = ops::permute(in(x, "x"), in(indices, "indices"), in(weights, "weights"), o)();
    out(rows, p.rows);
    out(rows_per_expert, p.rows_per_expert);
    out(pair_to_row, p.pair_to_row);
    out(row_to_pair, p.row_to_pair);
    if (dropped) *dropped = p.dropped;
    if (capacity) *capacity = p.capacity;
  });
}

moe_status moe_permute_backward(moe_tensor d_rows, moe_tensor pair_to_row, moe_tensor* dx) {
  return guarded([&] {
    clear({dx});
    out(dx, ops::permute_backward(in(d_rows, "d_rows"), in(pair_to_row, "pair_to_row"))());
  });
}

moe_status moe_unpermute(moe_tensor rows, moe_tensor pair_to_row, moe_tensor weights, moe_tensor* y) {
  return guarded([&] {
    clear({y});
    out(y, ops::unpermute(in(rows, "rows"), in(pair_to_row, "pair_to_row"), in(weights, "weights"))());
  });
}

moe_status moe_unpermute_backward(moe_tensor dy, moe_tensor rows, moe_tensor pair_to_row, moe_tensor weights,
                                  moe_tensor* d_rows, moe_tensor* d_weights) {
  return guarded([&] {
    clear({d_rows, d_weights});
    ops::UnpermuteGrads g = ops::unpermute_backward(in(dy, "dy"), in(rows, "rows"), in(pair_to_row, "pair_to_row"),
                                                    in(weights, "weights"))();
    out(d_rows, g.d_rows);
    out(d_weights, g.d_weights);
  });
}

moe_status moe_chunk_transpose(moe_tensor x, moe_tensor counts, moe_tensor* y) {
  return guarded([&] {
    clear({y});
    out(y, ops::chunk_transpose(in(x, "x"), in(counts, "counts"))());
  });
}

}  // extern "C"
