#include "addon.h"

#include <vector>

namespace moe::binding {
namespace {

std::vector<RegisterFn>& registry() {
  static std::vector<RegisterFn> fns;
  return fns;
}

Napi::Value set_error_class(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorClass expects a constructor");
  data(info.Env()).error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace

AddonData& data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Registration::Registration(RegisterFn fn) { registry().push_back(fn); }

void register_all(Napi::Env env, Napi::Object exports) {
  for (RegisterFn fn : registry()) fn(env, exports);
}

Napi::Error make_error(Napi::Env env, Code code, const std::string& message) {
  AddonData& d = data(env);
  if (!d.error_class.IsEmpty()) {
    Napi::Object err = d.error_class.New({Napi::String::New(env, message), Napi::String::New(env, code_name(code))});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code_name(code)));
  return err;
}

}  // namespace moe::binding

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new moe::binding::AddonData());
  exports.Set("setErrorClass", Napi::Function::New(env, moe::binding::set_error_class));
  moe::binding::register_all(env, exports);
  return exports;
}

NODE_API_MODULE(moe_ep, Init)
