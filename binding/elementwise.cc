#include "../cpp/ops/elementwise.h"

#include <string>
#include <vector>

#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::add(NativeTensor::From(info[0], "a"), NativeTensor::From(info[1], "b"));
    return run_async(env, task,
                     [](Napi::Env env, Tensor& out) -> Napi::Value { return NativeTensor::Adopt(env, out); });
  });
}

// axpby(y, x | undefined, { alpha, beta })
Napi::Value axpby(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 2);
    auto task = ops::axpby(NativeTensor::From(info[0], "y"), NativeTensor::FromOptional(info[1], "x"),
                           get_number(o, "alpha", 1), get_number(o, "beta", 1));
    return run_async(env, task, [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  });
}

// sumSquares([t0, t1, ...])
Napi::Value sum_squares(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    if (!info[0].IsArray()) throw make_error(env, Code::Value, "sumSquares: expected an array of tensors");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<Tensor> ts;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      const std::string name = "tensors[" + std::to_string(i) + "]";
      ts.push_back(NativeTensor::From(a.Get(i), name.c_str()));
    }
    auto task = ops::sum_squares(ts);
    return run_async(env, task,
                     [](Napi::Env env, Tensor& out) -> Napi::Value { return NativeTensor::Adopt(env, out); });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("add", Napi::Function::New(env, add));
  exports.Set("axpby", Napi::Function::New(env, axpby));
  exports.Set("sumSquares", Napi::Function::New(env, sum_squares));
});

}  // namespace
}  // namespace moe::binding
