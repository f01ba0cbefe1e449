#include "blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "cancel.h"
#include "host_allocator.h"
#include "parallel.h"

#ifndef MOE_EP_BLAS_LIBRARY
#define MOE_EP_BLAS_LIBRARY ""
#endif

namespace moe {
namespace {

enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using CorenameFn = char* (*)();
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();

struct Blas {
  BlasInfo info;
  SgemmFn sgemm = nullptr;
};

// The OpenBLAS core name that matches this CPU's vector features.
const char* coretype_for_cpu() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}

Blas load() {
  Blas b;
  const char* user_core = std::getenv("OPENBLAS_CORETYPE");
  if (!user_core || !*user_core) {
    if (const char* core = coretype_for_cpu()) {
      setenv("OPENBLAS_CORETYPE", core, 0);
      b.info.coretype_set_by_us = true;
    }
  }
  if (const char* env = std::getenv("OPENBLAS_CORETYPE")) b.info.coretype_env = env;

  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MOE_EP_BLAS_LIBRARY")) candidates.push_back(env);
  if (*MOE_EP_BLAS_LIBRARY) candidates.push_back(MOE_EP_BLAS_LIBRARY);
  candidates.push_back("libopenblas.so.0");
  candidates.push_back("libopenblas.so");
  std::string tried;
  for (const std::string& path : candidates) {
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* err = dlerror();
      tried += (tried.empty() ? "" : "; ") + path + ": " + (err ? err : "not loadable");
      continue;
    }
    b.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    if (!b.sgemm) {
      tried += (tried.empty() ? "" : "; ") + path + ": no cblas_sgemm";
      continue;
    }
    b.info.loaded = true;
    b.info.library = path;
    if (auto corename = reinterpret_cast<CorenameFn>(dlsym(h, "openblas_get_corename"))) b.info.core = corename();
    if (auto set_threads = reinterpret_cast<SetThreadsFn>(dlsym(h, "openblas_set_num_threads")))
      set_threads(num_threads());
    if (auto get_threads = reinterpret_cast<GetThreadsFn>(dlsym(h, "openblas_get_num_threads")))
      b.info.threads = get_threads();
    return b;
  }
  b.info.library = tried;
  b.info.reason = "OpenBLAS not found (" + tried + "); using the built-in reference GEMM, which is slow";
  return b;
}

Blas& blas() {
  static Blas b = load();
  return b;
}

// Plain GEMM for machines without OpenBLAS: correct, parallel over rows, slow.
void fallback_sgemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                    int ldb, float beta, float* c, int ldc) {
  parallel_for(m, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> row(static_cast<size_t>(n));
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(row.begin(), row.end(), 0.0f);
      for (int p = 0; p < k; ++p) {
        float av = ta ? a[size_t(p) * lda + i] : a[size_t(i) * lda + p];
        if (av == 0.0f) continue;
        for (int j = 0; j < n; ++j) row[j] += av * (tb ? b[size_t(j) * ldb + p] : b[size_t(p) * ldb + j]);
      }
      float* ci = c + size_t(i) * ldc;
      for (int j = 0; j < n; ++j) ci[j] = alpha * row[j] + (beta == 0.0f ? 0.0f : beta * ci[j]);
    }
  });
}

}  // namespace

const BlasInfo& blas_info() { return blas().info; }

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
           int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  if (work_cancelled()) return;  // nobody will read C (cpp/core/cancel.h)
  if (k == 0) {                  // BLAS leaves C alone only for beta == 1; make k == 0 mean "C = beta * C"
    if (beta == 1.0f) return;
    if (beta == 0.0f) note_zeroed(size_t(m) * size_t(n) * sizeof(float));
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[size_t(i) * ldc + j] = beta == 0.0f ? 0.0f : beta * c[size_t(i) * ldc + j];
    return;
  }
  Blas& bl = blas();
  if (bl.sgemm) {
    bl.sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
             c, ldc);
  } else {
    fallback_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

}  // namespace moe
