#include "../cpp/ops/grouped_gemm.h"

#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

// groupedGemm(x, w, rowsPerExpert, bias?)
Napi::Value grouped_gemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto task =
        ops::grouped_gemm(NativeTensor::From(info[0], "x"), NativeTensor::From(info[1], "w"),
                          NativeTensor::From(info[2], "rowsPerExpert"), NativeTensor::FromOptional(info[3], "bias"));
    return run_async(env, task, [](Napi::Env env, Tensor& y) -> Napi::Value { return NativeTensor::Adopt(env, y); });
  });
}

// groupedGemmBackward(dy, x, w, rowsPerExpert, { needDx, needDw, needDbias, dwInto?, accumulate })
Napi::Value grouped_gemm_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 4);
    ops::GroupedGemmNeeds needs;
    needs.dx = get_bool(o, "needDx", true);
    needs.dw = get_bool(o, "needDw", true);
    needs.dbias = get_bool(o, "needDbias", false);
    needs.dw_into = NativeTensor::FromOptional(o.Get("dwInto"), "dwInto");
    needs.accumulate = get_bool(o, "accumulate", false);
    auto task = ops::grouped_gemm_backward(NativeTensor::From(info[0], "dy"), NativeTensor::From(info[1], "x"),
                                           NativeTensor::From(info[2], "w"),
                                           NativeTensor::From(info[3], "rowsPerExpert"), needs);
    return run_async(env, task, [](Napi::Env env, ops::GroupedGemmGrads& g) -> Napi::Value {
      Napi::Object r = Napi::Object::New(env);
      if (g.dx.defined()) r.Set("dx", NativeTensor::Adopt(env, g.dx));
      if (g.dw.defined()) r.Set("dw", NativeTensor::Adopt(env, g.dw));
      if (g.dbias.defined()) r.Set("dbias", NativeTensor::Adopt(env, g.dbias));
      return r;
    });
  });
}

// groupedGemmCudaSupport({ dtype, k, n, needDbias }) -> { supported, reason }
Napi::Value grouped_gemm_cuda_support(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 0);
    const std::string why =
        ops::grouped_gemm_cuda_unsupported(parse_dtype(get_string(o, "dtype", "")), int64_t(get_number(o, "k", 0)),
                                           int64_t(get_number(o, "n", 0)), get_bool(o, "needDbias", false));
    Napi::Object r = Napi::Object::New(env);
    r.Set("supported", Napi::Boolean::New(env, why.empty()));
    r.Set("reason", Napi::String::New(env, why));
    return r;
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("groupedGemm", Napi::Function::New(env, grouped_gemm));
  exports.Set("groupedGemmBackward", Napi::Function::New(env, grouped_gemm_backward));
  exports.Set("groupedGemmCudaSupport", Napi::Function::New(env, grouped_gemm_cuda_support));
});

}  // namespace
}  // namespace moe::binding
