// openStore(url, {rank, worldSize, runId, timeoutMs, maxBytes}) -> NativeStore, whose
// set/get/wait/check/add return Promises settled from cpp/comm's blocking pool.
#include <cstdint>
#include <cstring>

#include "addon.h"
#include "blocking.h"
#include "convert.h"
#include "store_handle.h"
#include "../cpp/comm/net.h"

namespace moe::binding {
namespace {

// Marks objects made by NativeStore's constructor (napi_type_tag), so From
// can tell them from look-alikes.
constexpr napi_type_tag kStoreTag = {0x6d6f652d65702d73ull, 0x746f72652d763121ull};

std::string key_arg(const Napi::CallbackInfo& info, size_t i) { return to_string(info[i], "key"); }

comm::Bytes value_arg(Napi::Value v) {
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    return comm::Bytes(s.begin(), s.end());
  }
  if (v.IsTypedArray()) {
    Napi::TypedArray a = v.As<Napi::TypedArray>();
    const uint8_t* p = static_cast<const uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
    return comm::Bytes(p, p + a.ByteLength());
  }
  throw make_error(v.Env(), Code::Value, "store set: expected the value to be a Uint8Array or a string");
}

std::vector<std::string> keys_arg(Napi::Value v) {
  if (!v.IsArray()) throw make_error(v.Env(), Code::Value, "store: expected keys to be an array of strings");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<std::string> keys;
  for (uint32_t i = 0; i < a.Length(); ++i) keys.push_back(to_string(a.Get(i), "keys[i]"));
  return keys;
}

comm::Millis timeout_arg(const Napi::CallbackInfo& info, size_t i, comm::Millis fallback) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return fallback;
  if (!info[i].IsNumber()) throw make_error(info.Env(), Code::Value, "store: expected timeoutMs to be a number");
  double ms = info[i].As<Napi::Number>().DoubleValue();
  if (!(ms >= 0)) throw make_error(info.Env(), Code::Value, "store: expected timeoutMs >= 0");
  return comm::Millis(int64_t(std::min(ms, 9.0e15)));
}

struct Unit {};

// An integer option within [lo, hi]; the TypeScript facade checks first, this guards direct calls.
int64_t int_option(Napi::Object o, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  double v = get_number(o, key, double(fallback));
  if (!(v >= double(lo) && v <= double(hi)) || v != double(int64_t(v))) {
    throw make_error(o.Env(), Code::Value,
                     std::string("store: expected option ") + key + " to be an integer in [" + std::to_string(lo) +
                         ", " + std::to_string(hi) + "]");
  }
  return int64_t(v);
}

}  // namespace

Napi::Function NativeStore::Define(Napi::Env env) {
  return DefineClass(env, "NativeStore",
                     {
                         InstanceMethod<&NativeStore::Set>("set"),
                         InstanceMethod<&NativeStore::Get>("get"),
                         InstanceMethod<&NativeStore::Wait>("wait"),
                         InstanceMethod<&NativeStore::Check>("check"),
                         InstanceMethod<&NativeStore::Add>("add"),
                         InstanceMethod<&NativeStore::Close>("close"),
                         InstanceAccessor<&NativeStore::GetUrl>("url"),
                         InstanceAccessor<&NativeStore::GetTimeoutMs>("timeoutMs"),
                         InstanceAccessor<&NativeStore::GetClosed>("closed"),
                     });
}

// Only openStore constructs these, passing the opened store as an External.
NativeStore::NativeStore(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeStore>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "NativeStore is made by openStore(url, options)");
  }
  store_ = *info[0].As<Napi::External<std::shared_ptr<comm::Store>>>().Data();
  url_ = store_->url();
  timeout_ms_ = store_->timeout().count();
  info.This().As<Napi::Object>().TypeTag(&kStoreTag);
}

std::shared_ptr<comm::Store> NativeStore::From(Napi::Value v, const char* what) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kStoreTag)) {
    throw Napi::TypeError::New(v.Env(), std::string("expected ") + what + " to be a store from openStore");
  }
  return Unwrap(v.As<Napi::Object>())->live(v.Env(), "use");
}

std::shared_ptr<comm::Store> NativeStore::live(Napi::Env env, const char* op) {
  if (!store_) throw make_error(env, Code::Disposed, std::string("store ") + op + ": the store is closed");
  return store_;
}

