// The emulated build's stand-in for the two tensor-core grouped GEMM kernels
// (grouped_gemm_sm80.cu: mma.sync, grouped_gemm_sm90.cu: wgmma), whose inline
// PTX has no CPU meaning. Everything around them is the real code: the
// launchers and argument checks, the plan, the schedule kernel that turns the
// device-side counts into row starts (it runs in the emulator first, on the
// same stream), and the epilogue (bias, activation, rounding, column pairs).
// What this loop does in place of the kernel is what the kernel computes: per
// expert, float32 sums of bf16/fp16 products; for invalid counts, nothing; for
// dw, zeros for experts without rows.
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"
#include "grouped_gemm.cuh"
#include "grouped_gemm_plan.h"

namespace moe_cuda {
namespace {

template <typename T, typename OutT>
int emulate(const GgArgs& g) {
  const int32_t* ws = g.workspace;
  if (ws[0] != 0) return 0;  // invalid counts: the schedule asked for nothing
  const int32_t* rowStart = gg_ws_row_start(ws);
  const T* a = static_cast<const T*>(g.a);
  const T* b = static_cast<const T*>(g.b);
  const T* bias = static_cast<const T*>(g.bias);
  OutT* out = static_cast<OutT*>(g.out);
  const int64_t K = g.k;
  const int64_t N = g.n;
  for (int e = 0; e < g.experts; ++e) {
    const int64_t r0 = rowStart[e];
    const int64_t r1 = rowStart[e + 1];
    if (g.kind == kGgForward) {  // y[r, n] = sum_k x[r, k] w[e, k, n]
      const T* w = b + e * K * N;
      const T* be = bias ? bias + e * N : nullptr;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t n = 0; n < N; n += 2) {
          float s0 = 0.f, s1 = 0.f;
          for (int64_t k = 0; k < K; ++k) {
            const float x = to_f32(a[r * K + k]);
            s0 += x * to_f32(w[k * N + n]);
            s1 += x * to_f32(w[k * N + n + 1]);
          }
          gg_epilogue_pair<T, OutT>(out + r * N, 0, 0, static_cast<int>(n), 1, static_cast<int>(N), s0, s1, be,
                                    g.act);
        }
    } else if (g.kind == kGgDx) {  // dx[r, k] = sum_n dy[r, n] w[e, k, n]
      const T* w = b + e * K * N;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t k = 0; k < K; k += 2) {
          float s0 = 0.f, s1 = 0.f;
          for (int64_t n = 0; n < N; ++n) {
            const float d = to_f32(a[r * N + n]);
            s0 += d * to_f32(w[k * N + n]);
            s1 += d * to_f32(w[(k + 1) * N + n]);
          }
          gg_epilogue_pair<T, OutT>(out + r * K, 0, 0, static_cast<int>(k), 1, static_cast<int>(K), s0, s1,
                                    static_cast<const T*>(nullptr), kGgActNone);
        }
    } else {  // dw[e, k, n] = sum_{r of e} x[r, k] dy[r, n]
      OutT* o = out + e * K * N;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t n = 0; n < N; n += 2) {
          float s0 = 0.f, s1 = 0.f;
          for (int64_t r = r0; r < r1; ++r) {
            const float x = to_f32(a[r * K + k]);
            s0 += x * to_f32(b[r * N + n]);
            s1 += x * to_f32(b[r * N + n + 1]);
          }
          gg_epilogue_pair<T, OutT>(o + k * N, 0, 0, static_cast<int>(n), 1, static_cast<int>(N), s0, s1,
                                    static_cast<const T*>(nullptr), kGgActNone);
        }
    }
  }
  return 0;
}

template <typename T>
int emulate_out(const GgArgs& g) {
  return g.outF32 ? emulate<T, float>(g) : emulate<T, T>(g);
}

}  // namespace

int gg_launch_sm80(const GgArgs& g, cudaStream_t) {
  return g.dtype == MOE_CUDA_GG_BF16 ? emulate_out<__nv_bfloat16>(g) : emulate_out<__half>(g);
}

int gg_launch_sm90(const GgArgs& g, cudaStream_t stream) { return gg_launch_sm80(g, stream); }

bool gg_sm90_available(int* error) {
  *error = 0;
  return false;
}

}  // namespace moe_cuda
