#include "peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../core/blas.h"
#include "../core/host_allocator.h"
#include "../core/check.h"

namespace moe::bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

volatile float g_sink;  // keeps the FMA chains' results alive

// Each kernel runs `iters` rounds of independent FMA chains a = a·b + c and
// returns the FLOPs done (2 per lane per FMA). b < 1 keeps every chain bounded
// and away from denormals (it converges to c / (1 − b)).
#if defined(__x86_64__)
__attribute__((target("avx512f"))) double fma_avx512(int64_t iters) {
  // 16 accumulators: Zen 4 / Skylake-X issue up to 2 FMAs a cycle with a
  // latency of 4, so 8 chains in flight is the minimum; 16 leaves slack.
  const __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-4f);
  __m512 a[16];
  for (int j = 0; j < 16; ++j) a[j] = _mm512_set1_ps(float(j) * 0.01f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) a[j] = _mm512_fmadd_ps(a[j], b, c);
  }
  __m512 s = a[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, a[j]);
  float out[16];
  _mm512_storeu_ps(out, s);
  g_sink = out[0] + out[15];
  return double(iters) * 16 * 16 * 2;
}

__attribute__((target("avx2,fma"))) double fma_avx2(int64_t iters) {
  const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
  __m256 a[12];
  for (int j = 0; j < 12; ++j) a[j] = _mm256_set1_ps(float(j) * 0.01f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) a[j] = _mm256_fmadd_ps(a[j], b, c);
  }
  __m256 s = a[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, a[j]);
  float out[8];
  _mm256_storeu_ps(out, s);
  g_sink = out[0] + out[7];
  return double(iters) * 12 * 8 * 2;
}
#endif

double fma_scalar(int64_t iters) {
  float a[8];
  for (int j = 0; j < 8; ++j) a[j] = float(j) * 0.01f;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 8; ++j) a[j] = a[j] * 0.9999f + 1e-4f;
  float s = 0;
  for (float v : a) s += v;
  g_sink = s;
  return double(iters) * 8 * 2;
}

using FmaKernel = double (*)(int64_t);

FmaKernel pick_kernel(std::string& isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    isa = "avx512f";
    return fma_avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isa = "avx2+fma";
    return fma_avx2;
  }
#endif
  isa = "scalar";
  return fma_scalar;
}

// Runs body(thread index) on `threads` threads released together; returns the
// wall time from the release to the last one's end.
template <class F>
double run_together(int threads, F body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t);
    });
  while (ready.load() < threads) std::this_thread::yield();
  Clock::time_point t0 = Clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& th : pool) th.join();
  return seconds_since(t0);
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

Task<FmaPeak> fma_peak(int threads, double seconds) {
  check_option("fmaPeak", "threads", threads >= 1 && threads <= 1024, "an integer in [1, 1024]",
               std::to_string(threads));
  check_option("fmaPeak", "seconds", seconds > 0 && seconds <= 60, "in (0, 60]", num_str(seconds));
  return [threads, seconds] {
    FmaPeak r;
    FmaKernel kernel = pick_kernel(r.isa);
    r.threads = threads;
    kernel(1 << 16);  // wake the vector units up (AVX-512 clocks, power gating)
    std::vector<double> flops(size_t(threads), 0.0);
    r.seconds = run_together(threads, [&](int t) {
      Clock::time_point t0 = Clock::now();
      double f = 0;
      do f += kernel(1 << 18);  // a few hundred microseconds a round
      while (seconds_since(t0) < seconds);
      flops[size_t(t)] = f;
    });
    double total = 0;
    for (double f : flops) total += f;
    r.gflops = total / r.seconds / 1e9;
    return r;
  };
}

