// C ABI: elementwise ops, random numbers, AdamW and the expert bias step.
#include <vector>

#include "../ops/adamw.h"
#include "../ops/elementwise.h"
#include "../ops/expert_bias.h"
#include "../ops/random.h"
#include "capi_ops.h"

using namespace moe;
using namespace moe::capi;

extern "C" {

moe_status moe_add(moe_tensor a, moe_tensor b, moe_tensor* out_t) {
  return guarded([&] {
    clear({out_t});
    out(out_t, ops::add(in(a, "a"), in(b, "b"))());
  });
}

moe_status moe_axpby(moe_tensor y, moe_tensor x, double alpha, double beta) {
  return guarded([&] { ops::axpby(in(y, "y"), optional_in(x), alpha, beta)(); });
}

moe_status moe_sum_squares(const moe_tensor* tensors, int n, moe_tensor* out_t) {
  return guarded([&] {
    clear({out_t});
    if (n < 0 || (n > 0 && !tensors))
      fail(Code::Value, "moe_sum_squares: expected n >= 0 tensors but received n " + std::to_string(n) +
                            (tensors ? "" : " and NULL"));
    std::vector<Tensor> list;
    list.reserve(size_t(n));
    for (int i = 0; i < n; ++i) list.push_back(in(tensors[i], ("tensors[" + std::to_string(i) + "]").c_str()));
    out(out_t, ops::sum_squares(list)());
  });
}

moe_status moe_fill_random(moe_tensor t, const moe_fill_random_options* options) {
  return guarded([&] {
    const moe_fill_random_options& o = options_in(options, "moe_fill_random");
    const int dist = enum_value(o.distribution);
    if (dist != MOE_NORMAL && dist != MOE_UNIFORM)
      fail(Code::Value,
           "moe_fill_random: expected distribution MOE_NORMAL or MOE_UNIFORM but received " + std::to_string(dist));
    ops::FillRandomOptions f;
    f.stream.seed = o.seed;
    f.stream.key = o.key;
    f.distribution = dist == MOE_UNIFORM ? ops::Distribution::Uniform : ops::Distribution::Normal;
    f.a = o.a;
    f.b = o.b;
    f.slice_size = o.slice_size;
    f.first_slice = o.first_slice;
    ops::fill_random(in(t, "t"), f)();
  });
}

moe_status moe_jitter(moe_tensor x, double eps, uint64_t seed, uint32_t key, int64_t slice, moe_tensor* y) {
  return guarded([&] {
    clear({y});
    out(y, ops::jitter(in(x, "x"), eps, ops::RandomStream{seed, key}, slice)());
  });
}

moe_status moe_adamw(moe_tensor param, moe_tensor grad, moe_tensor exp_avg, moe_tensor exp_avg_sq,
                     const moe_adamw_options* options) {
  return guarded([&] {
    const moe_adamw_options& o = options_in(options, "moe_adamw");
    ops::AdamWOptions a;
    a.lr = o.lr;
    a.beta1 = o.beta1;
    a.beta2 = o.beta2;
    a.eps = o.eps;
    a.weight_decay = o.weight_decay;
    a.step = o.step;
    ops::adamw(in(param, "param"), in(grad, "grad"), in(exp_avg, "exp_avg"), in(exp_avg_sq, "exp_avg_sq"), a)();
  });
}

moe_status moe_expert_bias_update(moe_tensor bias, moe_tensor load, double rate) {
  return guarded([&] { ops::expert_bias_update(in(bias, "bias"), in(load, "load"), rate)(); });
}

}  // extern "C"
