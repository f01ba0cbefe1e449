// NativeTensor: the JS handle of a core tensor. dispose() drops the handle's
// reference; storage still used by queued work lives until that work ends. A
// handle collected without dispose() abandons its storage (Storage::abandon).
//
// V8 is told of host memory through the allocator's held bytes, not tensor by
// tensor: each handle made or disposed brings V8's external-memory count to
// host_held_bytes() once it has moved by 1 MiB. A training step at a fixed
// shape reuses cached blocks and moves nothing, so V8 starts no collections
// for it; a program that forgets tensors makes the count grow (abandoned
// storage is not cached) and V8 collects them.
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
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  void Release(Napi::Env env);

  Tensor tensor_;
};

}  // namespace moe::binding
