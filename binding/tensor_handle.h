// NativeTensor: the JS handle of a core tensor. dispose() drops the handle's
// reference; storage still used by queued work lives until that work ends.
#pragma once
#include <napi.h>

#include "../cpp/core/tensor.h"

namespace moe::binding {

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object Adopt(Napi::Env env, Tensor t);
  // The tensor behind a JS value; throws ERR_MOE_DISPOSED or a TypeError naming `what`.
  static Tensor From(Napi::Value v, const char* what);
  // Like From, but undefined/null gives an undefined tensor.
  static Tensor FromOptional(Napi::Value v, const char* what);

  explicit NativeTensor(const Napi::CallbackInfo& info);
  ~NativeTensor() override;

 private:
  Napi::Value GetDtype(const Napi::CallbackInfo& info);
  Napi::Value GetShape(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value GetExternal(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  void Release(Napi::Env env);

  Tensor tensor_;
  int64_t reported_bytes_ = 0;
};

}  // namespace moe::binding
