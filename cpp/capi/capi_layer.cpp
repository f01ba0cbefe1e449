// C ABI: the layer's forward and backward in one process (cpp/layer/layer.h).
#include "../layer/layer.h"
#include "capi_ops.h"

struct moe_layer_saved_s {
  std::shared_ptr<moe::layer::Saved> saved;
};

using namespace moe;
using namespace moe::capi;

namespace {

layer::Config config_of(const moe_layer_config* p) {
  const moe_layer_config& c = options_in(p, "moe_layer");
  layer::Config out;
  out.num_experts = c.num_experts;
  out.route.top_k = c.top_k;
  const int score = enum_value(c.score_function);
  if (score != MOE_SCORE_SOFTMAX && score != MOE_SCORE_SIGMOID)
    fail(Code::Value, "moe_layer: expected score_function MOE_SCORE_SOFTMAX or MOE_SCORE_SIGMOID but received " +
                          std::to_string(score));
  out.route.score = score == MOE_SCORE_SIGMOID ? ops::ScoreFunction::Sigmoid : ops::ScoreFunction::Softmax;
  out.route.renormalize = c.renormalize != 0;
  out.route.num_groups = c.num_groups;
  out.route.topk_groups = c.topk_groups;
  out.activation = activation_of(c.activation, "moe_layer");
  ops::PermuteOptions perm =
      permute_options(c.num_experts, c.capacity_factor, c.drop_policy, c.pad_to_capacity, "moe_layer");
  out.capacity_factor = perm.capacity_factor;
  out.drop_policy = perm.drop_policy;
  out.pad_to_capacity = perm.pad_to_capacity;
  out.aux_loss_coef = c.aux_loss_coef;
  out.z_loss_coef = c.z_loss_coef;
  return out;
}

layer::Weights weights_of(const moe_layer_weights* p) {
  const moe_layer_weights& w = options_in(p, "moe_layer");
  return {in(w.router_weight, "router_weight"),
          optional_in(w.expert_bias),
          in(w.w1, "w1"),
          optional_in(w.b1),
          in(w.w2, "w2"),
          optional_in(w.b2),
          optional_in(w.shared_w1),
          optional_in(w.shared_b1),
          optional_in(w.shared_w2),
          optional_in(w.shared_b2)};
}

void clear_grads(moe_layer_grads* g) {
  if (g)
    clear({&g->router_weight, &g->w1, &g->b1, &g->w2, &g->b2, &g->shared_w1, &g->shared_b1, &g->shared_w2,
           &g->shared_b2});
}

void out_defined(moe_tensor* slot, const Tensor& t) {
  if (t.defined()) out(slot, t);
}

}  // namespace

extern "C" {

moe_status moe_layer_forward(const moe_layer_config* config, const moe_layer_weights* weights, moe_tensor x,
                             moe_tensor* y, float* aux_loss, float* z_loss, moe_layer_saved* saved) {
  if (saved) *saved = nullptr;
  moe_layer_saved made = nullptr;
  moe_status s = guarded([&] {
    clear({y});
    layer::Forward f = layer::forward(config_of(config), weights_of(weights), in(x, "x"), saved != nullptr);
    if (saved) made = new moe_layer_saved_s{f.saved};
    out(y, f.y);
    if (aux_loss) *aux_loss = float(f.aux_loss);
    if (z_loss) *z_loss = float(f.z_loss);
  });
  if (s == MOE_OK && saved) *saved = made;
  if (s != MOE_OK) delete made;
  return s;
}

moe_status moe_layer_backward(const moe_layer_config* config, const moe_layer_weights* weights, moe_layer_saved saved,
                              moe_tensor dy, double loss_scale, moe_tensor* dx, moe_layer_grads* grads) {
  clear_grads(grads);
  moe_status s = guarded([&] {
    clear({dx});
    if (!saved || !saved->saved) fail(Code::Value, "moe_layer_backward: expected a saved forward but received NULL");
    layer::Grads g;
    Tensor d = layer::backward(config_of(config), weights_of(weights), *saved->saved, in(dy, "dy"), loss_scale, g);
    if (grads) {
      out_defined(&grads->router_weight, g.router_weight);
      out_defined(&grads->w1, g.w1);
      out_defined(&grads->b1, g.b1);
      out_defined(&grads->w2, g.w2);
      out_defined(&grads->b2, g.b2);
      out_defined(&grads->shared_w1, g.shared_w1);
      out_defined(&grads->shared_b1, g.shared_b1);
      out_defined(&grads->shared_w2, g.shared_w2);
      out_defined(&grads->shared_b2, g.shared_b2);
    }
    out(dx, d);
  });
  if (s != MOE_OK) moe_layer_grads_free(grads);
  return s;
}

void moe_layer_saved_free(moe_layer_saved saved) { delete saved; }

void moe_layer_grads_free(moe_layer_grads* grads) {
  if (!grads) return;
  for (moe_tensor* t : {&grads->router_weight, &grads->w1, &grads->b1, &grads->w2, &grads->b2, &grads->shared_w1,
                        &grads->shared_b1, &grads->shared_w2, &grads->shared_b2}) {
    moe_tensor_free(*t);
    *t = nullptr;
  }
}

}  // extern "C"
