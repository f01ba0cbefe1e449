#include "tensor_handle.h"

#include "../cpp/core/host_allocator.h"
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
                                       InstanceMethod<&NativeTensor::Read>("read"),
                                       InstanceMethod<&NativeTensor::Dispose>("dispose"),
                                   });
  data(env).tensor_class = Napi::Persistent(cls);
  exports.Set("NativeTensor", cls);
}

namespace {

// V8's count follows the held bytes in steps of at least this much: a report per small tensor
// would cost as much as the op that made it.
constexpr int64_t kSyncBytes = int64_t(1) << 20;

// Brings V8's external-memory count for this env to the host allocator's held bytes.
void sync_external_memory(Napi::Env env) {
  AddonData& d = data(env);
  const int64_t delta = host_held_bytes() - d.reported_host_bytes;
  if (delta < kSyncBytes && delta > -kSyncBytes) return;
  Napi::MemoryManagement::AdjustExternalMemory(env, delta);
  d.reported_host_bytes += delta;
}

}  // namespace

// new NativeTensor(dtype, shape, device, data?, dataDtype?, zero?)
// With no arguments, inside Adopt, it takes the core tensor Adopt hands over.
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
    sync_external_memory(env);
    return env.Undefined();
  });
}

NativeTensor::~NativeTensor() {
  // Collected without dispose(): the storage goes back to the system, and the next handle made or
  // disposed takes it off V8's count (finalizers may not call into V8).
  if (tensor_.defined()) tensor_.storage->abandon();
  tensor_ = Tensor();
}

void NativeTensor::Release(Napi::Env env) {
  if (!tensor_.defined()) return;
  tensor_ = Tensor();
  sync_external_memory(env);
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
