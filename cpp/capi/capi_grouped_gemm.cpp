// C ABI: moe_grouped_gemm.
#include "../ops/grouped_gemm.h"
#include "capi_ops.h"

using namespace moe;
using namespace moe::capi;

extern "C" moe_status moe_grouped_gemm(moe_tensor x, moe_tensor w, moe_tensor rows_per_expert, moe_tensor bias,
                                       moe_tensor* y) {
  return guarded([&] {
    clear({y});
    out(y, ops::grouped_gemm(in(x, "x"), in(w, "w"), in(rows_per_expert, "rows_per_expert"), optional_in(bias))());
  });
}