Task<MemcpyBandwidth> memcpy_bandwidth(int64_t bytes, int threads) {
  check_option("memcpyBandwidth", "bytes", bytes >= (1 << 20) && bytes <= (int64_t(1) << 36),
               "an integer in [2^20, 2^36]", std::to_string(bytes));
  check_option("memcpyBandwidth", "threads", threads >= 1 && threads <= 1024, "an integer in [1, 1024]",
               std::to_string(threads));
  return [bytes, threads] {
    const size_t size = (size_t(bytes) + 63) / 64 * 64;
    std::unique_ptr<char, FreeDeleter> src(static_cast<char*>(std::aligned_alloc(64, size)));
    std::unique_ptr<char, FreeDeleter> dst(static_cast<char*>(std::aligned_alloc(64, size)));
    if (!src || !dst)
      fail(Code::Value, "memcpyBandwidth: could not allocate two buffers of " + std::to_string(size) + " bytes");
    const size_t slice = (size / size_t(threads) + 63) / 64 * 64;
    auto part = [&](int t, size_t& off, size_t& len) {
      off = std::min(size, slice * size_t(t));
      len = std::min(size, off + slice) - off;
    };
    // First touch (each thread its own pages), then one copy timed to size the measured run.
    run_together(threads, [&](int t) {
      size_t off, len;
      part(t, off, len);
      std::memset(src.get() + off, t + 1, len);
      std::memset(dst.get() + off, 0, len);
    });
    double one = run_together(threads, [&](int t) {
      size_t off, len;
      part(t, off, len);
      std::memcpy(dst.get() + off, src.get() + off, len);
    });
    const int reps = std::max(3, std::min(1000, int(0.25 / std::max(one, 1e-6))));
    MemcpyBandwidth r;
    r.seconds = run_together(threads, [&](int t) {
      size_t off, len;
      part(t, off, len);
      for (int i = 0; i < reps; ++i) {
        std::memcpy(dst.get() + off, src.get() + off, len);
        g_sink = float(dst.get()[off]);  // the copies are not dead stores
      }
    });
    r.bytes = double(size);
    r.threads = threads;
    r.repetitions = reps;
    r.gbps = 2.0 * double(size) * reps / r.seconds / 1e9;
    return r;
  };
}

Task<SgemmRate> sgemm_rate(int m, int n, int k, int iterations) {
  auto dim_ok = [](int v) { return v >= 1 && v <= 65536; };
  check_option("sgemmRate", "m", dim_ok(m), "an integer in [1, 65536]", std::to_string(m));
  check_option("sgemmRate", "n", dim_ok(n), "an integer in [1, 65536]", std::to_string(n));
  check_option("sgemmRate", "k", dim_ok(k), "an integer in [1, 65536]", std::to_string(k));
  check_option("sgemmRate", "iterations", iterations >= 1 && iterations <= 1000, "an integer in [1, 1000]",
               std::to_string(iterations));
  return [m, n, k, iterations] {
    // From the host allocator's cache, uninitialised (C is written by the beta = 0 GEMM): repeated
    // measurements at one shape take no fresh pages, as the layer's steps take none.
    HostScratch<float> a(size_t(m) * k), b(size_t(k) * n), c(size_t(m) * n);
    for (size_t i = 0; i < a.size(); ++i) a.data()[i] = float(int(i % 17) - 8) * 0.125f;
    for (size_t i = 0; i < b.size(); ++i) b.data()[i] = float(int(i % 13) - 6) * 0.0625f;
    sgemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);  // warm-up
    std::vector<double> rates;
    const double flops = 2.0 * m * n * k;
    for (int i = 0; i < iterations; ++i) {
      Clock::time_point t0 = Clock::now();
      sgemm(false, false, m, n, k, 1.0f, a.data(), k, b.data(), n, 0.0f, c.data(), n);
      rates.push_back(flops / seconds_since(t0) / 1e9);
    }
    std::sort(rates.begin(), rates.end());
    SgemmRate r;
    r.gflops = rates[rates.size() / 2];
    r.best_gflops = rates.back();
    r.iterations = iterations;
    r.core = blas_info().loaded ? blas_info().core : "";
    return r;
  };
}

}  // namespace moe::bench