Napi::Value NativeStore::Set(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto store = live(env, "set");
    std::string key = key_arg(info, 0);
    comm::Bytes value = value_arg(info[1]);
    Task<Unit> work = [store, key, value = std::move(value)] {
      store->set(key, value);
      return Unit{};
    };
    return run_blocking_async(env, work, [](Napi::Env env, Unit&) -> Napi::Value { return env.Undefined(); });
  });
}

Napi::Value NativeStore::Get(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto store = live(env, "get");
    std::string key = key_arg(info, 0);
    comm::Millis timeout = timeout_arg(info, 1, store->timeout());
    Task<comm::Bytes> work = [store, key, timeout] { return store->get(key, timeout); };
    return run_blocking_async(env, work, [](Napi::Env env, comm::Bytes& v) -> Napi::Value {
      // Copied into a V8-owned buffer (external buffers are refused under Electron's memory cage).
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, v.size());
      if (!v.empty()) std::memcpy(ab.Data(), v.data(), v.size());
      return Napi::Uint8Array::New(env, v.size(), ab, 0);
    });
  });
}

Napi::Value NativeStore::Wait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto store = live(env, "wait");
    std::vector<std::string> keys = keys_arg(info[0]);
    comm::Millis timeout = timeout_arg(info, 1, store->timeout());
    Task<Unit> work = [store, keys, timeout] {
      store->wait(keys, timeout);
      return Unit{};
    };
    return run_blocking_async(env, work, [](Napi::Env env, Unit&) -> Napi::Value { return env.Undefined(); });
  });
}

Napi::Value NativeStore::Check(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto store = live(env, "check");
    std::vector<std::string> keys = keys_arg(info[0]);
    Task<bool> work = [store, keys] { return store->check(keys); };
    return run_blocking_async(env, work,
                              [](Napi::Env env, bool& v) -> Napi::Value { return Napi::Boolean::New(env, v); });
  });
}

Napi::Value NativeStore::Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto store = live(env, "add");
    std::string key = key_arg(info, 0);
    if (!info[1].IsNumber()) throw make_error(env, Code::Value, "store add: expected delta to be an integer");
    int64_t delta = info[1].As<Napi::Number>().Int64Value();
    Task<int64_t> work = [store, key, delta] { return store->add(key, delta); };
    return run_blocking_async(
        env, work, [](Napi::Env env, int64_t& v) -> Napi::Value { return Napi::Number::New(env, double(v)); });
  });
}

// Fails pending and later calls with ERR_MOE_DISPOSED and stops a tcp server.
Napi::Value NativeStore::Close(const Napi::CallbackInfo& info) {
  if (store_) {
    store_->close();
    store_.reset();
  }
  return info.Env().Undefined();
}

Napi::Value NativeStore::GetUrl(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), url_); }
Napi::Value NativeStore::GetTimeoutMs(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(timeout_ms_));
}
Napi::Value NativeStore::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !store_); }

namespace {

Registration reg([](Napi::Env env, Napi::Object exports) {
  // addressToward(host, port): the local address of the route to host (lib/launch/address.ts).
  exports.Set("addressToward", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                Napi::Env env = info.Env();
                return guard(env, [&]() -> Napi::Value {
                  std::string host = to_string(info[0], "host");
                  double port = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
                  return Napi::String::New(env, comm::net::address_toward(host, int(port)));
                });
              }));
  auto ctor = std::make_shared<Napi::FunctionReference>(Napi::Persistent(NativeStore::Define(env)));
  exports.Set("openStore",
              Napi::Function::New(
                  env,
                  [ctor](const Napi::CallbackInfo& info) -> Napi::Value {
                    Napi::Env env = info.Env();
                    return guard(env, [&]() -> Napi::Value {
                      std::string url = to_string(info[0], "url");
                      Napi::Object o = options_arg(info, 1);
                      comm::StoreOptions opts;  // its defaults are the core's
                      opts.rank = int(int_option(o, "rank", 0, 0, INT32_MAX));
                      opts.world_size = int(int_option(o, "worldSize", 1, 1, INT32_MAX));
                      opts.run_id = get_string(o, "runId", "");
                      opts.timeout =
                          comm::Millis(int_option(o, "timeoutMs", opts.timeout.count(), 0, int64_t(1) << 53));
                      opts.max_bytes = size_t(int_option(o, "maxBytes", int64_t(opts.max_bytes),
                                                         int64_t(comm::kMinMaxStoreBytes), int64_t(1) << 53));
                      auto store = comm::open_store(url, opts);
                      return ctor->New({Napi::External<std::shared_ptr<comm::Store>>::New(env, &store)});
                    });
                  },
                  "openStore"));
});

}  // namespace
}  // namespace moe::binding
