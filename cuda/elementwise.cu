// Elementwise and reducing ops of the MoE layer on the GPU
// (docs/math.md#elementwise-ops; the CPU ops are cpp/ops/elementwise.cpp and
// cpp/ops/expert_bias.cpp): add, axpby, the sum of squares of gradient
// clipping, and the expert bias update. Float32 math on bf16 / f16 / f32
// storage, rounded once on store; explicit _rn intrinsics so that no
// multiply-add is contracted (the CPU op rounds the product and the sum
// separately). Every result is independent of scheduling: elementwise kernels
// own their elements, and the sum of squares reduces per-block partials in a
// fixed tree, then the partials in index order.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kEwThreads = 256;
// Elements per partial of the sum of squares (one block each).
constexpr int64_t kSsqChunk = 1 << 14;
constexpr int kSsqThreads = 256;

template <class TA, class TB>
__global__ void __launch_bounds__(kEwThreads)
    elementwise_add_kernel(const TA* __restrict__ a, const TB* __restrict__ b, int64_t n, TA* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = from_f32<TA>(__fadd_rn(to_f32(a[i]), to_f32(b[i])));
}

// y = (alpha == 0 ? 0 : alpha·y) + beta·x; x may be null (the beta term is then absent).
template <class TY, class TX>
__global__ void __launch_bounds__(kEwThreads)
    axpby_kernel(TY* __restrict__ y, const TX* __restrict__ x, int64_t n, float alpha, float beta) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float ay = alpha == 0.0f ? 0.0f : __fmul_rn(alpha, to_f32(y[i]));
    y[i] = from_f32<TY>(x ? __fadd_rn(ay, __fmul_rn(beta, to_f32(x[i]))) : ay);
  }
}

// Shared-memory tree over kSsqThreads doubles: a fixed pairing, so a fixed result.
__device__ __forceinline__ double block_sum_fixed(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kSsqThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// partials[blockIdx.x] = Σ over chunk blockIdx.x of v², in double.
template <class T>
__global__ void __launch_bounds__(kSsqThreads)
    sum_squares_partials_kernel(const T* __restrict__ data, int64_t n, double* __restrict__ partials) {
  __shared__ double sh[kSsqThreads];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kSsqChunk;
  const int64_t i1 = i0 + kSsqChunk < n ? i0 + kSsqChunk : n;
  double s = 0.0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kSsqThreads) {
    const double v = static_cast<double>(to_f32(data[i]));
    s = __dadd_rn(s, __dmul_rn(v, v));
  }
  const double total = block_sum_fixed(s, sh);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// *out = float(Σ partials): one block, each thread a strided run in index order, then the tree.
__global__ void __launch_bounds__(kSsqThreads)
    sum_squares_finish_kernel(const double* __restrict__ partials, int64_t count, float* __restrict__ out) {
  __shared__ double sh[kSsqThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kSsqThreads) s = __dadd_rn(s, partials[i]);
  const double total = block_sum_fixed(s, sh);
  if (threadIdx.x == 0) *out = static_cast<float>(total);
}

// One thread: E is the number of experts (small); the same double arithmetic as the CPU op.
template <class TL>
__global__ void expert_bias_update_kernel(float* __restrict__ bias, const TL* __restrict__ load, int64_t e, double rate,
                                          void* status, uint32_t tag) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double sum = 0.0;
  for (int64_t i = 0; i < e; ++i) {
    const double l = static_cast<double>(load[i]);
    if (!(isfinite(l) && l >= 0.0)) {
      report_status(status, tag, static_cast<long long>(i));
      return;  // nothing written, as the CPU op throws before writing
    }
    sum += l;
  }
  const double mean = e ? sum / static_cast<double>(e) : 0.0;
  for (int64_t i = 0; i < e; ++i) {
    const double gap = mean - static_cast<double>(load[i]);
    const double sign = gap > 0 ? 1.0 : gap < 0 ? -1.0 : 0.0;
    bias[i] = static_cast<float>(static_cast<double>(bias[i]) + rate * sign);
  }
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_add(const void* a, int a_dtype, const void* b, int b_dtype, int64_t n, void* out,
                            void* stream) {
  using namespace moe_cuda;
  if (n < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (!a || !b || !out) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kEwThreads, 1 << 16);
  MOE_SWITCH_FLOAT(a_dtype, TA, MOE_SWITCH_FLOAT(b_dtype, TB, {
                     elementwise_add_kernel<TA, TB><<<grid, kEwThreads, 0, s>>>(
                         static_cast<const TA*>(a), static_cast<const TB*>(b), n, static_cast<TA*>(out));
                   }));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_axpby(void* y, int y_dtype, const void* x, int x_dtype, int64_t n, float alpha, float beta,
                              void* stream) {
  using namespace moe_cuda;
  if (n < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (!y) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kEwThreads, 1 << 16);
  if (!x) x_dtype = y_dtype;
  MOE_SWITCH_FLOAT(y_dtype, TY, MOE_SWITCH_FLOAT(x_dtype, TX, {
                     axpby_kernel<TY, TX>
                         <<<grid, kEwThreads, 0, s>>>(static_cast<TY*>(y), static_cast<const TX*>(x), n, alpha, beta);
                   }));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int64_t moe_cuda_sum_squares_partials_count(int64_t n) {
  return n <= 0 ? 0 : (n + moe_cuda::kSsqChunk - 1) / moe_cuda::kSsqChunk;
}

extern "C" int moe_cuda_sum_squares_partials(const void* data, int dtype, int64_t n, double* partials, void* stream) {
  using namespace moe_cuda;
  if (n < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (!data || !partials) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t blocks = moe_cuda_sum_squares_partials_count(n);
  if (blocks > 0x7fffffffLL) return MOE_CUDA_ERR_UNSUPPORTED;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MOE_SWITCH_FLOAT(dtype, T,
                   sum_squares_partials_kernel<T><<<static_cast<unsigned int>(blocks), kSsqThreads, 0, s>>>(
                       static_cast<const T*>(data), n, partials));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_sum_squares_finish(const double* partials, int64_t count, float* out, void* stream) {
  using namespace moe_cuda;
  if (count < 0 || !out || (count > 0 && !partials)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  sum_squares_finish_kernel<<<1, kSsqThreads, 0, s>>>(partials, count, out);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_expert_bias_update(float* bias, const void* load, int load_is_f32, int64_t num_experts,
                                           double rate, void* status, uint32_t tag, void* stream) {
  using namespace moe_cuda;
  if (num_experts < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (num_experts == 0) return 0;
  if (!bias || !load || !status) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (load_is_f32)
    expert_bias_update_kernel<float>
        <<<1, 1, 0, s>>>(bias, static_cast<const float*>(load), num_experts, rate, status, tag);
  else
    expert_bias_update_kernel<int32_t>
        <<<1, 1, 0, s>>>(bias, static_cast<const int32_t*>(load), num_experts, rate, status, tag);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
