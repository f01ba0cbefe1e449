// Expert activations on the GPU (docs/math.md#activations), forward and
// backward, with the CPU's formulas (cpp/ops/activation.cpp) in float32: relu,
// gelu (erf), silu, and the gated swiglu (silu) and geglu (tanh-form gelu),
// whose input holds the gate half, then the up half. Elementwise, so
// deterministic.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kActThreads = 256;
constexpr int kRelu = 0, kGelu = 1, kSilu = 2, kSwiglu = 3, kGeglu = 4;

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluCoef = 0.044715f;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// act(x) for the elementwise kinds and the gate of the gated ones.
__device__ __forceinline__ float act(int kind, float x) {
  switch (kind) {
    case kRelu:  // a NaN passes through, as on the CPU
      return x > 0.0f || isnan(x) ? x : 0.0f;
    case kGelu:
      return 0.5f * x * (1.0f + erff(x * kInvSqrt2));
    case kSilu:
    case kSwiglu:
      return x * sigmoid(x);
    default: {  // geglu: tanh form
      const float t = tanhf(kSqrt2OverPi * (x + kGeluCoef * x * x * x));
      return 0.5f * x * (1.0f + t);
    }
  }
}

__device__ __forceinline__ float act_grad(int kind, float x) {
  switch (kind) {
    case kRelu:
      return x > 0.0f ? 1.0f : x <= 0.0f ? 0.0f : x;  // 0 at x = 0, as PyTorch; NaN at NaN
    case kGelu:
      return 0.5f * (1.0f + erff(x * kInvSqrt2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
    case kSilu:
    case kSwiglu: {
      const float s = sigmoid(x);
      return s * (1.0f + x * (1.0f - s));
    }
    default: {
      const float t = tanhf(kSqrt2OverPi * (x + kGeluCoef * x * x * x));
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluCoef * x * x);
    }
  }
}

// Elementwise: n = rows · width outputs. Gated: n = rows · F, F = width / 2.
template <class T>
__global__ void __launch_bounds__(kActThreads)
    activation_forward_kernel(const T* __restrict__ x, int64_t n, int64_t width, int kind, bool gated,
                              T* __restrict__ h) {
  const int64_t F = width / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (!gated) {
      h[i] = from_f32<T>(act(kind, to_f32(x[i])));
    } else {
      const int64_t r = i / F, j = i - r * F;
      const T* row = x + r * width;
      h[i] = from_f32<T>(act(kind, to_f32(row[j])) * to_f32(row[F + j]));
    }
  }
}

template <class TG, class TX>
__global__ void __launch_bounds__(kActThreads)
    activation_backward_kernel(const TG* __restrict__ dh, const TX* __restrict__ x, int64_t n, int64_t width, int kind,
                               bool gated, TX* __restrict__ dx) {
  const int64_t F = width / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = to_f32(dh[i]);
    if (!gated) {
      dx[i] = from_f32<TX>(g * act_grad(kind, to_f32(x[i])));
    } else {
      // h = act(gate) · up: d gate = dh · up · act'(gate), d up = dh · act(gate).
      const int64_t r = i / F, j = i - r * F;
      const TX* row = x + r * width;
      const float gate = to_f32(row[j]), up = to_f32(row[F + j]);
      TX* out = dx + r * width;
      out[j] = from_f32<TX>(g * up * act_grad(kind, gate));
      out[F + j] = from_f32<TX>(g * act(kind, gate));
    }
  }
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_activation_forward(const void* x, int dtype, int64_t rows, int64_t width, int kind, void* h,
                                           void* stream) {
  using namespace moe_cuda;
  if (rows < 0 || width < 0 || kind < kRelu || kind > kGeglu) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const bool gated = kind == kSwiglu || kind == kGeglu;
  if (gated && width % 2 != 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t n = rows * (gated ? width / 2 : width);
  if (n == 0) return 0;
  if (!x || !h) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kActThreads, 1 << 16);
  MOE_SWITCH_FLOAT(dtype, T,
                   activation_forward_kernel<T>
                   <<<grid, kActThreads, 0, s>>>(static_cast<const T*>(x), n, width, kind, gated, static_cast<T*>(h)));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_activation_backward(const void* dh, int dh_dtype, const void* x, int x_dtype, int64_t rows,
                                            int64_t width, int kind, void* dx, void* stream) {
  using namespace moe_cuda;
  if (rows < 0 || width < 0 || kind < kRelu || kind > kGeglu) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const bool gated = kind == kSwiglu || kind == kGeglu;
  if (gated && width % 2 != 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t n = rows * (gated ? width / 2 : width);
  if (n == 0) return 0;
  if (!dh || !x || !dx) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kActThreads, 1 << 16);
  MOE_SWITCH_FLOAT(dh_dtype, TG, MOE_SWITCH_FLOAT(x_dtype, TX, {
                     activation_backward_kernel<TG, TX>
                         <<<grid, kActThreads, 0, s>>>(static_cast<const TG*>(dh), static_cast<const TX*>(x), n, width,
                                                       kind, gated, static_cast<TX*>(dx));
                   }));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
