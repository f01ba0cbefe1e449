// Checks of data that only kernels can see (a NaN in the router's input, an
// index out of range): they tag the device's status word (launchers.h,
// "errors found by kernels") and never stop the stream; the host reports the
// tag at its next synchronisation.
#include <cuda_runtime.h>

#include <limits.h>
#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kCheckThreads = 256;

__device__ __forceinline__ long long warp_min(long long v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const long long o = __shfl_xor_sync(kFullMask, v, offset);
    v = o < v ? o : v;
  }
  return v;
}

// Each thread keeps the smallest bad index it saw; one report per warp.
template <class T>
__global__ void __launch_bounds__(kCheckThreads)
    check_finite_kernel(const T* data, int64_t n, void* status, unsigned int tag) {
  long long bad = LLONG_MAX;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    if (!isfinite(to_f32(data[i])) && i < bad) bad = i;
  bad = warp_min(bad);
  if ((threadIdx.x & 31) == 0 && bad != LLONG_MAX) report_status(status, tag, bad);
}

__global__ void __launch_bounds__(kCheckThreads)
    check_range_kernel(const int32_t* data, int64_t n, int32_t lo, int32_t hi, void* status, unsigned int tag) {
  long long bad = LLONG_MAX;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int32_t v = data[i];
    if ((v < lo || v >= hi) && i < bad) bad = i;
  }
  bad = warp_min(bad);
  if ((threadIdx.x & 31) == 0 && bad != LLONG_MAX) report_status(status, tag, bad);
}

__global__ void flag_if_positive_kernel(const int32_t* value, void* status, unsigned int tag) {
  const int32_t v = *value;
  if (v > 0) report_status(status, tag, v);
}

__global__ void status_reset_kernel(void* status) {
  Status* s = static_cast<Status*>(status);
  s->tag = 0;
  s->reserved = 0;
  s->detail = LLONG_MAX;
}

}  // namespace
}  // namespace moe_cuda

extern "C" size_t moe_cuda_status_bytes(void) { return sizeof(moe_cuda::Status); }

extern "C" int moe_cuda_status_reset(void* status, void* stream) {
  if (!status) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  moe_cuda::status_reset_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(status);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_status_read(const void* status, uint32_t* tag, int64_t* detail, void* stream) {
  if (!status || !tag || !detail) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  moe_cuda::Status host{};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MOE_CUDA_TRY(cudaMemcpyAsync(&host, status, sizeof host, cudaMemcpyDeviceToHost, s));
  MOE_CUDA_TRY(cudaStreamSynchronize(s));
  *tag = host.tag;
  *detail = host.detail;
  return 0;
}

extern "C" int moe_cuda_check_finite(const void* data, int dtype, int64_t n, void* status, uint32_t tag, void* stream) {
  using namespace moe_cuda;
  if (n <= 0) return 0;
  if (!data || !status || tag == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned int grid = grid_for(n, kCheckThreads, 4096);
  MOE_SWITCH_FLOAT(dtype, T,
                   check_finite_kernel<T><<<grid, kCheckThreads, 0, s>>>(static_cast<const T*>(data), n, status, tag));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_check_range_i32(const int32_t* data, int64_t n, int32_t lo, int32_t hi, void* status,
                                        uint32_t tag, void* stream) {
  using namespace moe_cuda;
  if (n <= 0) return 0;
  if (!data || !status || tag == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  check_range_kernel<<<grid_for(n, kCheckThreads, 4096), kCheckThreads, 0, s>>>(data, n, lo, hi, status, tag);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_flag_if_positive(const int32_t* value, void* status, uint32_t tag, void* stream) {
  if (!value || !status || tag == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  moe_cuda::flag_if_positive_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(value, status, tag);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
