// Streams, the stream-ordered allocator and copies: the device side of
// cpp/core/cuda_device.cpp, which keeps one compute and one communication
// stream per device and allocates every device tensor here.
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"

extern "C" int moe_cuda_stream_create(int device, void** stream) {
  if (!stream) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  MOE_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *stream = s;
  return 0;
}

extern "C" int moe_cuda_stream_synchronize(void* stream) {
  MOE_CUDA_TRY(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_stream_wait_stream(void* waiter, void* signaler) {
  if (waiter == signaler) return 0;
  cudaEvent_t e = nullptr;
  MOE_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  cudaError_t err = cudaEventRecord(e, static_cast<cudaStream_t>(signaler));
  if (err == cudaSuccess) err = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter), e, 0);
  // Destroying an event that a stream waits on is allowed: the wait keeps the
  // state it captured.
  cudaEventDestroy(e);
  return static_cast<int>(err);
}

extern "C" int moe_cuda_launch_host_func(void* stream, void (*fn)(void*), void* arg) {
  if (!fn) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaLaunchHostFunc(static_cast<cudaStream_t>(stream), fn, arg));
  return 0;
}

extern "C" int moe_cuda_pool_configure(int device) {
  cudaMemPool_t pool = nullptr;
  MOE_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t threshold = UINT64_MAX;
  MOE_CUDA_TRY(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  return 0;
}

extern "C" int moe_cuda_pool_usage(int device, uint64_t* reserved, uint64_t* used) {
  if (!reserved || !used) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaMemPool_t pool = nullptr;
  MOE_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t r = 0, u = 0;  // the attributes are cuuint64_t, a 64-bit unsigned
  MOE_CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r));
  MOE_CUDA_TRY(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &u));
  *reserved = r;
  *used = u;
  return 0;
}

extern "C" int moe_cuda_pool_trim(int device) {
  MOE_CUDA_TRY(cudaSetDevice(device));
  MOE_CUDA_TRY(cudaDeviceSynchronize());
  cudaMemPool_t pool = nullptr;
  MOE_CUDA_TRY(cudaDeviceGetDefaultMemPool(&pool, device));
  MOE_CUDA_TRY(cudaMemPoolTrimTo(pool, 0));
  return 0;
}

extern "C" int moe_cuda_malloc_async(void** ptr, size_t bytes, void* stream) {
  if (!ptr) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  *ptr = nullptr;
  if (bytes == 0) return 0;
  MOE_CUDA_TRY(cudaMallocAsync(ptr, bytes, static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_free_async(void* ptr, void* stream) {
  if (!ptr) return 0;
  MOE_CUDA_TRY(cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_malloc(void** ptr, size_t bytes) {
  if (!ptr) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaMalloc(ptr, bytes));
  return 0;
}

extern "C" int moe_cuda_memcpy_async(void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0) return 0;
  if (!dst || !src) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_memcpy_peer_async(void* dst, int dst_device, const void* src, int src_device, size_t bytes,
                                          void* stream) {
  if (bytes == 0) return 0;
  if (!dst || !src) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_memset_async(void* ptr, int value, size_t bytes, void* stream) {
  if (bytes == 0) return 0;
  if (!ptr) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaMemsetAsync(ptr, value, bytes, static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_timing_event_create(void** event) {
  if (!event) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaEvent_t e = nullptr;
  MOE_CUDA_TRY(cudaEventCreate(&e));
  *event = e;
  return 0;
}

extern "C" int moe_cuda_event_elapsed_ms(void* start, void* end, float* ms) {
  if (!start || !end || !ms) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaEventSynchronize(static_cast<cudaEvent_t>(end)));
  MOE_CUDA_TRY(cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return 0;
}
