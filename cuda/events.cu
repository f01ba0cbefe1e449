// Devices and events for host code that must watch work on a stream without
// blocking on it (cpp/dist/nccl_comm.cpp's watchdog).
#include <cuda_runtime.h>

#include <cstdio>

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
