// Devices and events for host code that must watch work on a stream without
// blocking on it (cpp/comm/nccl_comm.cpp's watchdog), or wait for a point in
// the middle of it (the read-backs of cpp/core/cuda_device.h), and the
// pinned, device-mapped host memory those read-backs land in.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "common.cuh"

extern "C" int moe_cuda_set_device(int device) {
  MOE_CUDA_TRY(cudaSetDevice(device));
  return 0;
}

extern "C" int moe_cuda_get_device(int* device) {
  if (!device) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaGetDevice(device));
  return 0;
}

extern "C" int moe_cuda_event_create(void** event) {
  if (!event) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaEvent_t e = nullptr;
  MOE_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  *event = e;
  return 0;
}

extern "C" int moe_cuda_event_record(void* event, void* stream) {
  if (!event) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
  return 0;
}

extern "C" int moe_cuda_event_query(void* event, int* done) {
  if (!event || !done) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (err == cudaErrorNotReady) {
    *done = 0;
    return 0;
  }
  *done = 1;
  return static_cast<int>(err);  // 0, or the error of the work before the record
}

extern "C" int moe_cuda_event_synchronize(void* event) {
  if (!event) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  MOE_CUDA_TRY(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
  return 0;
}

extern "C" int moe_cuda_host_alloc_mapped(size_t bytes, void** host, void** device_ptr) {
  if (!host || !device_ptr || bytes == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  *host = nullptr;
  *device_ptr = nullptr;
  void* h = nullptr;
  MOE_CUDA_TRY(cudaHostAlloc(&h, bytes, cudaHostAllocMapped));
  void* d = nullptr;
  const cudaError_t err = cudaHostGetDevicePointer(&d, h, 0);
  if (err != cudaSuccess) {
    cudaFreeHost(h);
    return static_cast<int>(err);
  }
  std::memset(h, 0, bytes);
  *host = h;
  *device_ptr = d;
  return 0;
}

extern "C" int moe_cuda_event_destroy(void* event) {
  if (!event) return 0;
  MOE_CUDA_TRY(cudaEventDestroy(static_cast<cudaEvent_t>(event)));
  return 0;
}

extern "C" const char* moe_cuda_error_string(int code) {
  if (code == MOE_CUDA_ERR_INVALID_ARGUMENT) return "invalid argument (refused before calling CUDA)";
  if (code == MOE_CUDA_ERR_UNSUPPORTED) return "unsupported arguments (no compiled kernel covers them)";
  // Room for "name: text"; one buffer per thread, so concurrent callers do not share it.
  thread_local char text[256];
  cudaError_t err = static_cast<cudaError_t>(code);
  std::snprintf(text, sizeof text, "%s: %s", cudaGetErrorName(err), cudaGetErrorString(err));
  return text;
}
