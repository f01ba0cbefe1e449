#include "cuda_probe.h"

#ifdef MOE_EP_WITH_CUDA
#include "../../cuda/launchers.h"
#endif

namespace moe {

const CudaStatus& cuda_status() {
  static const CudaStatus status = [] {
    CudaStatus s;
#ifdef MOE_EP_WITH_CUDA
    s.built = true;
    s.archs = MOE_EP_CUDA_ARCHS;
    s.emulated = MOE_EP_CUDA_EMULATED;  // set by CMake with the architectures
    char reason[256] = {0};
    s.device_count = moe_cuda_probe(&s.runtime_version, &s.driver_version, reason, sizeof reason);
    s.available = s.device_count > 0;
    if (!s.available) s.reason = reason[0] ? reason : "no CUDA device found";
#else
    s.reason = "this build has no CUDA code (nvcc was not found or MOE_EP_CUDA=OFF)";
#endif
    return s;
  }();
  return status;
}

}  // namespace moe
