// info(): what the core found (threads, BLAS and its core, CUDA and why not);
// memoryStats(device, madeSince?): live tensors and bytes (made since then).
#include "../cpp/core/blas.h"
#include "../cpp/core/cuda_device.h"
#include "../cpp/core/cuda_probe.h"
#include "../cpp/core/host_allocator.h"
#include "../cpp/core/op_clock.h"
#include "../cpp/core/parallel.h"
#include "addon.h"
#include "async.h"
#include "convert.h"

namespace moe::binding {
namespace {

Napi::Value info(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("threads", num_threads());

  const BlasInfo& b = blas_info();
  Napi::Object blas = Napi::Object::New(env);
  blas.Set("loaded", b.loaded);
  blas.Set("library", b.library);
  blas.Set("core", b.core);
  blas.Set("coretype", b.coretype_env);
  blas.Set("coretypeSetByMoeEp", b.coretype_set_by_us);
  blas.Set("threads", b.threads);
  blas.Set("reason", b.reason);
  o.Set("blas", blas);

  const CudaStatus& c = cuda_status();
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("built", c.built);
  cuda.Set("available", c.available);
  cuda.Set("emulated", c.emulated);
  cuda.Set("deviceCount", c.device_count);
  cuda.Set("runtimeVersion", c.runtime_version);
  cuda.Set("driverVersion", c.driver_version);
  cuda.Set("archs", c.archs);
  cuda.Set("reason", c.reason);
  o.Set("cuda", cuda);

  Napi::Object gloo = Napi::Object::New(env);
#ifdef MOE_EP_WITH_GLOO
  gloo.Set("built", true);
#ifdef MOE_EP_GLOO_PLUGIN
  gloo.Set("plugin", true);
#else
  gloo.Set("plugin", false);
#endif
#else
  gloo.Set("built", false);
#endif
  o.Set("gloo", gloo);
  return o;
}

Napi::Value memory_stats(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  return guard(env, [&]() -> Napi::Value {
    const Device device = Device::parse(cb[0].IsString() ? to_string(cb[0], "device") : "cpu");
    MemoryStats s =
        cb[1].IsNumber() ? moe::memory_stats(device, cb[1].As<Napi::Number>().Int64Value()) : moe::memory_stats(device);
    Napi::Object o = Napi::Object::New(env);
    o.Set("tensors", double(s.tensors));
    o.Set("bytes", double(s.bytes));
    o.Set("peakBytes", double(s.peak_bytes));
    o.Set("cachedBytes", double(s.cached_bytes));
    o.Set("made", double(s.made));
    return o;
  });
}

// hostCounters(): the host allocator's running totals, the bytes it holds and V8's external-memory
// count (tensor_handle.h), and the process's page faults.
Napi::Value host_counters(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const HostCounters h = moe::host_counters();
  Napi::Object o = Napi::Object::New(env);
  o.Set("heldBytes", double(host_held_bytes()));
  o.Set("reportedBytes", double(data(env).reported_host_bytes));
  o.Set("v8ExternalBytes", double(Napi::MemoryManagement::AdjustExternalMemory(env, 0)));
  o.Set("allocatedBytes", double(h.allocated_bytes));
  o.Set("systemBytes", double(h.system_bytes));
  o.Set("zeroedBytes", double(h.zeroed_bytes));
  o.Set("minorFaults", double(h.minor_faults));
  o.Set("majorFaults", double(h.major_faults));
  return o;
}

// opTimes(reset?): [{ name, calls, ms }] of the CPU ops since the last reset (then resets when asked).
Napi::Value op_times(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const std::vector<OpTime> times = moe::op_times();
  if (cb[0].IsBoolean() && cb[0].As<Napi::Boolean>().Value()) op_times_reset();
  Napi::Array a = Napi::Array::New(env, times.size());
  for (size_t i = 0; i < times.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", times[i].name);
    o.Set("calls", double(times[i].calls));
    o.Set("ms", double(times[i].nanoseconds) / 1e6);
    a.Set(uint32_t(i), o);
  }
  return a;
}

// synchronize(): a Promise settled once all work queued so far has run, on
// the CPU stream and on every CUDA device used; it rejects with the first
// error a GPU kernel found since the last synchronisation, naming its op.
Napi::Value synchronize(const Napi::CallbackInfo& cb) {
  return run_async<bool>(
      cb.Env(),
      [] {
        cuda::synchronize_all();
        return true;
      },
      [](Napi::Env env, bool&) { return env.Undefined(); });
}

// emptyCache(): the host allocator's cached blocks, and the unused memory of
// every used CUDA device's pool (after waiting for that device).
Napi::Value empty_cache(const Napi::CallbackInfo& cb) {
  return guard(cb.Env(), [&] {
    host_empty_cache();
    cuda::empty_cache();
    return cb.Env().Undefined();
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("emptyCache", Napi::Function::New(env, empty_cache));
  exports.Set("hostCounters", Napi::Function::New(env, host_counters));
  exports.Set("info", Napi::Function::New(env, info));
  exports.Set("opTimes", Napi::Function::New(env, op_times));
  exports.Set("memoryStats", Napi::Function::New(env, memory_stats));
  exports.Set("synchronize", Napi::Function::New(env, synchronize));
});

}  // namespace
}  // namespace moe::binding
