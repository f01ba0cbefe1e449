#include "adamw.h"

#include <cmath>
#include <vector>

#include "../core/check.h"
#include "../core/parallel.h"
#include "cuda_ops.h"
#include "float_span.h"

namespace moe::ops {

Task<bool> adamw(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWOptions& o) {
  const char* op = "adamw";
  check_float(op, "param", param);
  check_float(op, "grad", grad);
  check_dtype(op, "expAvg", exp_avg, {DType::F32});
  check_dtype(op, "expAvgSq", exp_avg_sq, {DType::F32});
  check_shape(op, "grad", grad, param.shape, "like param");
  check_shape(op, "expAvg", exp_avg, param.shape, "like param");
  check_shape(op, "expAvgSq", exp_avg_sq, param.shape, "like param");
  check_same_device(op, {{"param", &param}, {"grad", &grad}, {"expAvg", &exp_avg}, {"expAvgSq", &exp_avg_sq}});
  // The buffers written in place must be distinct, or one update would overwrite another.
  if (param.storage == exp_avg.storage || param.storage == exp_avg_sq.storage ||
      exp_avg.storage == exp_avg_sq.storage || grad.storage == exp_avg.storage || grad.storage == exp_avg_sq.storage)
    fail(Code::Value, std::string(op) +
                          ": expected param, expAvg and expAvgSq to be distinct tensors (and grad none of " +
                          "the state) but received shared storage");
  check_option(op, "lr", std::isfinite(o.lr) && o.lr >= 0, "a finite number >= 0", num_str(o.lr));
  check_option(op, "beta1", o.beta1 >= 0 && o.beta1 < 1, "in [0, 1)", num_str(o.beta1));
  check_option(op, "beta2", o.beta2 >= 0 && o.beta2 < 1, "in [0, 1)", num_str(o.beta2));
  check_option(op, "eps", std::isfinite(o.eps) && o.eps >= 0, "a finite number >= 0", num_str(o.eps));
  check_option(op, "weightDecay", std::isfinite(o.weight_decay) && o.weight_decay >= 0, "a finite number >= 0",
               num_str(o.weight_decay));
  check_option(op, "step", o.step >= 1, "an integer >= 1", std::to_string(o.step));

  // The per-step constants in double, as PyTorch computes them in Python floats.
  const double bc1 = 1.0 - std::pow(o.beta1, double(o.step));
  const double bc2 = 1.0 - std::pow(o.beta2, double(o.step));
  const float decay = float(1.0 - o.lr * o.weight_decay);
  const float step_size = float(o.lr / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  // 1 − β in double before rounding: float(1 − float(0.999)) would be off by 1.3e-5 relative.
  const float b1 = float(o.beta1), b2 = float(o.beta2), one_b1 = float(1.0 - o.beta1), one_b2 = float(1.0 - o.beta2);
  const float eps = float(o.eps);
  if (param.device().kind == Device::CUDA)
    return cuda_path::adamw(param, grad, exp_avg, exp_avg_sq,
                            cuda_path::AdamWConstants{decay, step_size, bc2_sqrt, b1, b2, one_b1, one_b2, eps});
  return [param, grad, exp_avg, exp_avg_sq, decay, step_size, bc2_sqrt, b1, b2, one_b1, one_b2, eps] {
    float* m = exp_avg.data<float>();
    float* v = exp_avg_sq.data<float>();
    parallel_for(param.numel(), 1 << 14, [&](int64_t i0, int64_t i1) {
      const int64_t n = i1 - i0;
      std::vector<float> p(static_cast<size_t>(n)), g(static_cast<size_t>(n));
      load_f32(param, i0, n, p.data());
      load_f32(grad, i0, n, g.data());
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = i0 + j;
        const float gj = g[size_t(j)];
        m[i] = b1 * m[i] + one_b1 * gj;
        v[i] = b2 * v[i] + one_b2 * gj * gj;
        const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
        p[size_t(j)] = p[size_t(j)] * decay - step_size * (m[i] / denom);
      }
      store_f32(p.data(), n, param, i0);
    });
    return true;
  };
}

}  // namespace moe::ops
