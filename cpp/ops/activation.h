// Expert activations (docs/math.md#activations): relu, gelu (exact erf form),
// silu, and the gated forms swiglu and geglu, whose input holds the gate half,
// then the up half.
#pragma once
#include <string>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::ops {

enum class ActivationKind { Relu, Gelu, Silu, Swiglu, Geglu };

// "relu" | "gelu" | "silu" | "swiglu" | "geglu"; anything else is ERR_MOE_VALUE.
ActivationKind parse_activation(const char* op, const std::string& name);
const char* activation_name(ActivationKind kind);
inline bool is_gated(ActivationKind k) { return k == ActivationKind::Swiglu || k == ActivationKind::Geglu; }

// x [..., C] any float dtype -> h in x's dtype: [..., C] elementwise, or [..., C/2] for
// gated kinds (h = act(gate) ⊙ up, act = silu for swiglu, tanh-form gelu for geglu).
Task<Tensor> activation(const Tensor& x, ActivationKind kind);

// dh with h's shape (any float dtype), x the forward input -> dx with x's shape and dtype.
// reuse_dh: the caller gives dh up, and dx may be written over it (one buffer fewer) where
// the shapes and dtypes allow; dh's contents are then unspecified.
Task<Tensor> activation_backward(const Tensor& dh, const Tensor& x, ActivationKind kind, bool reuse_dh = false);

}  // namespace moe::ops
