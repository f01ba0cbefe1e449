// reshape: a second handle on a tensor's storage with another shape of the
// same element count (no copy; writes through either handle show in both).

#include <string>

#include "addon.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value reshape(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Tensor t = NativeTensor::From(info[0], "t");
    Shape shape = to_shape(info[1], "shape");
    if (shape_numel(shape) != t.numel())
      fail(Code::Shape, "reshape: expected a shape of " + std::to_string(t.numel()) + " elements (like " +
                            shape_str(t.shape) + ") but received " + shape_str(shape));
    return NativeTensor::Adopt(env, Tensor{t.storage, t.dtype, shape});
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("reshape", Napi::Function::New(env, reshape));
});

}  // namespace
}  // namespace moe::binding
