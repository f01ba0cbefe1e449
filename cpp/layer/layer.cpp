// One MoE layer in one process (layer.h), composed of the core's ops.
#include "layer.h"

#include <string>

#include "../core/check.h"
#include "../core/error.h"
#include "../core/host_copy.h"
#include "../ops/elementwise.h"
#include "../ops/gate.h"
#include "../ops/grouped_gemm.h"
#include "../ops/unpermute.h"

namespace moe::layer {
namespace {

std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim(); ++i) s += (i ? ", " : "") + std::to_string(t.dim(i));
  return s + "]";
}

void expect(const Tensor& t, const char* name, const std::vector<int64_t>& dims, const std::string& pattern) {
  check_defined("layer", name, t);
  bool ok = t.ndim() == int(dims.size());
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = t.dim(int(i)) == dims[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < dims.size(); ++i) want += (i ? ", " : "") + std::to_string(dims[i]);
    fail(Code::Shape, std::string("layer: expected ") + name + " of shape " + pattern + " = " + want + "]" +
                          " but received " + shape_str(t));
  }
}

double scalar(const Tensor& t) {
  float v = 0;
  to_host(t, &v, DType::F32);
  return v;
}

struct FFNOut {
  Tensor pre, h, y;
};

FFNOut ffn(const Tensor& x, const Tensor& counts, const Tensor& w1, const Tensor& b1, const Tensor& w2,
           const Tensor& b2, ops::ActivationKind kind) {
  FFNOut o;
  o.pre = ops::grouped_gemm(x, w1, counts, b1)();
  o.h = ops::activation(o.pre, kind)();
  o.y = ops::grouped_gemm(o.h, w2, counts, b2)();
  return o;
}

struct FFNGrads {
  Tensor dx, dw1, db1, dw2, db2;
};

FFNGrads ffn_backward(const Tensor& dy, const Tensor& x, const Tensor& counts, const Tensor& pre, const Tensor& h,
                      const Tensor& w1, const Tensor& w2, bool bias, ops::ActivationKind kind) {
  ops::GroupedGemmGrads g2 = ops::grouped_gemm_backward(dy, h, w2, counts, {true, true, bias})();
  Tensor dpre = ops::activation_backward(g2.dx, pre, kind)();
  ops::GroupedGemmGrads g1 = ops::grouped_gemm_backward(dpre, x, w1, counts, {true, true, bias})();
  return {g1.dx, g1.dw, g1.dbias, g2.dw, g2.dbias};
}

}  // namespace

void check(const Config& c, const Weights& w, const Tensor& x) {
  check_defined("layer", "x", x);
  check_float("layer", "x", x);
  if (x.ndim() != 2) fail(Code::Shape, "layer: expected x of shape [tokens, dModel] but received " + shape_str(x));
  if (c.num_experts < 1)
    fail(Code::Value, "layer: expected num_experts >= 1 but received " + std::to_string(c.num_experts));
  ops::check_route_options("layer", c.num_experts, c.route);
  const int64_t D = x.dim(1), E = c.num_experts;
  expect(w.router_weight, "router_weight", {D, E}, "[dModel, numExperts]");
  if (w.expert_bias.defined()) expect(w.expert_bias, "expert_bias", {E}, "[numExperts]");
  check_defined("layer", "w1", w.w1);
  check_defined("layer", "w2", w.w2);
  const bool gated = ops::is_gated(c.activation);
  const int64_t F = w.w2.ndim() == 3 ? w.w2.dim(1) : -1;
  expect(w.w2, "w2", {E, F, D}, "[numExperts, dFF, dModel]");
  const int64_t F1 = gated ? 2 * F : F;
  expect(w.w1, "w1", {E, D, F1}, gated ? "[numExperts, dModel, 2·dFF]" : "[numExperts, dModel, dFF]");
  if (w.b1.defined() != w.b2.defined())
    fail(Code::Value, "layer: expected both expert biases b1 and b2 or neither but received only " +
                          std::string(w.b1.defined() ? "b1" : "b2"));
  if (w.b1.defined()) {
    expect(w.b1, "b1", {E, F1}, gated ? "[numExperts, 2·dFF]" : "[numExperts, dFF]");
    expect(w.b2, "b2", {E, D}, "[numExperts, dModel]");
  }
  const bool shared = w.shared_w1.defined() || w.shared_w2.defined();
  if (shared) {
    check_defined("layer", "shared_w1", w.shared_w1);
    check_defined("layer", "shared_w2", w.shared_w2);
    const int64_t S = w.shared_w2.ndim() == 3 ? w.shared_w2.dim(1) : -1;
    expect(w.shared_w2, "shared_w2", {1, S, D}, "[1, sharedFF, dModel]");
    expect(w.shared_w1, "shared_w1", {1, D, gated ? 2 * S : S},
           gated ? "[1, dModel, 2·sharedFF]" : "[1, dModel, sharedFF]");
    if (w.shared_b1.defined() != w.b1.defined() || w.shared_b2.defined() != w.b1.defined())
      fail(Code::Value, std::string("layer: expected the shared experts' biases ") +
                            (w.b1.defined() ? "present, as the experts' are," : "absent, as the experts' are,") +
                            " but received shared_b1 " + (w.shared_b1.defined() ? "set" : "NULL") + " and shared_b2 " +
                            (w.shared_b2.defined() ? "set" : "NULL"));
    if (w.shared_b1.defined()) {
      expect(w.shared_b1, "shared_b1", {1, gated ? 2 * S : S}, gated ? "[1, 2·sharedFF]" : "[1, sharedFF]");
      expect(w.shared_b2, "shared_b2", {1, D}, "[1, dModel]");
    }
  } else if (w.shared_b1.defined() || w.shared_b2.defined()) {
    fail(Code::Value, "layer: expected no shared-expert biases without shared_w1 and shared_w2 but received one");
  }
  check_same_device("layer", {{"x", &x}, {"router_weight", &w.router_weight}, {"w1", &w.w1}, {"w2", &w.w2}});
}

