#include "../cpp/ops/chunks.h"
#include "../cpp/ops/expert_bias.h"

#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value chunk_transpose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::chunk_transpose(NativeTensor::From(info[0], "x"), NativeTensor::From(info[1], "counts"));
    return run_async(env, task,
                     [](Napi::Env env, Tensor& out) -> Napi::Value { return NativeTensor::Adopt(env, out); });
  });
}

// expertBiasUpdate(bias, load, { rate })
Napi::Value expert_bias_update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 2);
    auto task = ops::expert_bias_update(NativeTensor::From(info[0], "bias"), NativeTensor::From(info[1], "load"),
                                        get_number(o, "rate", 0));
    return run_async(env, task, [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("chunkTranspose", Napi::Function::New(env, chunk_transpose));
  exports.Set("expertBiasUpdate", Napi::Function::New(env, expert_bias_update));
});

}  // namespace
}  // namespace moe::binding
