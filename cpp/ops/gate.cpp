#include "gate.h"

#include "../core/op_clock.h"
#include "../core/blas.h"
#include "../core/check.h"
#include "../core/floats.h"
#include "../core/parallel.h"
#include "../core/size.h"
#include "cuda_ops.h"

namespace moe::ops {

namespace {
void check_gate_args(const char* op, const Tensor& x, const Tensor& wg) {
  check_float(op, "x", x);
  check_shape(op, "x", x, {-1, -1}, "[tokens, dModel]");
  check_dtype(op, "wg", wg, {DType::F32});
  check_shape(op, "wg", wg, {x.dim(1), -1}, "[dModel, numExperts]");
  check_same_device(op, {{"x", &x}, {"wg", &wg}});
  // The BLAS takes int sizes.
  checked_int(op, "tokens", x.dim(0));
  checked_int(op, "dModel", x.dim(1));
  checked_int(op, "numExperts", wg.dim(1));
  checked_mul(op, "logits [tokens, numExperts] elements", x.dim(0), wg.dim(1));
}

}  // namespace

Task<Tensor> gate(const Tensor& x, const Tensor& wg) {
  check_gate_args("gate", x, wg);
  if (x.device().kind == Device::CUDA) return cuda_path::gate(x, wg);
  return [x, wg] {
    OpTimer timer("gate");
    const int t = int(x.dim(0)), d = int(x.dim(1)), e = int(wg.dim(1));
    F32Read xf(x);
    check_finite("gate", "x (the router's input)", xf.data(), x.numel());
    Tensor logits = empty(DType::F32, {t, e});
    sgemm(false, false, t, e, d, 1.0f, xf.data(), d, wg.data<float>(), e, 0.0f, logits.data<float>(), e);
    return logits;
  };
}

Task<GateGrads> gate_backward(const Tensor& x, const Tensor& wg, const Tensor& dlogits) {
  check_gate_args("gateBackward", x, wg);
  check_dtype("gateBackward", "dlogits", dlogits, {DType::F32});
  check_shape("gateBackward", "dlogits", dlogits, {x.dim(0), wg.dim(1)}, "[tokens, numExperts]");
  check_same_device("gateBackward", {{"x", &x}, {"dlogits", &dlogits}});
  if (x.device().kind == Device::CUDA) return cuda_path::gate_backward(x, wg, dlogits);
  return [x, wg, dlogits] {
    OpTimer timer("gateBackward");
    const int t = int(x.dim(0)), d = int(x.dim(1)), e = int(wg.dim(1));
    F32Read xf(x);
    GateGrads g{empty(x.dtype, x.shape), empty(DType::F32, wg.shape)};
    F32Write dx(g.dx);
    sgemm(false, true, t, d, e, 1.0f, dlogits.data<float>(), e, wg.data<float>(), e, 0.0f, dx.data(), d);
    dx.commit();
    sgemm(true, false, d, e, t, 1.0f, xf.data(), d, dlogits.data<float>(), e, 0.0f, g.dwg.data<float>(), e);
    return g;
  };
}

}  // namespace moe::ops
