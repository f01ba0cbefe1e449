// C ABI: moe_route.
#include <cstring>

#include "../ops/route.h"
#include "capi_ops.h"

using namespace moe;
using namespace moe::capi;

extern "C" moe_status moe_route(moe_tensor logits, const moe_route_options* options, moe_tensor* indices,
                                moe_tensor* weights, moe_tensor* tokens_per_expert, float* aux_loss, float* z_loss) {
  static_assert(sizeof(moe_score_function) == sizeof(int), "a C enum is an int");
  return guarded([&] {
    clear({indices, weights, tokens_per_expert});
    if (!options) fail(Code::Value, "moe_route: expected options but received NULL");
    // Read as the int a C caller stored: an enum object holding another value is undefined in C++.
    int score;
    std::memcpy(&score, &options->score_function, sizeof score);
    if (score != MOE_SCORE_SOFTMAX && score != MOE_SCORE_SIGMOID)
      fail(Code::Value, "moe_route: expected score_function MOE_SCORE_SOFTMAX or MOE_SCORE_SIGMOID but received " +
                            std::to_string(score));
    ops::RouteOptions o;
    o.top_k = options->top_k;
    o.score = score == MOE_SCORE_SIGMOID ? ops::ScoreFunction::Sigmoid : ops::ScoreFunction::Softmax;
    o.renormalize = options->renormalize != 0;
    o.num_groups = options->num_groups;
    o.topk_groups = options->topk_groups;
    ops::RouteResult r = ops::route(in(logits, "logits"), optional_in(options->expert_bias), o)();
    out(indices, r.indices);
    out(weights, r.weights);
    out(tokens_per_expert, r.tokens_per_expert);
    if (aux_loss) *aux_loss = *r.aux_loss.data<float>();
    if (z_loss) *z_loss = *r.z_loss.data<float>();
  });
}
