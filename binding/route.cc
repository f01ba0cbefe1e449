#include <cmath>

#include "../cpp/ops/route.h"
#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

// An integer option (0 when absent); the facade has checked the type already.
int64_t get_int(Napi::Object o, const char* key) {
  double v = get_number(o, key, 0);
  if (!std::isfinite(v) || v != std::floor(v) || std::fabs(v) > 9007199254740991.0)
    throw make_error(o.Env(), Code::Value, std::string("expected option ") + key + " to be an integer");
  return int64_t(v);
}

ops::ScoreFunction get_score_function(Napi::Object o) {
  std::string f = get_string(o, "scoreFunction", "softmax");
  if (f == "softmax") return ops::ScoreFunction::Softmax;
  if (f == "sigmoid") return ops::ScoreFunction::Sigmoid;
  throw make_error(o.Env(), Code::Value,
                   "expected option scoreFunction to be \"softmax\" or \"sigmoid\" but received \"" + f + "\"");
}

// The choice options (absent groups are 0: none).
ops::RouteOptions choice_options(Napi::Object opts) {
  ops::RouteOptions o;
  o.top_k = get_int(opts, "topK");
  o.num_groups = get_int(opts, "numGroups");
  o.topk_groups = get_int(opts, "topkGroups");
  return o;
}

// route(logits, expertBias | undefined, { topK, scoreFunction, renormalize, numGroups, topkGroups })
Napi::Value route(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object opts = options_arg(info, 2);
    ops::RouteOptions o = choice_options(opts);
    o.score = get_score_function(opts);
    o.renormalize = get_bool(opts, "renormalize", false);
    o.selection_noise = NativeTensor::FromOptional(opts.Get("selectionNoise"), "selectionNoise");
    o.noise_from = get_int(opts, "noiseFrom");
    auto task = ops::route(NativeTensor::From(info[0], "logits"), NativeTensor::FromOptional(info[1], "expertBias"), o);
    return run_async(env, task, [](Napi::Env env, ops::RouteResult& r) -> Napi::Value {
      Napi::Object out = Napi::Object::New(env);
      out.Set("indices", NativeTensor::Adopt(env, r.indices));
      out.Set("weights", NativeTensor::Adopt(env, r.weights));
      out.Set("scores", NativeTensor::Adopt(env, r.scores));
      out.Set("tokensPerExpert", NativeTensor::Adopt(env, r.tokens_per_expert));
      out.Set("auxLoss", NativeTensor::Adopt(env, r.aux_loss));
      out.Set("zLoss", NativeTensor::Adopt(env, r.z_loss));
      return out;
    });
  });
}

// routeBackward(logits, indices, tokensPerExpert, dWeights | null, { scoreFunction, renormalize, auxLossGrad, zLossGrad
// })
Napi::Value route_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object opts = options_arg(info, 4);
    ops::RouteBackwardOptions o;
    o.score = get_score_function(opts);
    o.renormalize = get_bool(opts, "renormalize", false);
    o.aux_loss_grad = get_number(opts, "auxLossGrad", 0);
    o.z_loss_grad = get_number(opts, "zLossGrad", 0);
    auto task = ops::route_backward(NativeTensor::From(info[0], "logits"), NativeTensor::From(info[1], "indices"),
                                    NativeTensor::From(info[2], "tokensPerExpert"),
                                    NativeTensor::FromOptional(info[3], "dWeights"), o);
    return run_async(env, task,
                     [](Napi::Env env, Tensor& dlogits) -> Napi::Value { return NativeTensor::Adopt(env, dlogits); });
  });
}

// checkRouteOptions(op, { numExperts, topK, numGroups, topkGroups }): throws
// what route would for these options, before there are logits.
Napi::Value check_route_options(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    std::string op = to_string(info[0], "op");
    Napi::Object opts = options_arg(info, 1);
    ops::check_route_options(op.c_str(), get_int(opts, "numExperts"), choice_options(opts));
    return env.Undefined();
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("checkRouteOptions", Napi::Function::New(env, check_route_options));
  exports.Set("route", Napi::Function::New(env, route));
  exports.Set("routeBackward", Napi::Function::New(env, route_backward));
});

}  // namespace
}  // namespace moe::binding
