// C ABI: the experts' backward GEMMs and the activations (moe_grouped_gemm is in capi_grouped_gemm.cpp).
#include "../ops/activation.h"
#include "../ops/grouped_gemm.h"
#include "capi_ops.h"

using namespace moe;
using namespace moe::capi;

extern "C" {

moe_status moe_grouped_gemm_backward(moe_tensor dy, moe_tensor x, moe_tensor w, moe_tensor rows_per_expert,
                                     moe_tensor* dx, moe_tensor* dw, moe_tensor* dbias) {
  return guarded([&] {
    clear({dx, dw, dbias});
    ops::GroupedGemmNeeds needs{dx != nullptr, dw != nullptr, dbias != nullptr};
    ops::GroupedGemmGrads g = ops::grouped_gemm_backward(in(dy, "dy"), in(x, "x"), in(w, "w"),
                                                         in(rows_per_expert, "rows_per_expert"), needs)();
    if (needs.dx) out(dx, g.dx);
    if (needs.dw) out(dw, g.dw);
    if (needs.dbias) out(dbias, g.dbias);
  });
}

moe_status moe_activation_forward(moe_tensor x, moe_activation kind, moe_tensor* h) {
  return guarded([&] {
    clear({h});
    out(h, ops::activation(in(x, "x"), activation_of(kind, "moe_activation_forward"))());
  });
}

moe_status moe_activation_backward(moe_tensor dh, moe_tensor x, moe_activation kind, moe_tensor* dx) {
  return guarded([&] {
    clear({dx});
    out(dx, ops::activation_backward(in(dh, "dh"), in(x, "x"), activation_of(kind, "moe_activation_backward"))());
  });
}

}  // extern "C"
