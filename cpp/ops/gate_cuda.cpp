// gate on CUDA tensors (see cuda_ops.h).
#include "../../cuda/launchers.h"
#include "cuda_ops.h"

namespace moe::ops::cuda_path {

Task<Tensor> gate(const Tensor& x, const Tensor& wg) {
  return [x, wg] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    const int64_t t = x.dim(0), d = x.dim(1), e = wg.dim(1);
    const uint32_t tag =
        sc.add_check(Code::NonFinite, "gate: expected finite values in x (the router's input) but element ",
                     " is not finite (found on " + dev.str() + ")");
    cuda::check(moe_cuda_check_finite(x.raw(), cuda::dtype_code(x.dtype), x.numel(), sc.status(), tag, sc.stream()),
                "gate", dev);
    Tensor logits = empty(DType::F32, {t, e}, dev);
    cuda::check(moe_cuda_gate_forward(x.raw(), cuda::dtype_code(x.dtype), wg.data<float>(), t, d, e,
                                      logits.data<float>(), sc.stream()),
                "gate", dev);
    return logits;
  };
}

Task<GateGrads> gate_backward(const Tensor& x, const Tensor& wg, const Tensor& dlogits) {
  return [x, wg, dlogits] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    const int64_t t = x.dim(0), d = x.dim(1), e = wg.dim(1);
    GateGrads g{empty(x.dtype, x.shape, dev), empty(DType::F32, wg.shape, dev)};
    cuda::check(moe_cuda_gate_backward(x.raw(), cuda::dtype_code(x.dtype), wg.data<float>(), dlogits.data<float>(), t,
                                       d, e, g.dx.raw(), g.dwg.data<float>(), sc.stream()),
                "gateBackward", dev);
    return g;
  };
}

}  // namespace moe::ops::cuda_path
