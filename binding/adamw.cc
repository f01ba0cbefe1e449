#include "../cpp/ops/adamw.h"

#include "../cpp/core/check.h"

#include <cmath>

#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

// adamw(param, grad, expAvg, expAvgSq, { lr, beta1, beta2, eps, weightDecay, step })
Napi::Value adamw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 4);
    ops::AdamWOptions opt;
    opt.lr = get_number(o, "lr", opt.lr);
    opt.beta1 = get_number(o, "beta1", opt.beta1);
    opt.beta2 = get_number(o, "beta2", opt.beta2);
    opt.eps = get_number(o, "eps", opt.eps);
    opt.weight_decay = get_number(o, "weightDecay", opt.weight_decay);
    double step = get_number(o, "step", 1);
    if (!(step >= 1 && step <= 9.0e15 && std::floor(step) == step))
      throw make_error(env, Code::Value, "adamw: expected step to be an integer >= 1 but received " + num_str(step));
    opt.step = int64_t(step);
    auto task = ops::adamw(NativeTensor::From(info[0], "param"), NativeTensor::From(info[1], "grad"),
                           NativeTensor::From(info[2], "expAvg"), NativeTensor::From(info[3], "expAvgSq"), opt);
    return run_async(env, task, [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) { exports.Set("adamw", Napi::Function::New(env, adamw)); });

}  // namespace
}  // namespace moe::binding
