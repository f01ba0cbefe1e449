// grouped GEMM on CUDA tensors: the place where ops::grouped_gemm hands
// device tensors to the tensor-core kernels.
//
// Those kernels (cuda/grouped_gemm_*.cu: an mma.sync kernel with multistage
// cp.async loads for sm_80 and newer, and a wgmma / bulk-tensor-copy kernel
// for sm_90a, chosen at run time; per-expert row counts read on the device)
// are not part of this build yet. When they land, their launchers go in
// cuda/launchers.h (with stubs in cpp/core/cuda_stubs.cpp), and the two
// functions below become tasks like the other *_cuda.cpp files: open a
// cuda::Scope, tag rowsPerExpert that are negative or do not sum to R
// (moe_cuda_check_range_i32 and a sum check), allocate y / dx / dw / dbias on
// the device and launch on sc.stream(). Until then: ERR_MOE_UNSUPPORTED, on
// the caller's thread.
#include "cuda_ops.h"

namespace moe::ops::cuda_path {

Task<Tensor> grouped_gemm(const Tensor& x, const Tensor&, const Tensor&, const Tensor&) {
  fail(Code::Unsupported, "groupedGemm: grouped GEMM on CUDA is not built yet (received x on " + x.device().str() + ")");
}

Task<GroupedGemmGrads> grouped_gemm_backward(const Tensor&, const Tensor& x, const Tensor&, const Tensor&,
                                             GroupedGemmNeeds) {
  fail(Code::Unsupported,
       "groupedGemmBackward: grouped GEMM on CUDA is not built yet (received x on " + x.device().str() + ")");
}

}  // namespace moe::ops::cuda_path
