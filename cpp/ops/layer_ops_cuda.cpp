// The layer's glue ops on CUDA tensors (see cuda_ops.h): add, axpby, the sum
// of squares, fillRandom, jitter, chunkTranspose and the expert bias update.
#include "../../cuda/launchers.h"
#include "cuda_ops.h"

namespace moe::ops::cuda_path {

Task<Tensor> add(const Tensor& a, const Tensor& b) {
  return [a, b] {
    const Device dev = a.device();
    cuda::Scope sc(dev);
    Tensor out = empty(a.dtype, a.shape, dev);
    cuda::check(moe_cuda_add(a.raw(), cuda::dtype_code(a.dtype), b.raw(), cuda::dtype_code(b.dtype), a.numel(),
                             out.raw(), sc.stream()),
                "add", dev);
    return out;
  };
}

Task<bool> axpby(const Tensor& y, const Tensor& x, float alpha, float beta) {
  return [y, x, alpha, beta] {
    const Device dev = y.device();
    cuda::Scope sc(dev);
    cuda::check(moe_cuda_axpby(y.raw(), cuda::dtype_code(y.dtype), x.defined() ? x.raw() : nullptr,
                               x.defined() ? cuda::dtype_code(x.dtype) : cuda::dtype_code(y.dtype), y.numel(), alpha,
                               beta, sc.stream()),
                "axpby", dev);
    return true;
  };
}

Task<Tensor> sum_squares(const std::vector<Tensor>& tensors, Device device) {
  return [tensors, device] {
    cuda::Scope sc(device);
    int64_t count = 0;
    for (const Tensor& t : tensors) count += moe_cuda_sum_squares_partials_count(t.numel());
    Scratch partials(align256(size_t(count > 0 ? count : 1) * sizeof(double)), device);
    double* p = static_cast<double*>(partials.at(0));
    int64_t at = 0;
    for (const Tensor& t : tensors) {
      cuda::check(moe_cuda_sum_squares_partials(t.raw(), cuda::dtype_code(t.dtype), t.numel(), p + at, sc.stream()),
                  "sumSquares", device);
      at += moe_cuda_sum_squares_partials_count(t.numel());
    }
    Tensor out = empty(DType::F32, {}, device);
    cuda::check(moe_cuda_sum_squares_finish(p, count, out.data<float>(), sc.stream()), "sumSquares", device);
    return out;
  };
}

Task<bool> fill_random(const Tensor& t, const FillRandomOptions& o, int64_t slice) {
  return [t, o, slice] {
    const Device dev = t.device();
    cuda::Scope sc(dev);
    cuda::check(moe_cuda_fill_random(t.raw(), cuda::dtype_code(t.dtype), t.numel(), o.stream.seed, o.stream.key,
                                     o.distribution == Distribution::Uniform ? 1 : 0, o.a, o.b, slice, o.first_slice,
                                     sc.stream()),
                "fillRandom", dev);
    return true;
  };
}

Task<Tensor> jitter(const Tensor& x, double eps, const RandomStream& stream, int64_t slice) {
  return [x, eps, stream, slice] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    Tensor out = empty(x.dtype, x.shape, dev);
    cuda::check(moe_cuda_jitter(x.raw(), cuda::dtype_code(x.dtype), x.numel(), eps, stream.seed, stream.key, slice,
                                out.raw(), sc.stream()),
                "jitter", dev);
    return out;
  };
}

Task<Tensor> chunk_transpose(const Tensor& x, const Tensor& counts) {
  return [x, counts] {
    const char* op = "chunkTranspose";
    const Device dev = x.device();
    cuda::Scope sc(dev);
    const int64_t A = counts.dim(0), B = counts.dim(1), R = x.dim(0);
    const std::string where = " (found on " + dev.str() + ")";
    const uint32_t neg = sc.add_check(Code::Value, "chunkTranspose: expected counts >= 0 but flat element ",
                                      " of counts is negative" + where);
    const uint32_t sum = sc.add_check(
        Code::Value,
        "chunkTranspose: expected counts to sum to the " + std::to_string(R) + " rows of x but they sum to ", where);
    const size_t ws = moe_cuda_chunk_transpose_workspace_bytes(A * B);
    Scratch workspace(ws, dev);
    Tensor out = empty(x.dtype, x.shape, dev);
    const size_t row_bytes = R ? x.bytes() / size_t(R) : 0;
    cuda::check(moe_cuda_chunk_transpose(x.raw(), R, row_bytes, counts.data<int32_t>(), A, B, out.raw(), sc.status(),
                                         neg, sum, workspace.at(0), ws, sc.stream()),
                op, dev);
    return out;
  };
}

Task<bool> expert_bias_update(const Tensor& bias, const Tensor& load, double rate) {
  return [bias, load, rate] {
    const Device dev = bias.device();
    cuda::Scope sc(dev);
    const uint32_t tag = sc.add_check(Code::Value, "expertBiasUpdate: expected finite loads >= 0 but load[",
                                      "] is not (found on " + dev.str() + ")");
    cuda::check(moe_cuda_expert_bias_update(bias.data<float>(), load.raw(), load.dtype == DType::F32 ? 1 : 0,
                                            bias.dim(0), rate, sc.status(), tag, sc.stream()),
                "expertBiasUpdate", dev);
    return true;
  };
}

}  // namespace moe::ops::cuda_path
