#include <cmath>

#include "../cpp/ops/permute.h"
#include "../cpp/ops/unpermute.h"
#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

ops::PermuteOptions permute_options(const Napi::CallbackInfo& info, size_t index) {
  Napi::Object o = options_arg(info, index);
  ops::PermuteOptions p;
  double experts = get_number(o, "numExperts", 0);
  if (!(std::floor(experts) == experts) || std::fabs(experts) > 9.0e15)
    throw make_error(info.Env(), Code::Value, "expected option numExperts to be an integer");
  p.num_experts = int64_t(experts);
  p.capacity_factor = get_optional_number(o, "capacityFactor");
  double min_capacity = get_number(o, "minCapacity", 0);
  if (!(std::floor(min_capacity) == min_capacity) || std::fabs(min_capacity) > 9.0e15)
    throw make_error(info.Env(), Code::Value, "expected option minCapacity to be an integer");
  p.min_capacity = int64_t(min_capacity);
  p.drop_policy = ops::parse_drop_policy(get_string(o, "dropPolicy", "probs"));
  p.pad_to_capacity = get_bool(o, "padToCapacity", false);
  return p;
}

Napi::Value permute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::permute(NativeTensor::From(info[0], "x"), NativeTensor::From(info[1], "indices"),
                             NativeTensor::From(info[2], "weights"), permute_options(info, 3));
    return run_async(env, task, [](Napi::Env env, ops::Permuted& p) -> Napi::Value {
      Napi::Object o = Napi::Object::New(env);
      o.Set("rows", NativeTensor::Adopt(env, p.rows));
      o.Set("rowsPerExpert", NativeTensor::Adopt(env, p.rows_per_expert));
      o.Set("pairToRow", NativeTensor::Adopt(env, p.pair_to_row));
      o.Set("rowToPair", NativeTensor::Adopt(env, p.row_to_pair));
      o.Set("dropped", Napi::Number::New(env, double(p.dropped)));
      o.Set("capacity", Napi::Number::New(env, double(p.capacity)));
      return o;
    });
  });
}

Napi::Value permute_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::permute_backward(NativeTensor::From(info[0], "dRows"), NativeTensor::From(info[1], "pairToRow"));
    return run_async(env, task, [](Napi::Env env, Tensor& dx) -> Napi::Value { return NativeTensor::Adopt(env, dx); });
  });
}

Napi::Value unpermute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task = ops::unpermute(NativeTensor::From(info[0], "rows"), NativeTensor::From(info[1], "pairToRow"),
                               NativeTensor::From(info[2], "weights"));
    return run_async(env, task, [](Napi::Env env, Tensor& y) -> Napi::Value { return NativeTensor::Adopt(env, y); });
  });
}

Napi::Value unpermute_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task =
        ops::unpermute_backward(NativeTensor::From(info[0], "dy"), NativeTensor::From(info[1], "rows"),
                                NativeTensor::From(info[2], "pairToRow"), NativeTensor::From(info[3], "weights"));
    return run_async(env, task, [](Napi::Env env, ops::UnpermuteGrads& g) -> Napi::Value {
      Napi::Object o = Napi::Object::New(env);
      o.Set("dRows", NativeTensor::Adopt(env, g.d_rows));
      o.Set("dWeights", NativeTensor::Adopt(env, g.d_weights));
      return o;
    });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("permute", Napi::Function::New(env, permute));
  exports.Set("permuteBackward", Napi::Function::New(env, permute_backward));
  exports.Set("unpermute", Napi::Function::New(env, unpermute));
  exports.Set("unpermuteBackward", Napi::Function::New(env, unpermute_backward));
});

}  // namespace
}  // namespace moe::binding
