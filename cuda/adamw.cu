// AdamW on the GPU (Loshchilov & Hutter; torch.optim.AdamW's semantics), one
// step in place, per element in float32 with the per-step constants the host
// computed in double (cpp/ops/adamw.cpp): the same formulas as the CPU op.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kAdamThreads = 256;

struct AdamConstants {
  float decay, stepSize, bc2Sqrt, b1, b2, oneB1, oneB2, eps;
};

template <class TP, class TG>
__global__ void __launch_bounds__(kAdamThreads)
    adamw_kernel(TP* __restrict__ param, const TG* __restrict__ grad, float* __restrict__ m, float* __restrict__ v,
                 int64_t n, AdamConstants c) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = to_f32(grad[i]);
    const float mi = c.b1 * m[i] + c.oneB1 * g;
    const float vi = c.b2 * v[i] + c.oneB2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / c.bc2Sqrt + c.eps;
    param[i] = from_f32<TP>(to_f32(param[i]) * c.decay - c.stepSize * (mi / denom));
  }
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_adamw(void* param, int param_dtype, const void* grad, int grad_dtype, float* exp_avg,
                              float* exp_avg_sq, int64_t n, float decay, float step_size, float bc2_sqrt, float b1,
                              float b2, float one_b1, float one_b2, float eps, void* stream) {
  using namespace moe_cuda;
  if (n < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (!param || !grad || !exp_avg || !exp_avg_sq) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const AdamConstants c{decay, step_size, bc2_sqrt, b1, b2, one_b1, one_b2, eps};
  const unsigned int grid = grid_for(n, kAdamThreads, 1 << 16);
  MOE_SWITCH_FLOAT(param_dtype, TP, MOE_SWITCH_FLOAT(grad_dtype, TG, {
                     adamw_kernel<TP, TG><<<grid, kAdamThreads, 0, s>>>(
                         static_cast<TP*>(param), static_cast<const TG*>(grad), exp_avg, exp_avg_sq, n, c);
                   }));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
