#include "residual.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/check.h"
#include "../core/floats.h"
#include "../core/parallel.h"

namespace moe::ops {

namespace {

void check_mix_args(const char* op, const Tensor& moe, const Tensor& mlp, const Tensor& logits, const Tensor& bias) {
  check_float(op, "moe", moe);
  check_shape(op, "moe", moe, {-1, -1}, "[tokens, dModel]");
  check_dtype(op, "mlp", mlp, {moe.dtype});
  check_shape(op, "mlp", mlp, {moe.dim(0), moe.dim(1)}, "[tokens, dModel] (moe's shape)");
  check_dtype(op, "logits", logits, {DType::F32});
  check_shape(op, "logits", logits, {moe.dim(0), 2}, "[tokens, 2]");
  check_dtype(op, "bias", bias, {DType::F32});
  check_shape(op, "bias", bias, {2}, "[2]");
  check_same_device(op, {{"moe", &moe}, {"mlp", &mlp}, {"logits", &logits}, {"bias", &bias}});
  if (moe.device().kind == Device::CUDA)
    fail(Code::Unsupported, std::string(op) + ": expected CPU tensors (the residual mix has no CUDA kernel)");
}

// The two coefficients of token t: softmax(logits[t] + bias) in double, rounded to float32.
void coefficients(const float* l, const float* b, int64_t t, float c[2]) {
  const double a0 = double(l[2 * t] + b[0]), a1 = double(l[2 * t + 1] + b[1]);
  const double m = std::max(a0, a1);
  const double e0 = std::exp(a0 - m), e1 = std::exp(a1 - m);
  c[0] = float(e0 / (e0 + e1));
  c[1] = float(e1 / (e0 + e1));
}

int64_t token_grain(int64_t d) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, d)); }

}  // namespace

Task<Tensor> residual_mix(const Tensor& moe, const Tensor& mlp, const Tensor& logits, const Tensor& bias) {
  check_mix_args("residualMix", moe, mlp, logits, bias);
  return [moe, mlp, logits, bias] {
    const int64_t T = moe.dim(0), D = moe.dim(1);
    F32Read a(moe), m(mlp);
    Tensor y = empty(moe.dtype, moe.shape);
    F32Write out(y);
    const float* l = logits.data<float>();
    const float* b = bias.data<float>();
    float* o = out.data();
    parallel_for(T, token_grain(D), [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        float c[2];
        coefficients(l, b, t, c);
        for (int64_t i = t * D; i < (t + 1) * D; ++i) o[i] = c[0] * a.data()[i] + c[1] * m.data()[i];
      }
    });
    out.commit();
    return y;
  };
}

Task<ResidualMixGrads> residual_mix_backward(const Tensor& dy, const Tensor& moe, const Tensor& mlp,
                                             const Tensor& logits, const Tensor& bias) {
  const char* op = "residualMixBackward";
  check_mix_args(op, moe, mlp, logits, bias);
  check_float(op, "dy", dy);
  check_shape(op, "dy", dy, {moe.dim(0), moe.dim(1)}, "[tokens, dModel] (moe's shape)");
  check_same_device(op, {{"dy", &dy}, {"moe", &moe}});
  return [dy, moe, mlp, logits, bias] {
    const int64_t T = moe.dim(0), D = moe.dim(1);
    F32Read g(dy), a(moe), m(mlp);
    ResidualMixGrads r{empty(moe.dtype, moe.shape), empty(moe.dtype, moe.shape), empty(DType::F32, {T, 2}),
                       empty(DType::F32, {2})};
    F32Write da(r.d_moe), dm(r.d_mlp);
    const float* l = logits.data<float>();
    const float* b = bias.data<float>();
    std::vector<double> dl(static_cast<size_t>(2 * T));
    parallel_for(T, token_grain(D), [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        float c[2];
        coefficients(l, b, t, c);
        double g0 = 0, g1 = 0;
        for (int64_t i = t * D; i < (t + 1) * D; ++i) {
          const float gi = g.data()[i];
          da.data()[i] = c[0] * gi;
          dm.data()[i] = c[1] * gi;
          g0 += double(gi) * double(a.data()[i]);
          g1 += double(gi) * double(m.data()[i]);
        }
        const double mean = double(c[0]) * g0 + double(c[1]) * g1;
        dl[size_t(2 * t)] = double(c[0]) * (g0 - mean);
        dl[size_t(2 * t + 1)] = double(c[1]) * (g1 - mean);
      }
    });
    da.commit();
    dm.commit();
    float* out = r.d_logits.data<float>();
    double s0 = 0, s1 = 0;  // the bias's gradient, summed in token order
    for (int64_t t = 0; t < T; ++t) {
      out[2 * t] = float(dl[size_t(2 * t)]);
      out[2 * t + 1] = float(dl[size_t(2 * t + 1)]);
      s0 += dl[size_t(2 * t)];
      s1 += dl[size_t(2 * t + 1)];
    }
    r.d_bias.data<float>()[0] = float(s0);
    r.d_bias.data<float>()[1] = float(s1);
    return r;
  };
}

}  // namespace moe::ops
