#include "../cpp/ops/kept_weights.h"
#include "../cpp/ops/residual.h"

#include "addon.h"
#include "async.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value residual_mix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::residual_mix(NativeTensor::From(info[0], "moe"), NativeTensor::From(info[1], "mlp"),
                                  NativeTensor::From(info[2], "logits"), NativeTensor::From(info[3], "bias"));
    return run_async(env, task, [](Napi::Env env, Tensor& y) -> Napi::Value { return NativeTensor::Adopt(env, y); });
  });
}

Napi::Value residual_mix_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::residual_mix_backward(NativeTensor::From(info[0], "dy"), NativeTensor::From(info[1], "moe"),
                                           NativeTensor::From(info[2], "mlp"), NativeTensor::From(info[3], "logits"),
                                           NativeTensor::From(info[4], "bias"));
    return run_async(env, task, [](Napi::Env env, ops::ResidualMixGrads& g) -> Napi::Value {
      Napi::Object o = Napi::Object::New(env);
      o.Set("dMoe", NativeTensor::Adopt(env, g.d_moe));
      o.Set("dMlp", NativeTensor::Adopt(env, g.d_mlp));
      o.Set("dLogits", NativeTensor::Adopt(env, g.d_logits));
      o.Set("dBias", NativeTensor::Adopt(env, g.d_bias));
      return o;
    });
  });
}

Napi::Value renormalize_kept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::renormalize_kept(NativeTensor::From(info[0], "weights"), NativeTensor::From(info[1], "pairToRow"));
    return run_async(env, task, [](Napi::Env env, Tensor& w) -> Napi::Value { return NativeTensor::Adopt(env, w); });
  });
}

Napi::Value renormalize_kept_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task =
        ops::renormalize_kept_backward(NativeTensor::From(info[0], "weights"), NativeTensor::From(info[1], "pairToRow"),
                                       NativeTensor::From(info[2], "dKept"));
    return run_async(env, task, [](Napi::Env env, Tensor& d) -> Napi::Value { return NativeTensor::Adopt(env, d); });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("residualMix", Napi::Function::New(env, residual_mix));
  exports.Set("residualMixBackward", Napi::Function::New(env, residual_mix_backward));
  exports.Set("renormalizeKept", Napi::Function::New(env, renormalize_kept));
  exports.Set("renormalizeKeptBackward", Napi::Function::New(env, renormalize_kept_backward));
});

}  // namespace
}  // namespace moe::binding
