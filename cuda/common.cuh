// Helpers shared by the CUDA kernels of moe-ep: error propagation for the
// launchers and the warp-level reductions the kernels are built from.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include "launchers.h"

// Return the CUDA error of `expr` from the enclosing launcher (as an int).
#define MOE_CUDA_TRY(expr)                                                    \
  do {                                                                        \
    cudaError_t moe_cuda_err_ = (expr);                                       \
    if (moe_cuda_err_ != cudaSuccess) return static_cast<int>(moe_cuda_err_); \
  } while (0)

// After a launch: the configuration error, if any, of the kernel just launched.
#define MOE_CUDA_TRY_LAUNCH() MOE_CUDA_TRY(cudaGetLastError())

// Turn the runtime value `value` into the compile-time constant NAME for the
// statements that follow, for each power of two up to 16; any other value
// returns MOE_CUDA_ERR_UNSUPPORTED from the enclosing launcher (the shape of
// DeepEP's SWITCH_* macros).
#define MOE_SWITCH_POW2_16(value, NAME, ...) \
  switch (value) {                           \
    case 1: {                                \
      constexpr int NAME = 1;                \
      __VA_ARGS__;                           \
    } break;                                 \
    case 2: {                                \
      constexpr int NAME = 2;                \
      __VA_ARGS__;                           \
    } break;                                 \
    case 4: {                                \
      constexpr int NAME = 4;                \
      __VA_ARGS__;                           \
    } break;                                 \
    case 8: {                                \
      constexpr int NAME = 8;                \
      __VA_ARGS__;                           \
    } break;                                 \
    case 16: {                               \
      constexpr int NAME = 16;               \
      __VA_ARGS__;                           \
    } break;                                 \
    default:                                 \
      return MOE_CUDA_ERR_UNSUPPORTED;       \
  }

// Turn the runtime dtype code `code` (MOE_CUDA_F32 / BF16 / F16) into the type
// T for the statements that follow; any other code returns
// MOE_CUDA_ERR_INVALID_ARGUMENT from the enclosing launcher.
#define MOE_SWITCH_FLOAT(code, T, ...)      \
  switch (code) {                           \
    case MOE_CUDA_F32: {                    \
      using T = float;                      \
      __VA_ARGS__;                          \
    } break;                                \
    case MOE_CUDA_BF16: {                   \
      using T = __nv_bfloat16;              \
      __VA_ARGS__;                          \
    } break;                                \
    case MOE_CUDA_F16: {                    \
      using T = __half;                     \
      __VA_ARGS__;                          \
    } break;                                \
    default:                                \
      return MOE_CUDA_ERR_INVALID_ARGUMENT; \
  }

namespace moe_cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Storage <-> float32: bfloat16 and float16 widen exactly and narrow by
// rounding to nearest even, as the CPU backend does (docs/math.md#notation).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// N consecutive elements moved as one aligned vector (N * sizeof(T) bytes);
// callers keep pointers aligned to that size.
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};
template <class T, int N>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_f32(pk.v[i]);
}
template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = from_f32<T>(in[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// The device status word of launchers.h ("errors found by kernels").
struct Status {
  unsigned int tag;
  unsigned int reserved;
  long long detail;
};

// Records `detail` under `tag` unless another tag got there first; details of
// one tag keep their minimum, so the result does not depend on thread order.
__device__ __forceinline__ void report_status(void* status, unsigned int tag, long long detail) {
  Status* s = static_cast<Status*>(status);
  const unsigned int prev = atomicCAS(&s->tag, 0u, tag);
  if (prev == 0u || prev == tag) atomicMin(&s->detail, detail);
}

// Blocks for a grid-stride loop over n items: enough to fill the device, never 0.
inline unsigned int grid_for(int64_t n, int threads, int64_t max_blocks = 65535) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return static_cast<unsigned int>(b);
}

// Bytes rounded up to the alignment of workspace carving (CUB wants 256).
inline size_t align_up(size_t bytes, size_t alignment = 256) { return (bytes + alignment - 1) / alignment * alignment; }

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
