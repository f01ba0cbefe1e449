#include "addon.h"

#include <algorithm>
#include <vector>

#include "../cpp/comm/process_group.h"
#include "../cpp/core/stream.h"

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

void AddonData::adopt_group(const std::shared_ptr<comm::ProcessGroup>& g) {
  groups.erase(std::remove_if(groups.begin(), groups.end(), [](const auto& w) { return w.expired(); }), groups.end());
  groups.push_back(g);
}

namespace {

// Runs on the environment's thread while it is torn down (worker.terminate(),
// the end of a worker or of the main thread): after this nothing calls into it.
void cleanup(void* arg) {
  AddonData* d = static_cast<AddonData*>(arg);
  d->mailbox->close();
  cpu_stream_cancel(d);
  for (auto& w : d->groups)
    if (auto g = w.lock()) g->destroy();
  d->groups.clear();
  for (JsSide* js : d->pending) delete js;
  d->pending.clear();
}

}  // namespace

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
  auto* d = new moe::binding::AddonData();
  env.SetInstanceData(d);
  d->mailbox = moe::binding::Mailbox::create(env);
  // After the Mailbox's threadsafe function, so that this hook runs before Node tears that down.
  napi_add_env_cleanup_hook(env, moe::binding::cleanup, d);
  exports.Set("setErrorClass", Napi::Function::New(env, moe::binding::set_error_class));
  moe::binding::register_all(env, exports);
  return exports;
}

NODE_API_MODULE(moe_ep, Init)
