#include "../cpp/ops/gate.h"

#include "addon.h"
#include "async.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value gate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::gate(NativeTensor::From(info[0], "x"), NativeTensor::From(info[1], "wg"));
    return run_async(env, task,
                     [](Napi::Env env, Tensor& logits) -> Napi::Value { return NativeTensor::Adopt(env, logits); });
  });
}

Napi::Value gate_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::gate_backward(NativeTensor::From(info[0], "x"), NativeTensor::From(info[1], "wg"),
                                   NativeTensor::From(info[2], "dlogits"));
    return run_async(env, task, [](Napi::Env env, ops::GateGrads& g) -> Napi::Value {
      Napi::Object o = Napi::Object::New(env);
      o.Set("dx", NativeTensor::Adopt(env, g.dx));
      o.Set("dwg", NativeTensor::Adopt(env, g.dwg));
      return o;
    });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("gate", Napi::Function::New(env, gate));
  exports.Set("gateBackward", Napi::Function::New(env, gate_backward));
});

}  // namespace
}  // namespace moe::binding
