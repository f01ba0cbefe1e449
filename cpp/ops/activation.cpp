#include "activation.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/op_clock.h"
#include "../core/check.h"
#include "../core/host_allocator.h"
#include "../core/parallel.h"
#include "cuda_ops.h"
#include "float_span.h"

namespace moe::ops {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;     // 1/√2
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1/√(2π)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // √(2/π)
constexpr float kGeluCoef = 0.044715f;

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// relu: max(x, 0); its derivative is taken as 0 at x = 0 (as PyTorch does). A NaN is
// neither above nor below 0: it passes through both, so a NaN input is never hidden as 0.
inline float relu(float x) { return x > 0.0f || std::isnan(x) ? x : 0.0f; }
// Written as selects rather than branches, so that the loops over it vectorise (random signs
// mispredict a branch half the time): the same values.
inline float relu_grad(float x) {
  const float d = x > 0.0f ? 1.0f : 0.0f;
  return x != x ? x : d;
}

// gelu, exact: x Φ(x), Φ(x) = (1 + erf(x/√2)) / 2; d/dx = Φ(x) + x φ(x).
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * kInvSqrt2)); }
inline float gelu_grad(float x) {
  return 0.5f * (1.0f + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
}

// silu: x σ(x); d/dx = σ(x) (1 + x (1 − σ(x))).
inline float silu(float x) { return x * sigmoid(x); }
inline float silu_grad(float x) {
  float s = sigmoid(x);
  return s * (1.0f + x * (1.0f - s));
}

// gelu, tanh form (Hendrycks & Gimpel): x/2 (1 + tanh(√(2/π)(x + 0.044715 x³))).
inline float gelu_tanh(float x) {
  float t = std::tanh(kSqrt2OverPi * (x + kGeluCoef * x * x * x));
  return 0.5f * x * (1.0f + t);
}
inline float gelu_tanh_grad(float x) {
  float t = std::tanh(kSqrt2OverPi * (x + kGeluCoef * x * x * x));
  return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluCoef * x * x);
}

// The activation's branch is picked once per chunk, so the inner loops stay simple.
template <class F>
void for_kind(ActivationKind k, F&& f) {
  switch (k) {
    case ActivationKind::Relu:
      return f([](float x) { return relu(x); }, [](float x) { return relu_grad(x); });
    case ActivationKind::Gelu:
      return f([](float x) { return gelu(x); }, [](float x) { return gelu_grad(x); });
    case ActivationKind::Silu:
    case ActivationKind::Swiglu:
      return f([](float x) { return silu(x); }, [](float x) { return silu_grad(x); });
    case ActivationKind::Geglu:
      return f([](float x) { return gelu_tanh(x); }, [](float x) { return gelu_tanh_grad(x); });
  }
}

struct Layout {
  int64_t rows;   // product of all dims but the last
  int64_t width;  // x's last dim (2F for gated kinds)
  int64_t out;    // h's last dim (F for gated kinds)
};

Layout check_input(const char* op, const Tensor& x, ActivationKind kind) {
  check_float(op, "x", x);
  if (!is_gated(kind)) {
    int64_t w = x.ndim() ? x.shape.back() : 1;
    return {w ? x.numel() / w : 0, w, w};
  }
  if (x.ndim() < 1)
    fail(Code::Shape, std::string(op) + ": expected x of shape [..., 2F] for " + activation_name(kind) +
                          " but received " + shape_str(x.shape));
  int64_t w = x.shape.back();
  if (w % 2 != 0)
    fail(Code::Shape, std::string(op) +
                          ": expected x of shape [..., 2F] (an even last dim: the gate half, then the up half) for " +
                          activation_name(kind) + " but received " + shape_str(x.shape));
  return {w ? x.numel() / w : 0, w, w / 2};
}

// Rows per parallel chunk: about 16K elements each.
int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, width)); }

}  // namespace

ActivationKind parse_activation(const char* op, const std::string& name) {
  if (name == "relu") return ActivationKind::Relu;
  if (name == "gelu") return ActivationKind::Gelu;
  if (name == "silu") return ActivationKind::Silu;
  if (name == "swiglu") return ActivationKind::Swiglu;
  if (name == "geglu") return ActivationKind::Geglu;
  fail(Code::Value,
       std::string(op) + ": expected kind to be one of relu, gelu, silu, swiglu, geglu but received \"" + name + "\"");
}

const char* activation_name(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::Relu:
      return "relu";
    case ActivationKind::Gelu:
      return "gelu";
    case ActivationKind::Silu:
      return "silu";
    case ActivationKind::Swiglu:
      return "swiglu";
    case ActivationKind::Geglu:
      return "geglu";
  }
  return "?";
}

