// Counter-based random numbers on the GPU, bit for bit the scheme of
// cpp/ops/random.{h,cpp} (SplitMix64 of (seed, key, slice, index)), so a
// tensor filled on a device holds what the CPU op would write: the uniform
// values and the jitter factors are formed with the same integer and double
// operations; the normal values use CUDA's double log, sqrt and cospi(2·u2)
// for cos(2π·u2), which may differ from the host's in the last bits of the double, so a float32
// value can in rare cases differ by one unit in the last place.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kRngThreads = 256;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

__device__ __forceinline__ uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ uint64_t slice_state(uint64_t seed, uint32_t key, uint64_t slice) {
  return mix(mix(seed + kGolden) ^ ((static_cast<uint64_t>(key) << 32) | slice));
}

__device__ __forceinline__ uint64_t bits(uint64_t state, uint64_t i) { return mix(state + (i + 1) * kGolden); }

__device__ __forceinline__ double uniform01(uint64_t state, uint64_t i) {
  return static_cast<double>(bits(state, i) >> 40) * 0x1p-24;
}

__device__ __forceinline__ double normal01(uint64_t state, uint64_t i) {
  const double u1 = static_cast<double>((bits(state, 2 * i) >> 11) + 1) * 0x1p-53;
  const double u2 = static_cast<double>(bits(state, 2 * i + 1) >> 11) * 0x1p-53;
  // cos(2π·u2) as cospi(2·u2): the same value to within the rounding of 2π·u2, and no
  // large-argument reduction (whose local array would give the kernel a stack frame).
  return __dmul_rn(sqrt(__dmul_rn(-2.0, log(u1))), cospi(__dmul_rn(2.0, u2)));
}

// Element i: slice first_slice + i / slice_size, value index i % slice_size;
// the double rounded to float32 first, then to T (as the CPU op stores it).
template <class T>
__global__ void __launch_bounds__(kRngThreads)
    fill_random_kernel(T* __restrict__ data, int64_t n, uint64_t seed, uint32_t key, int uniform, double a, double b,
                       int64_t slice_size, int64_t first_slice) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t s = i / slice_size;
    const uint64_t state = slice_state(seed, key, static_cast<uint64_t>(first_slice + s));
    const uint64_t j = static_cast<uint64_t>(i - s * slice_size);
    const double r = uniform ? __dadd_rn(a, __dmul_rn(__dsub_rn(b, a), uniform01(state, j)))
                             : __dadd_rn(a, __dmul_rn(b, normal01(state, j)));
    data[i] = from_f32<T>(static_cast<float>(r));
  }
}

// out = x ⊙ u, u_i = float(1 − eps + 2·eps·uniform_i) of one slice.
template <class T>
__global__ void __launch_bounds__(kRngThreads)
    jitter_kernel(const T* __restrict__ x, int64_t n, double eps, uint64_t state, T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double ud = __dadd_rn(__dsub_rn(1.0, eps), __dmul_rn(__dmul_rn(2.0, eps), uniform01(state, uint64_t(i))));
    out[i] = from_f32<T>(__fmul_rn(to_f32(x[i]), static_cast<float>(ud)));
  }
}

}  // namespace

// Host copy of the slice state for the jitter (one slice per call).
static uint64_t host_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint64_t host_slice_state(uint64_t seed, uint32_t key, uint64_t slice) {
  return host_mix(host_mix(seed + kGolden) ^ ((static_cast<uint64_t>(key) << 32) | slice));
}

}  // namespace moe_cuda

extern "C" int moe_cuda_fill_random(void* data, int dtype, int64_t n, uint64_t seed, uint32_t key, int uniform,
                                    double a, double b, int64_t slice_size, int64_t first_slice, void* stream) {
  using namespace moe_cuda;
  if (n < 0 || slice_size < 0 || first_slice < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (!data) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t slice = slice_size > 0 ? slice_size : n;
  if (n % slice != 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kRngThreads, 1 << 16);
  MOE_SWITCH_FLOAT(dtype, T,
                   fill_random_kernel<T><<<grid, kRngThreads, 0, s>>>(static_cast<T*>(data), n, seed, key,
                                                                      uniform ? 1 : 0, a, b, slice, first_slice));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_jitter(const void* x, int dtype, int64_t n, double eps, uint64_t seed, uint32_t key,
                               int64_t slice, void* out, void* stream) {
  using namespace moe_cuda;
  if (n < 0 || slice < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (!x || !out) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const uint64_t state = host_slice_state(seed, key, static_cast<uint64_t>(slice));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kRngThreads, 1 << 16);
  MOE_SWITCH_FLOAT(dtype, T,
                   jitter_kernel<T>
                   <<<grid, kRngThreads, 0, s>>>(static_cast<const T*>(x), n, eps, state, static_cast<T*>(out)));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