Forward forward(const Config& c, const Weights& w, const Tensor& x, bool save) {
  check(c, w, x);
  Forward f;
  Tensor logits = ops::gate(x, w.router_weight)();
  ops::RouteResult r = ops::route(logits, w.expert_bias, c.route)();
  ops::PermuteOptions po;
  po.num_experts = c.num_experts;
  po.capacity_factor = c.capacity_factor;
  po.drop_policy = c.drop_policy;
  po.pad_to_capacity = c.pad_to_capacity;
  ops::Permuted p = ops::permute(x, r.indices, r.weights, po)();
  FFNOut ex = ffn(p.rows, p.rows_per_expert, w.w1, w.b1, w.w2, w.b2, c.activation);
  f.y = ops::unpermute(ex.y, p.pair_to_row, r.weights)();
  FFNOut sh;
  Tensor shared_counts;
  if (w.shared_w1.defined()) {
    const int32_t tokens = int32_t(x.dim(0));
    shared_counts = from_host(DType::I32, {1}, x.device(), &tokens, DType::I32, 1);
    sh = ffn(x, shared_counts, w.shared_w1, w.shared_b1, w.shared_w2, w.shared_b2, c.activation);
    f.y = ops::add(f.y, sh.y)();
  }
  f.aux_loss = c.aux_loss_coef * scalar(r.aux_loss);
  f.z_loss = c.z_loss_coef * scalar(r.z_loss);
  f.dropped = p.dropped;
  if (save) {
    f.saved = std::make_shared<Saved>(Saved{x, logits, r.indices, r.weights, r.tokens_per_expert, p.pair_to_row, p.rows,
                                            p.rows_per_expert, ex.pre, ex.h, ex.y, shared_counts, sh.pre, sh.h});
  }
  return f;
}

Tensor backward(const Config& c, const Weights& w, const Saved& s, const Tensor& dy, double loss_scale, Grads& g) {
  check(c, w, s.x);
  check_defined("layer backward", "dy", dy);
  if (dy.ndim() != 2 || dy.dim(0) != s.x.dim(0) || dy.dim(1) != s.x.dim(1))
    fail(Code::Shape, "layer backward: expected dy of shape " + shape_str(s.x) +
                          " (the forward's output) but received " + shape_str(dy));
  if (w.shared_w1.defined() != s.shared_pre.defined())
    fail(Code::Value, std::string("layer backward: expected the forward's weights, but the shared experts are ") +
                          (s.shared_pre.defined() ? "absent now and were present" : "present now and were absent"));
  const bool bias = w.b1.defined();
  ops::UnpermuteGrads u = ops::unpermute_backward(dy, s.expert_out, s.pair_to_row, s.weights)();
  ops::RouteBackwardOptions ro;
  ro.score = c.route.score;
  ro.renormalize = c.route.renormalize;
  ro.aux_loss_grad = c.aux_loss_coef * loss_scale;
  ro.z_loss_grad = c.z_loss_coef * loss_scale;
  Tensor dlogits = ops::route_backward(s.logits, s.indices, s.tokens_per_expert, u.d_weights, ro)();
  ops::GateGrads gg = ops::gate_backward(s.x, w.router_weight, dlogits)();
  g.router_weight = gg.dwg;
  FFNGrads sg;
  if (w.shared_w1.defined()) {
    sg = ffn_backward(dy, s.x, s.shared_counts, s.shared_pre, s.shared_h, w.shared_w1, w.shared_w2, bias, c.activation);
    g.shared_w1 = sg.dw1;
    g.shared_b1 = sg.db1;
    g.shared_w2 = sg.dw2;
    g.shared_b2 = sg.db2;
  }
  FFNGrads eg = ffn_backward(u.d_rows, s.rows, s.counts, s.pre, s.h, w.w1, w.w2, bias, c.activation);
  g.w1 = eg.dw1;
  g.b1 = eg.db1;
  g.w2 = eg.dw2;
  g.b2 = eg.db2;
  Tensor dx = ops::permute_backward(eg.dx, s.pair_to_row)();
  ops::axpby(dx, gg.dx, 1, 1)();
  if (sg.dx.defined()) ops::axpby(dx, sg.dx, 1, 1)();
  return dx;
}

}  // namespace moe::layer
