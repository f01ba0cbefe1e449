// grouped GEMM on CUDA tensors: hands device tensors to the tensor-core
// kernels of cuda/grouped_gemm*.cu (an mma.sync kernel with multistage
// cp.async loads for sm_80 and newer; a wgmma / bulk-tensor-copy kernel for
// sm_90a, chosen at run time). The per-expert row counts stay on the device.
// MOE_EP_GG_KERNEL=sm80 asks for the mma.sync kernel on a Hopper GPU too (how
// the device check runs both kernels on one Hopper GPU); "auto" or unset: the best.
#include <cstdlib>
#include <cstring>

#include "../../cuda/grouped_gemm_plan.h"
#include "../../cuda/launchers.h"
#include "cuda_ops.h"

namespace moe::ops {

std::string grouped_gemm_cuda_unsupported(DType dtype, int64_t k, int64_t n, bool dbias) {
  if (dtype != DType::BF16 && dtype != DType::F16)
    return std::string("expected bfloat16 or float16 operands but received ") + dtype_name(dtype);
  if (!moe_cuda::gg_widths_supported(k, n))
    return "expected K and N to be multiples of " + std::to_string(moe_cuda::kGgAlignElements) +
           " (rows 16-byte aligned) below 2^31 but received K " + std::to_string(k) + " and N " + std::to_string(n);
  if (dbias) return "expected no bias gradient (the kernels do not compute one) but it was asked for";
  return "";
}

namespace cuda_path {
namespace {

// The operands' dtype for the kernels, after the checks every call gets:
// one dtype, which the kernels take, at widths they take.
int gemm_dtype(const char* op, const Tensor& a, const Tensor& b, int64_t k, int64_t n, bool dbias = false) {
  if (a.dtype != b.dtype)
    fail(Code::Unsupported, std::string(op) + ": on CUDA expected operands of one dtype but received " +
                                dtype_name(a.dtype) + " and " + dtype_name(b.dtype));
  const std::string why = grouped_gemm_cuda_unsupported(a.dtype, k, n, dbias);
  if (!why.empty()) fail(Code::Unsupported, std::string(op) + ": on CUDA " + why);
  return a.dtype == DType::BF16 ? MOE_CUDA_GG_BF16 : MOE_CUDA_GG_F16;
}

int32_t* device_counts(const char* op, const Tensor& counts) {
  if (counts.dtype != DType::I32)
    fail(Code::Unsupported,
         std::string(op) + ": on CUDA expected rowsPerExpert of dtype int32 but received " + dtype_name(counts.dtype));
  return counts.data<int32_t>();
}

// Tags counts outside [0, R] for the next synchronisation; the kernels also
// refuse (compute nothing for) counts whose sum exceeds R.
void check_counts(const char* op, const cuda::Scope& sc, const Tensor& counts, int64_t rows) {
  const uint32_t tag = sc.add_check(
      Code::Value, std::string(op) + ": expected rowsPerExpert in [0, " + std::to_string(rows) + "] but element ",
      " is outside it (found on " + sc.device().str() + ")");
  const int32_t hi = rows < INT32_MAX ? int32_t(rows) + 1 : INT32_MAX;
  cuda::check(moe_cuda_check_range_i32(counts.data<int32_t>(), counts.numel(), 0, hi, sc.status(), tag, sc.stream()),
              op, sc.device());
}

// The launcher flags MOE_EP_GG_KERNEL asks for, read at each call.
int kernel_flags(const char* op) {
  const char* v = std::getenv("MOE_EP_GG_KERNEL");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return 0;
  if (std::strcmp(v, "sm80") == 0) return MOE_CUDA_GG_FORCE_SM80;
  fail(Code::Value, std::string(op) + ": expected MOE_EP_GG_KERNEL to be auto or sm80 but received \"" + v + "\"");
}

}  // namespace

Task<Tensor> grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& rows_per_expert, const Tensor& bias) {
  const char* op = "groupedGemm";
  const int dtype = gemm_dtype(op, x, w, x.dim(1), w.dim(2));
  if (bias.defined() && bias.dtype != x.dtype)
    fail(Code::Unsupported, std::string(op) + ": on CUDA expected bias of dtype " + dtype_name(x.dtype) +
                                " but received " + dtype_name(bias.dtype));
  int32_t* counts = device_counts(op, rows_per_expert);
  const int flags = kernel_flags(op);
  return [x, w, rows_per_expert, bias, dtype, counts, flags, op] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    const int64_t rows = x.dim(0), k = x.dim(1), n = w.dim(2);
    const int experts = int(w.dim(0));
    check_counts(op, sc, rows_per_expert, rows);
    Tensor y = empty(x.dtype, {rows, n}, dev);
    Scratch ws(moe_cuda_grouped_gemm_workspace_bytes(experts), dev);
    cuda::check(moe_cuda_grouped_gemm(x.raw(), w.raw(), bias.defined() ? bias.raw() : nullptr, counts, y.raw(), rows,
                                      experts, k, n, dtype, flags, ws.at(0), ws.bytes(), nullptr, sc.stream()),
                op, dev);
    return y;
  };
}

Task<GroupedGemmGrads> grouped_gemm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                             const Tensor& rows_per_expert, GroupedGemmNeeds needs) {
  const char* op = "groupedGemmBackward";
  const int dtype = gemm_dtype(op, x, w, x.dim(1), w.dim(2), needs.dbias);
  gemm_dtype(op, dy, x, x.dim(1), w.dim(2));
  int32_t* counts = device_counts(op, rows_per_expert);
  const int flags = kernel_flags(op);
  return [dy, x, w, rows_per_expert, needs, dtype, counts, flags, op] {
    const Device dev = x.device();
    cuda::Scope sc(dev);
    const int64_t rows = x.dim(0), k = x.dim(1), n = w.dim(2);
    const int experts = int(w.dim(0));
    check_counts(op, sc, rows_per_expert, rows);
    Scratch ws(moe_cuda_grouped_gemm_workspace_bytes(experts), dev);
    GroupedGemmGrads g;
    if (needs.dx) {
      g.dx = empty(x.dtype, x.shape, dev);
      cuda::check(moe_cuda_grouped_gemm_dx(dy.raw(), w.raw(), counts, g.dx.raw(), rows, experts, k, n, dtype, flags,
                                           ws.at(0), ws.bytes(), nullptr, sc.stream()),
                  op, dev);
    }
    if (needs.dw) {  // float32, as on the CPU
      g.dw = empty(DType::F32, w.shape, dev);
      cuda::check(moe_cuda_grouped_gemm_dw(x.raw(), dy.raw(), counts, g.dw.raw(), rows, experts, k, n, dtype,
                                           flags | MOE_CUDA_GG_OUT_F32, ws.at(0), ws.bytes(), nullptr, sc.stream()),
                  op, dev);
    }
    return g;
  };
}

}  // namespace cuda_path
}  // namespace moe::ops
