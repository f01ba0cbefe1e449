// The gate on the GPU (docs/math.md#gate): logits = x · Wg in float32, and its
// backward dx = d logits · Wgᵀ, dWg = xᵀ · d logits. N = E is small, so a
// plain shared-memory tiled SIMT GEMM serves (64 x 64 tiles, 4 x 4 outputs per
// thread); x is read as bfloat16 / float16 / float32 and widened on load.
// Every output element is summed by one thread over k in order: the result
// is the same bits on every run.
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kGemmThreads = 256;  // 16 x 16 threads, each 4 x 4 outputs

template <class T>
__device__ __forceinline__ float load_f32(const T* p) {
  return to_f32(*p);
}

// C[M, N] = op(A)[M, K] · op(B)[K, N], C row-major with ldc = N.
// A(m, k) = TRANS_A ? A[k * lda + m] : A[m * lda + k]; B likewise (B is float32).
template <class TA, class TC, bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(const TA* __restrict__ A, const float* __restrict__ B, TC* __restrict__ C, int64_t M, int64_t N,
                int64_t K, int64_t lda, int64_t ldb) {
  __shared__ float sA[kTileK][kTileM + 4];
  __shared__ float sB[kTileK][kTileN + 4];
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // 64 x 16 values of each operand, 4 per thread.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int idx = threadIdx.x + r * kGemmThreads;  // 0 .. 1023
      // A tile: (mm, kk). Consecutive threads walk the dimension that is contiguous in memory.
      int mm, kk;
      if (TRANS_A) {
        mm = idx % kTileM;
        kk = idx / kTileM;
      } else {
        kk = idx % kTileK;
        mm = idx / kTileK;
      }
      const int64_t gm = m0 + mm, gk = k0 + kk;
      float va = 0.f;
      if (gm < M && gk < K) va = load_f32(TRANS_A ? A + gk * lda + gm : A + gm * lda + gk);
      sA[kk][mm] = va;
      // B tile: (kk, nn).
      int nn;
      if (TRANS_B) {
        kk = idx % kTileK;
        nn = idx / kTileK;
      } else {
        nn = idx % kTileN;
        kk = idx / kTileN;
      }
      const int64_t gn = n0 + nn, gk2 = k0 + kk;
      float vb = 0.f;
      if (gn < N && gk2 < K) vb = TRANS_B ? B[gn * ldb + gk2] : B[gk2 * ldb + gn];
      sB[kk][nn] = vb;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sA[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = sB[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn < N) C[gm * N + gn] = from_f32<TC>(acc[i][j]);
    }
  }
}

template <class TA, class TC, bool TRANS_A, bool TRANS_B>
int launch_gemm(const TA* A, const float* B, TC* C, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                cudaStream_t s) {
  if (M == 0 || N == 0) return 0;
  const int64_t gy = (M + kTileM - 1) / kTileM, gx = (N + kTileN - 1) / kTileN;
  if (gy > 65535 || gx > INT32_MAX) return MOE_CUDA_ERR_UNSUPPORTED;
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  gemm_kernel<TA, TC, TRANS_A, TRANS_B><<<grid, kGemmThreads, 0, s>>>(A, B, C, M, N, K, lda, ldb);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_gate_forward(const void* x, int x_dtype, const float* wg, int64_t tokens, int64_t d_model,
                                     int64_t experts, float* logits, void* stream) {
  using namespace moe_cuda;
  if (tokens < 0 || d_model < 0 || experts < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (tokens == 0 || experts == 0) return 0;
  if (!logits || (d_model > 0 && (!x || !wg))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // logits [T, E] = x [T, D] · wg [D, E]
  MOE_SWITCH_FLOAT(x_dtype, T,
                   return (launch_gemm<T, float, false, false>(static_cast<const T*>(x), wg, logits, tokens, experts,
                                                               d_model, d_model, experts, s)));
  return 0;
}

extern "C" int moe_cuda_gate_backward(const void* x, int x_dtype, const float* wg, const float* d_logits,
                                      int64_t tokens, int64_t d_model, int64_t experts, void* dx, float* dwg,
                                      void* stream) {
  using namespace moe_cuda;
  if (tokens < 0 || d_model < 0 || experts < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dx != nullptr) {
    // dx [T, D] = d_logits [T, E] · wgᵀ (wg [D, E] read transposed)
    if (tokens > 0 && d_model > 0 && experts > 0 && (!d_logits || !wg)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
    MOE_SWITCH_FLOAT(x_dtype, T, {
      const int rc = launch_gemm<float, T, false, true>(d_logits, wg, static_cast<T*>(dx), tokens, d_model, experts,
                                                        experts, experts, s);
      if (rc != 0) return rc;
    });
  }
  if (dwg != nullptr) {
    // dwg [D, E] = xᵀ (x [T, D] read transposed) · d_logits [T, E]
    if (tokens > 0 && d_model > 0 && experts > 0 && (!d_logits || !x)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
    MOE_SWITCH_FLOAT(x_dtype, T, {
      const int rc = launch_gemm<T, float, true, false>(static_cast<const T*>(x), d_logits, dwg, d_model, experts,
                                                        tokens, d_model, experts, s);
      if (rc != 0) return rc;
    });
  }
  return 0;
}
