// Measuring helpers for the benchmarks (cpp/bench): the machine's limits, run
// on the CPU stream like any op so JavaScript stays free while they measure.
#include "../cpp/bench/cuda_bench.h"
#include "../cpp/bench/peak.h"
#include "../cpp/core/parallel.h"
#include "addon.h"
#include "async.h"
#include "convert.h"

namespace moe::binding {
namespace {

// fmaPeak({ threads, seconds })
Napi::Value fma_peak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 0);
    auto task = bench::fma_peak(int(get_number(o, "threads", num_threads())), get_number(o, "seconds", 0.5));
    return run_async(env, task, [](Napi::Env env, bench::FmaPeak& r) -> Napi::Value {
      Napi::Object out = Napi::Object::New(env);
      out.Set("gflops", r.gflops);
      out.Set("isa", r.isa);
      out.Set("threads", r.threads);
      out.Set("seconds", r.seconds);
      return out;
    });
  });
}

// memcpyBandwidth({ bytes, threads })
Napi::Value memcpy_bandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 0);
    auto task = bench::memcpy_bandwidth(int64_t(get_number(o, "bytes", 64.0 * (1 << 20))),
                                        int(get_number(o, "threads", num_threads())));
    return run_async(env, task, [](Napi::Env env, bench::MemcpyBandwidth& r) -> Napi::Value {
      Napi::Object out = Napi::Object::New(env);
      out.Set("gbps", r.gbps);
      out.Set("counted", "read+write");
      out.Set("bytes", r.bytes);
      out.Set("threads", r.threads);
      out.Set("repetitions", r.repetitions);
      out.Set("seconds", r.seconds);
      return out;
    });
  });
}

// sgemmRate({ m, n, k, iterations })
Napi::Value sgemm_rate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 0);
    auto task = bench::sgemm_rate(int(get_number(o, "m", 4096)), int(get_number(o, "n", 2048)),
                                  int(get_number(o, "k", 1024)), int(get_number(o, "iterations", 5)));
    return run_async(env, task, [](Napi::Env env, bench::SgemmRate& r) -> Napi::Value {
      Napi::Object out = Napi::Object::New(env);
      out.Set("gflops", r.gflops);
      out.Set("bestGflops", r.best_gflops);
      out.Set("iterations", r.iterations);
      out.Set("core", r.core);
      return out;
    });
  });
}

Napi::Object kernel_time(Napi::Env env, const bench::KernelTime& t) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("medianUs", t.median_us);
  out.Set("bestUs", t.best_us);
  out.Set("reps", t.reps);
  out.Set("batches", t.batches);
  return out;
}

// cudaRouteKernel({ device, tokens, experts, topK, reps, batches }): the fused routing launch alone.
Napi::Value cuda_route_kernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 0);
    auto task = bench::cuda_route_kernel(Device::parse(get_string(o, "device", "cuda:0")),
                                         int64_t(get_number(o, "tokens", 8192)), int(get_number(o, "experts", 64)),
                                         int(get_number(o, "topK", 8)), int(get_number(o, "reps", 20)),
                                         int(get_number(o, "batches", 7)));
    return run_async(env, task, [](Napi::Env env, bench::KernelTime& t) -> Napi::Value { return kernel_time(env, t); });
  });
}

// cudaCopyRate({ device, bytes, reps, batches }): device-to-device copy bandwidth (read + write).
Napi::Value cuda_copy_rate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object o = options_arg(info, 0);
    auto task = bench::cuda_copy_rate(Device::parse(get_string(o, "device", "cuda:0")),
                                      int64_t(get_number(o, "bytes", 256.0 * (1 << 20))),
                                      int(get_number(o, "reps", 10)), int(get_number(o, "batches", 7)));
    return run_async(env, task, [](Napi::Env env, bench::CopyRate& r) -> Napi::Value {
      Napi::Object out = Napi::Object::New(env);
      out.Set("gbps", r.gbps);
      out.Set("medianUs", r.median_us);
      out.Set("bytes", r.bytes);
      out.Set("counted", "read+write");
      return out;
    });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("cudaRouteKernel", Napi::Function::New(env, cuda_route_kernel));
  exports.Set("cudaCopyRate", Napi::Function::New(env, cuda_copy_rate));
  exports.Set("fmaPeak", Napi::Function::New(env, fma_peak));
  exports.Set("memcpyBandwidth", Napi::Function::New(env, memcpy_bandwidth));
  exports.Set("sgemmRate", Napi::Function::New(env, sgemm_rate));
});

}  // namespace
}  // namespace moe::binding
