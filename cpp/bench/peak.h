// The machine's limits, measured, so every benchmark can print its figure beside
// them (STYLE.md): the FMA peak of the cores, memory bandwidth, and the rate of
// one large single-precision GEMM through moe::sgemm.
#pragma once
#include <cstdint>
#include <string>

#include "../core/task.h"

namespace moe::bench {

struct FmaPeak {
  double gflops = 0;  // all threads together
  std::string isa;    // "avx512f", "avx2+fma" or "scalar"
  int threads = 0;
  double seconds = 0;  // measured wall time
};

// `threads` threads run independent chains of fused multiply-adds (enough of
// them to cover the FMA latency) for about `seconds`, all at once.
Task<FmaPeak> fma_peak(int threads, double seconds);

struct MemcpyBandwidth {
  double gbps = 0;   // bytes read plus bytes written, per second, in 1e9
  double bytes = 0;  // the size of one copy (source and destination each)
  int threads = 0;
  int repetitions = 0;
  double seconds = 0;
};

// Copies a `bytes` buffer into another (each thread its own slice, pages first
// touched by the thread that copies them), repeated for about a quarter second.
Task<MemcpyBandwidth> memcpy_bandwidth(int64_t bytes, int threads);

struct SgemmRate {
  double gflops = 0;  // median over the timed iterations, 2·m·n·k per GEMM
  double best_gflops = 0;
  int iterations = 0;
  std::string core;  // the OpenBLAS core in use, or "" for the built-in GEMM
};

// C[m, n] = A[m, k] · B[k, n] through moe::sgemm: one warm-up, then `iterations` timed runs.
Task<SgemmRate> sgemm_rate(int m, int n, int k, int iterations);

}  // namespace moe::bench
