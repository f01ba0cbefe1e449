#include "../cpp/ops/activation.h"

#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value adopt(Napi::Env env, Tensor& t) { return NativeTensor::Adopt(env, t); }

// activation(x, kind)
Napi::Value activation(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Tensor x = NativeTensor::From(info[0], "x");
    auto task = ops::activation(x, ops::parse_activation("activation", to_string(info[1], "kind")));
    return run_async(env, task, adopt);
  });
}

// activationBackward(dh, x, kind, reuseDh?)
Napi::Value activation_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Tensor dh = NativeTensor::From(info[0], "dh");
    Tensor x = NativeTensor::From(info[1], "x");
    const bool reuse_dh = info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
    auto task = ops::activation_backward(dh, x, ops::parse_activation("activationBackward", to_string(info[2], "kind")),
                                         reuse_dh);
    return run_async(env, task, adopt);
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("activation", Napi::Function::New(env, activation));
  exports.Set("activationBackward", Napi::Function::New(env, activation_backward));
});

}  // namespace
}  // namespace moe::binding
