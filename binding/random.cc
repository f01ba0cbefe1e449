#include "../cpp/ops/random.h"

#include <cmath>
#include <string>

#include "../cpp/core/check.h"
#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

// An integer option in [0, max], or ERR_MOE_VALUE naming it.
uint64_t get_index(Napi::Env env, Napi::Object o, const char* op, const char* key, double max) {
  const double v = get_number(o, key, 0);
  if (!(v >= 0 && v <= max && std::floor(v) == v))
    throw make_error(env, Code::Value,
                     std::string(op) + ": expected " + key + " to be an integer in [0, " + num_str(max) +
                         "] but received " + num_str(v));
  return uint64_t(v);
}

ops::RandomStream stream_of(Napi::Env env, Napi::Object o, const char* op) {
  ops::RandomStream s;
  s.seed = get_index(env, o, op, "seed", 9007199254740991.0);
  s.key = uint32_t(get_index(env, o, op, "key", 4294967295.0));
  return s;
}

// fillRandom(t, { seed, key, distribution, a, b, sliceSize, firstSlice })
Napi::Value fill_random(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 1);
    ops::FillRandomOptions f;
    f.stream = stream_of(env, o, "fillRandom");
    f.distribution = ops::parse_distribution(get_string(o, "distribution", "normal"));
    f.a = get_number(o, "a", 0);
    f.b = get_number(o, "b", 1);
    f.slice_size = int64_t(get_index(env, o, "fillRandom", "sliceSize", 9007199254740991.0));
    f.first_slice = int64_t(get_index(env, o, "fillRandom", "firstSlice", 4294967295.0));
    auto task = ops::fill_random(NativeTensor::From(info[0], "t"), f);
    return run_async(env, task, [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  });
}

// jitter(x, { eps, seed, key, slice })
Napi::Value jitter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 1);
    auto task = ops::jitter(NativeTensor::From(info[0], "x"), get_number(o, "eps", 0), stream_of(env, o, "jitter"),
                            int64_t(get_index(env, o, "jitter", "slice", 4294967295.0)));
    return run_async(env, task,
                     [](Napi::Env env, Tensor& out) -> Napi::Value { return NativeTensor::Adopt(env, out); });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("fillRandom", Napi::Function::New(env, fill_random));
  exports.Set("jitter", Napi::Function::New(env, jitter));
});

}  // namespace
}  // namespace moe::binding
