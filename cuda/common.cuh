// Helpers shared by the CUDA kernels of moe-ep: error propagation for the
// launchers and the warp-level reductions the kernels are built from.
#pragma once
#include <cuda_runtime.h>

#include <stdint.h>

#include "launchers.h"

// Return the CUDA error of `expr` from the enclosing launcher (as an int).
#define MOE_CUDA_TRY(expr)                          \
  do {                                              \
    cudaError_t moe_cuda_err_ = (expr);             \
    if (moe_cuda_err_ != cudaSuccess) return static_cast<int>(moe_cuda_err_); \
  } while (0)

// After a launch: the configuration error, if any, of the kernel just launched.
#define MOE_CUDA_TRY_LAUNCH() MOE_CUDA_TRY(cudaGetLastError())

// Turn the runtime value `value` into the compile-time constant NAME for the
// statements that follow, for each power of two up to 16; any other value
// returns MOE_CUDA_ERR_UNSUPPORTED from the enclosing launcher (the shape of
// DeepEP's SWITCH_* macros).
#define MOE_SWITCH_POW2_16(value, NAME, ...)                     \
  switch (value) {                                               \
    case 1: { constexpr int NAME = 1; __VA_ARGS__; } break;      \
    case 2: { constexpr int NAME = 2; __VA_ARGS__; } break;      \
    case 4: { constexpr int NAME = 4; __VA_ARGS__; } break;      \
    case 8: { constexpr int NAME = 8; __VA_ARGS__; } break;      \
    case 16: { constexpr int NAME = 16; __VA_ARGS__; } break;    \
    default: return MOE_CUDA_ERR_UNSUPPORTED;                    \
  }

namespace moe_cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Butterfly reductions: every lane ends with the result, and the order of the
// additions is fixed by the lane pattern, so the result is reproducible.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// (value, index) ordered by value descending, then index ascending: the order
// in which top-k picks its choices. Values must not be NaN.
__device__ __forceinline__ bool ranks_before(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

// The best (value, index) pair over the warp in the order above. Indices are
// distinct across lanes (or INT32_MAX for "none"), so the result is the same
// in every lane whatever the shuffle order.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    float ov = __shfl_xor_sync(kFullMask, v, offset);
    int oi = __shfl_xor_sync(kFullMask, i, offset);
    if (ranks_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// a[slot] for a register array indexed by a runtime slot, without the dynamic
// indexing that would push the array to local memory.
template <int N>
__device__ __forceinline__ float select_slot(const float (&a)[N], int slot) {
  float r = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (i == slot) r = a[i];
  return r;
}

}  // namespace moe_cuda
