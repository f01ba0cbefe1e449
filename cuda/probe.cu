#include <cuda_runtime.h>

#include <cstdio>

#include "launchers.h"

extern "C" int moe_cuda_probe(int* runtime_version, int* driver_version, char* reason, size_t reason_len) {
  cudaRuntimeGetVersion(runtime_version);
  cudaDriverGetVersion(driver_version);
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    std::snprintf(reason, reason_len, "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  if (count == 0) std::snprintf(reason, reason_len, "no CUDA device is visible");
  return count;
}
