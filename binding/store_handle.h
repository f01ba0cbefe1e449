// NativeStore: the JS handle of a cpp/comm store. Other bindings (process
// groups) take the store out of it with NativeStore::From.
#pragma once
#include <napi.h>

#include <memory>

#include "../cpp/comm/store.h"

namespace moe::binding {

class NativeStore : public Napi::ObjectWrap<NativeStore> {
 public:
  static Napi::Function Define(Napi::Env env);
  // The store behind a JS value; ERR_MOE_DISPOSED once closed, a TypeError naming `what` otherwise.
  static std::shared_ptr<comm::Store> From(Napi::Value v, const char* what);

  explicit NativeStore(const Napi::CallbackInfo& info);

 private:
  std::shared_ptr<comm::Store> live(Napi::Env env, const char* op);
  Napi::Value Set(const Napi::CallbackInfo& info);
  Napi::Value Get(const Napi::CallbackInfo& info);
  Napi::Value Wait(const Napi::CallbackInfo& info);
  Napi::Value Check(const Napi::CallbackInfo& info);
  Napi::Value Add(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetUrl(const Napi::CallbackInfo& info);
  Napi::Value GetTimeoutMs(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  std::shared_ptr<comm::Store> store_;
  std::string url_;
  int64_t timeout_ms_ = 0;
};

}  // namespace moe::binding