Task<Tensor> activation(const Tensor& x, ActivationKind kind) {
  Layout l = check_input("activation", x, kind);
  if (x.device().kind == Device::CUDA) return cuda_path::activation(x, kind, l.rows, l.width);
  return [x, kind, l] {
    OpTimer timer("activation");
    Shape shape = x.shape;
    if (is_gated(kind)) shape.back() = l.out;
    Tensor h = empty(x.dtype, shape);
    // float32 reads x and writes h where they lie; other dtypes go through uninitialised scratch.
    const bool f32 = x.dtype == DType::F32;
    parallel_for(l.rows, grain_rows(l.width), [&](int64_t r0, int64_t r1) {
      const int64_t n_in = (r1 - r0) * l.width, n_out = (r1 - r0) * l.out;
      HostScratch<float> scratch(f32 ? 0 : size_t(n_in + n_out));
      const float* in = f32 ? x.data<float>() + r0 * l.width : scratch.data();
      float* out = f32 ? h.data<float>() + r0 * l.out : scratch.data() + n_in;
      if (!f32) load_f32(x, r0 * l.width, n_in, scratch.data());
      for_kind(kind, [&](auto f, auto) {
        if (!is_gated(kind)) {
          for (int64_t i = 0; i < n_in; ++i) out[i] = f(in[i]);
          return;
        }
        for (int64_t r = 0; r < r1 - r0; ++r) {
          const float* gate = in + r * l.width;
          const float* up = gate + l.out;
          float* o = out + r * l.out;
          for (int64_t j = 0; j < l.out; ++j) o[j] = f(gate[j]) * up[j];
        }
      });
      if (!f32) store_f32(out, n_out, h, r0 * l.out);
    });
    return h;
  };
}

Task<Tensor> activation_backward(const Tensor& dh, const Tensor& x, ActivationKind kind, bool reuse_dh) {
  const char* op = "activationBackward";
  Layout l = check_input(op, x, kind);
  check_float(op, "dh", dh);
  Shape hshape = x.shape;
  if (is_gated(kind)) hshape.back() = l.out;
  std::string pattern = is_gated(kind) ? "[..., F] (x's shape with the last dim halved)" : "like x";
  check_shape(op, "dh", dh, hshape, pattern.c_str());
  check_same_device(op, {{"x", &x}, {"dh", &dh}});
  if (x.device().kind == Device::CUDA) return cuda_path::activation_backward(dh, x, kind, l.rows, l.width);
  // dx may take dh's storage when the caller gives dh up (same shape and dtype; each element is
  // read before it is written there).
  const bool in_place = reuse_dh && !is_gated(kind) && dh.dtype == x.dtype;
  return [dh, x, kind, l, in_place] {
    OpTimer timer("activationBackward");
    Tensor dx = in_place ? dh : empty(x.dtype, x.shape);
    const bool f32 = x.dtype == DType::F32 && dh.dtype == DType::F32;
    parallel_for(l.rows, grain_rows(l.width), [&](int64_t r0, int64_t r1) {
      const int64_t n_in = (r1 - r0) * l.width, n_g = (r1 - r0) * l.out;
      HostScratch<float> scratch(f32 ? 0 : size_t(2 * n_in + n_g));
      const float* in = f32 ? x.data<float>() + r0 * l.width : scratch.data();
      const float* g = f32 ? dh.data<float>() + r0 * l.out : scratch.data() + n_in;
      float* out = f32 ? dx.data<float>() + r0 * l.width : scratch.data() + n_in + n_g;
      if (!f32) {
        load_f32(x, r0 * l.width, n_in, scratch.data());
        load_f32(dh, r0 * l.out, n_g, scratch.data() + n_in);
      }
      for_kind(kind, [&](auto f, auto df) {
        if (!is_gated(kind)) {
          for (int64_t i = 0; i < n_in; ++i) out[i] = g[i] * df(in[i]);
          return;
        }
        // h = act(gate) · up: d gate = dh · up · act'(gate), d up = dh · act(gate).
        for (int64_t r = 0; r < r1 - r0; ++r) {
          const float* gate = in + r * l.width;
          const float* up = gate + l.out;
          const float* gr = g + r * l.out;
          float* dgate = out + r * l.width;
          float* dup = dgate + l.out;
          for (int64_t j = 0; j < l.out; ++j) {
            dgate[j] = gr[j] * up[j] * df(gate[j]);
            dup[j] = gr[j] * f(gate[j]);
          }
        }
      });
      if (!f32) store_f32(out, n_in, dx, r0 * l.width);
    });
    return dx;
  };
}

}  // namespace moe::ops
