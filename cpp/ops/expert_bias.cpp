#include "expert_bias.h"

#include <cmath>
#include <string>
#include <vector>

#include "../core/check.h"
#include "cuda_ops.h"

namespace moe::ops {

Task<bool> expert_bias_update(const Tensor& bias, const Tensor& load, double rate) {
  const char* op = "expertBiasUpdate";
  check_dtype(op, "bias", bias, {DType::F32});
  check_shape(op, "bias", bias, {-1}, "[numExperts]");
  check_dtype(op, "load", load, {DType::I32, DType::F32});
  check_shape(op, "load", load, {bias.dim(0)}, "[numExperts]");
  check_same_device(op, {{"bias", &bias}, {"load", &load}});
  check_option(op, "rate", std::isfinite(rate) && rate >= 0, "a finite number >= 0", num_str(rate));
  if (bias.device().kind == Device::CUDA) return cuda_path::expert_bias_update(bias, load, rate);
  return [bias, load, rate] {
    const int64_t e = bias.dim(0);
    std::vector<double> l(static_cast<size_t>(e));
    for (int64_t i = 0; i < e; ++i) {
      l[size_t(i)] = load.dtype == DType::I32 ? double(load.data<int32_t>()[i]) : double(load.data<float>()[i]);
      if (!(std::isfinite(l[size_t(i)]) && l[size_t(i)] >= 0))
        fail(Code::Value, std::string("expertBiasUpdate: expected finite loads >= 0 but load[") + std::to_string(i) +
                              "] is " + num_str(l[size_t(i)]));
    }
    double mean = 0;
    for (double v : l) mean += v;
    mean = e ? mean / double(e) : 0;
    float* b = bias.data<float>();
    for (int64_t i = 0; i < e; ++i) {
      const double gap = mean - l[size_t(i)];
      const double sign = gap > 0 ? 1.0 : gap < 0 ? -1.0 : 0.0;
      b[i] = float(double(b[i]) + rate * sign);
    }
    return true;
  };
}

}  // namespace moe::ops
