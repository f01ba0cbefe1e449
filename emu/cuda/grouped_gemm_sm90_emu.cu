// The emulated build's side of the Hopper grouped GEMM (grouped_gemm_sm90.cu):
// its wgmma, TMA and mbarrier PTX has no emulation, and the emulated device
// reports compute capability 8.0, so the launchers choose the mma.sync kernel
// (grouped_gemm_sm80.cu, whose PTX emu/cuda/include/ptx_sm80.cuh emulates) and never this.
#include <cuda_runtime.h>

#include "common.cuh"
#include "grouped_gemm.cuh"

namespace moe_cuda {

int gg_launch_sm90(const GgArgs&, cudaStream_t) { return MOE_CUDA_ERR_UNSUPPORTED; }

bool gg_sm90_available(int* error) {
  *error = 0;
  return false;
}

}  // namespace moe_cuda
