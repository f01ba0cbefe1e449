#include "tensor_handle.h"

#include "../cpp/core/host_copy.h"
#include "../cpp/core/size.h"
#include "addon.h"
#include "convert.h"

namespace moe::binding {

void NativeTensor::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DefineClass(env, "NativeTensor",
                                   {
                                       InstanceAccessor<&NativeTensor::GetDtype>("dtype"),
                                       InstanceAccessor<&NativeTensor::GetShape>("shape"),
                                       InstanceAccessor<&NativeTensor::GetDevice>("device"),
                                       InstanceAccessor<&NativeTensor::GetDisposed>("disposed"),
                                       InstanceAccessor<&NativeTensor::GetExternal>("external"),
                                       InstanceMethod<&NativeTensor::Read>("read"),
                                       InstanceMethod<&NativeTensor::Dispose>("dispose"),
                                   });
  data(env).tensor_class = Napi::Persistent(cls);
  exports.Set("NativeTensor", cls);
}

// new NativeTensor(dtype, shape, device, data?, dataDtype?, zero?)
// With no arguments, inside Adopt, it takes the core tensor Adopt hands over.
// Host tensors from this size on are reported to V8 as external memory.
constexpr size_t kReportedBytes = 4096;

NativeTensor::NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
  Napi::Env env = info.Env();
  guard(env, [&]() -> Napi::Value {
    AddonData& d = data(env);
    if (info.Length() == 0 && d.adopting) {
      tensor_ = std::move(*d.adopting);
      d.adopting = nullptr;
    } else {
      DType dtype = parse_dtype(to_string(info[0], "dtype"));
      Shape shape = to_shape(info[1], "shape");
      Device device = Device::parse(to_string(info[2], "device"));
      if (info[3].IsTypedArray()) {
        Napi::TypedArray arr = info[3].As<Napi::TypedArray>();
        DType src = parse_dtype(to_string(info[4], "dataDtype"));
        const uint8_t* bytes = static_cast<const uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
        tensor_ = from_host(dtype, shape, device, bytes, src, int64_t(arr.ElementLength()));
      } else if (info[5].ToBoolean()) {
        tensor_ = zeros(dtype, shape, device);
      } else {
        tensor_ = empty(dtype, shape, device);
      }
    }
    // Host memory only: V8 weighs external memory against its heap, and an
    // increase past its soft limit (64 MiB) starts a garbage collection there
    // and then, which for device tensors would cost every op that makes a
    // large output a collection without freeing any host memory.
    // Below a page the report costs more than an op on such a tensor (half of a small op's floor),
    // and weighs nothing against the heap: those are not reported.
    reported_bytes_ =
        tensor_.device().kind == Device::CPU && tensor_.bytes() >= kReportedBytes ? int64_t(tensor_.bytes()) : 0;
    if (reported_bytes_ != 0) Napi::MemoryManagement::AdjustExternalMemory(env, reported_bytes_);
    return env.Undefined();
  });
}

NativeTensor::~NativeTensor() {
  // Finalizers may not call into JS; the external-memory count is dropped with the env.
  tensor_ = Tensor();
}

void NativeTensor::Release(Napi::Env env) {
  if (!tensor_.defined()) return;
  tensor_ = Tensor();
  if (reported_bytes_ != 0) Napi::MemoryManagement::AdjustExternalMemory(env, -reported_bytes_);
  reported_bytes_ = 0;
}

Napi::Object NativeTensor::Adopt(Napi::Env env, Tensor t) {
  AddonData& d = data(env);
  d.adopting = &t;  // the constructor takes it: cheaper than an External, which the GC must finalize
  try {
    Napi::Object o = d.tensor_class.New({});
    d.adopting = nullptr;
    return o;
  } catch (...) {
    d.adopting = nullptr;
    throw;
  }
}

Tensor NativeTensor::From(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data(env).tensor_class.Value()))
    throw make_error(env, Code::Value, std::string("expected ") + what + " to be a Tensor");
  NativeTensor* t = ObjectWrap<NativeTensor>::Unwrap(v.As<Napi::Object>());
  if (!t->tensor_.defined())
    throw make_error(env, Code::Disposed, std::string("expected ") + what + " to be a live tensor but it was disposed");
  return t->tensor_;
}

Tensor NativeTensor::FromOptional(Napi::Value v, const char* what) {
  if (v.IsUndefined() || v.IsNull()) return Tensor();
  return From(v, what);
}

Napi::Value NativeTensor::GetDtype(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), dtype_name(tensor_.dtype));
}

Napi::Value NativeTensor::GetShape(const Napi::CallbackInfo& info) { return from_shape(info.Env(), tensor_.shape); }

Napi::Value NativeTensor::GetDevice(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), tensor_.defined() ? tensor_.device().str() : "none");
}

Napi::Value NativeTensor::GetDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !tensor_.defined());
}

// Whether the tensor counts toward V8's external memory: only then does a handle
// collected without dispose() need Release (the facade's FinalizationRegistry) to
// take its bytes back off that count. The storage itself goes with the handle.
Napi::Value NativeTensor::GetExternal(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), reported_bytes_ != 0);
}

// read(dtype): a fresh V8-owned ArrayBuffer holding the elements as `dtype`.
Napi::Value NativeTensor::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!tensor_.defined()) throw make_error(env, Code::Disposed, "read: the tensor was disposed");
    DType as = parse_dtype(to_string(info[0], "dtype"));
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, checked_bytes(tensor_.numel(), as));
    to_host(tensor_, buf.Data(), as);
    return buf;
  });
}

Napi::Value NativeTensor::Dispose(const Napi::CallbackInfo& info) {
  Release(info.Env());
  return info.Env().Undefined();
}

static Registration reg([](Napi::Env env, Napi::Object exports) { NativeTensor::Init(env, exports); });

}  // namespace moe::binding
