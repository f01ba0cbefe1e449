// Single-precision GEMM for the CPU backend, from OpenBLAS loaded at run time.
//
// OpenBLAS picks its kernels from the CPU it detects when it loads, and
// Debian's 0.3.21 takes AVX-512 Xeons for a "Prescott" (SSE3 kernels, about a
// fifth of the speed). Loading it ourselves lets the core set OPENBLAS_CORETYPE
// from the CPU's real features first, unless the user already set it.
#pragma once
#include <string>

namespace moe {

struct BlasInfo {
  bool loaded = false;
  std::string library;       // the file loaded, or what was tried
  std::string core;          // openblas_get_corename(), e.g. "SkylakeX"
  std::string coretype_env;  // OPENBLAS_CORETYPE as the library saw it
  bool coretype_set_by_us = false;
  int threads = 0;
  std::string reason;  // why not loaded (the fallback GEMM is used then)
};

const BlasInfo& blas_info();

// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major, leading dimensions as in CBLAS.
// Cancelled work (cpp/core/cancel.h) returns at once and leaves C unspecified.
void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
           int ldb, float beta, float* c, int ldc);

}  // namespace moe
