// C ABI: the router's other entry points (moe_gate and moe_route are in capi.cpp and capi_route.cpp).
#include "../ops/gate.h"
#include "../ops/route.h"
#include "capi_ops.h"

using namespace moe;
using namespace moe::capi;

namespace {

ops::ScoreFunction score_of(const moe_score_function& f, const char* op) {
  const int v = enum_value(f);
  if (v != MOE_SCORE_SOFTMAX && v != MOE_SCORE_SIGMOID)
    fail(Code::Value, std::string(op) +
                          ": expected score_function MOE_SCORE_SOFTMAX or MOE_SCORE_SIGMOID but received " +
                          std::to_string(v));
  return v == MOE_SCORE_SIGMOID ? ops::ScoreFunction::Sigmoid : ops::ScoreFunction::Softmax;
}

}  // namespace

extern "C" {

moe_status moe_gate_backward(moe_tensor x, moe_tensor wg, moe_tensor dlogits, moe_tensor* dx, moe_tensor* dwg) {
  return guarded([&] {
    clear({dx, dwg});
    ops::GateGrads g = ops::gate_backward(in(x, "x"), in(wg, "wg"), in(dlogits, "dlogits"))();
    out(dx, g.dx);
    out(dwg, g.dwg);
  });
}

moe_status moe_route_scores(moe_tensor logits, const moe_route_options* options, moe_tensor* scores) {
  return guarded([&] {
    clear({scores});
    const moe_route_options& o = options_in(options, "moe_route_scores");
    ops::RouteOptions ro;
    ro.top_k = o.top_k;
    ro.score = score_of(o.score_function, "moe_route_scores");
    ro.renormalize = o.renormalize != 0;
    ro.num_groups = o.num_groups;
    ro.topk_groups = o.topk_groups;
    out(scores, ops::route(in(logits, "logits"), optional_in(o.expert_bias), ro)().scores);
  });
}

moe_status moe_route_backward(moe_tensor logits, moe_tensor indices, moe_tensor tokens_per_expert, moe_tensor dweights,
                              const moe_route_backward_options* options, moe_tensor* dlogits) {
  return guarded([&] {
    clear({dlogits});
    const moe_route_backward_options& o = options_in(options, "moe_route_backward");
    ops::RouteBackwardOptions ro;
    ro.score = score_of(o.score_function, "moe_route_backward");
    ro.renormalize = o.renormalize != 0;
    ro.aux_loss_grad = o.aux_loss_grad;
    ro.z_loss_grad = o.z_loss_grad;
    out(dlogits, ops::route_backward(in(logits, "logits"), in(indices, "indices"),
                                     in(tokens_per_expert, "tokens_per_expert"), optional_in(dweights), ro)());
  });
}

}  // extern "C"
