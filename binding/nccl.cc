// ncclStatus(): whether NCCL can be used here, and why not. The library is
// loaded on the first call (once per process); a missing library, an old one
// or a machine without a device is reported, never thrown.
#include "../cpp/comm/nccl_api.h"
#include "addon.h"

namespace moe::binding {
namespace {

Napi::Value nccl_status(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const comm::nccl::Status& s = comm::nccl::status();
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", s.available);
  o.Set("loaded", s.loaded);
  o.Set("version", s.version);
  o.Set("versionCode", s.version_code);
  o.Set("library", s.library);
  o.Set("reason", s.reason);
  o.Set("supportsBf16", s.supports_bf16);
  o.Set("nonBlocking", s.non_blocking);
  return o;
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("ncclStatus", Napi::Function::New(env, nccl_status));
});

}  // namespace
}  // namespace moe::binding
