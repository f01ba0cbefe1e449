// Activations and AdamW on CUDA tensors (see cuda_ops.h).
#include "../../cuda/launchers.h"
#include "cuda_ops.h"

namespace moe::ops::cuda_path {

Task<Tensor> activation(const Tensor& x, ActivationKind kind, int64_t rows, int64_t width) {
  return [x, kind, rows, width] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    Shape shape = x.shape;
    if (is_gated(kind)) shape.back() = width / 2;
    Tensor h = empty(x.dtype, shape, dev);
    cuda::check(
        moe_cuda_activation_forward(x.raw(), cuda::dtype_code(x.dtype), rows, width, int(kind), h.raw(), sc.stream()),
        "activation", dev);
    return h;
  };
}

Task<Tensor> activation_backward(const Tensor& dh, const Tensor& x, ActivationKind kind, int64_t rows, int64_t width) {
  return [dh, x, kind, rows, width] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    Tensor dx = empty(x.dtype, x.shape, dev);
    cuda::check(moe_cuda_activation_backward(dh.raw(), cuda::dtype_code(dh.dtype), x.raw(), cuda::dtype_code(x.dtype),
                                             rows, width, int(kind), dx.raw(), sc.stream()),
                "activationBackward", dev);
    return dx;
  };
}

Task<bool> adamw(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWConstants& c) {
  return [param, grad, exp_avg, exp_avg_sq, c] {
    const Device dev = param.device();
    cuda::Scope sc(dev);
    cuda::check(moe_cuda_adamw(param.raw(), cuda::dtype_code(param.dtype), grad.raw(), cuda::dtype_code(grad.dtype),
                               exp_avg.data<float>(), exp_avg_sq.data<float>(), param.numel(), c.decay, c.step_size,
                               c.bc2_sqrt, c.b1, c.b2, c.one_b1, c.one_b2, c.eps, sc.stream()),
                "adamw", dev);
    return true;
  };
}

}  // namespace moe::ops::cuda_path
