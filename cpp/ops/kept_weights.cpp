#include "kept_weights.h"

#include <algorithm>
#include <cfloat>
#include <string>

#include "../core/check.h"

namespace moe::ops {

namespace {

void check_kept_args(const char* op, const Tensor& weights, const Tensor& pair_to_row) {
  check_dtype(op, "weights", weights, {DType::F32});
  check_shape(op, "weights", weights, {-1, -1}, "[tokens, topK]");
  check_dtype(op, "pairToRow", pair_to_row, {DType::I32});
  check_shape(op, "pairToRow", pair_to_row, {weights.dim(0), weights.dim(1)}, "[tokens, topK] (weights' shape)");
  check_same_device(op, {{"weights", &weights}, {"pairToRow", &pair_to_row}});
  if (weights.device().kind == Device::CUDA)
    fail(Code::Unsupported,
         std::string(op) + ": expected CPU tensors (renormalising the kept weights has no CUDA kernel)");
}

// S_t over the kept choices of token t, in double.
double kept_sum(const float* w, const int32_t* p, int64_t t, int64_t k) {
  double s = 0;
  for (int64_t j = t * k; j < (t + 1) * k; ++j)
    if (p[j] >= 0) s += double(w[j]);
  return s;
}

}  // namespace

Task<Tensor> renormalize_kept(const Tensor& weights, const Tensor& pair_to_row) {
  check_kept_args("renormalizeKept", weights, pair_to_row);
  return [weights, pair_to_row] {
    const int64_t T = weights.dim(0), k = weights.dim(1);
    const float* w = weights.data<float>();
    const int32_t* p = pair_to_row.data<int32_t>();
    Tensor out = empty(DType::F32, weights.shape);
    float* o = out.data<float>();
    for (int64_t t = 0; t < T; ++t) {
      const double denom = std::max(kept_sum(w, p, t, k), double(FLT_EPSILON));
      for (int64_t j = t * k; j < (t + 1) * k; ++j) o[j] = p[j] >= 0 ? float(double(w[j]) / denom) : 0.0f;
    }
    return out;
  };
}

Task<Tensor> renormalize_kept_backward(const Tensor& weights, const Tensor& pair_to_row, const Tensor& d_kept) {
  const char* op = "renormalizeKeptBackward";
  check_kept_args(op, weights, pair_to_row);
  check_dtype(op, "dKept", d_kept, {DType::F32});
  check_shape(op, "dKept", d_kept, {weights.dim(0), weights.dim(1)}, "[tokens, topK] (weights' shape)");
  check_same_device(op, {{"weights", &weights}, {"dKept", &d_kept}});
  return [weights, pair_to_row, d_kept] {
    const int64_t T = weights.dim(0), k = weights.dim(1);
    const float* w = weights.data<float>();
    const int32_t* p = pair_to_row.data<int32_t>();
    const float* g = d_kept.data<float>();
    Tensor out = empty(DType::F32, weights.shape);
    float* o = out.data<float>();
    for (int64_t t = 0; t < T; ++t) {
      const double s = kept_sum(w, p, t, k);
      if (s > double(FLT_EPSILON)) {
        // d w_j = (g_j − Σ_i g_i · w_i / S) / S over the kept choices.
        double dot = 0;
        for (int64_t j = t * k; j < (t + 1) * k; ++j)
          if (p[j] >= 0) dot += double(g[j]) * double(w[j]) / s;
        for (int64_t j = t * k; j < (t + 1) * k; ++j) o[j] = p[j] >= 0 ? float((double(g[j]) - dot) / s) : 0.0f;
      } else {
        // The clamped denominator is a constant.
        for (int64_t j = t * k; j < (t + 1) * k; ++j)
          o[j] = p[j] >= 0 ? float(double(g[j]) / double(FLT_EPSILON)) : 0.0f;
      }
    }
    return out;
  };
}

}  // namespace moe::ops
