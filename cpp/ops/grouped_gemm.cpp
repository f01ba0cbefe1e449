#include "grouped_gemm.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "../core/op_clock.h"
#include "../core/blas.h"
#include "../core/check.h"
#include "../core/floats.h"
#include "../core/parallel.h"
#include "../core/size.h"
#include "cuda_ops.h"

namespace moe::ops {

namespace {

struct Dims {
  int64_t rows, k, n, experts;
};

void check_fits_int(const char* op, const char* what, int64_t v) {
  if (v > INT_MAX)
    fail(Code::Shape, std::string(op) + ": expected " + what + " <= " + std::to_string(INT_MAX) + " but received " +
                          std::to_string(v));
}

Dims check_args(const char* op, const Tensor& x, const Tensor& w, const Tensor& counts) {
  check_float(op, "x", x);
  check_shape(op, "x", x, {-1, -1}, "[R, K]");
  check_float(op, "w", w);
  check_shape(op, "w", w, {-1, x.dim(1), -1}, "[L, K, N]");
  check_dtype(op, "rowsPerExpert", counts, {DType::I32, DType::I64});
  check_shape(op, "rowsPerExpert", counts, {w.dim(0)}, "[L]");
  check_same_device(op, {{"x", &x}, {"w", &w}, {"rowsPerExpert", &counts}});
  Dims d{x.dim(0), x.dim(1), w.dim(2), w.dim(0)};
  check_fits_int(op, "R", d.rows);
  check_fits_int(op, "K", d.k);
  check_fits_int(op, "N", d.n);
  checked_mul(op, "y [R, N] elements", d.rows, d.n);
  return d;
}

// Row offsets of each expert (size L + 1), read from the counts when the task runs:
// a negative count or counts that do not add up to R are the data's fault.
std::vector<int64_t> expert_offsets(const char* op, const Tensor& counts, int64_t rows) {
  const int64_t experts = counts.numel();
  std::vector<int64_t> off(size_t(experts) + 1, 0);
  for (int64_t e = 0; e < experts; ++e) {
    int64_t c = counts.dtype == DType::I32 ? int64_t(counts.data<int32_t>()[e]) : counts.data<int64_t>()[e];
    if (c < 0)
      fail(Code::Value, std::string(op) + ": expected rowsPerExpert >= 0 but expert " + std::to_string(e) + " has " +
                            std::to_string(c));
    if (c > rows - off[size_t(e)]) {  // reported below, before any sum can overflow
      off[size_t(experts)] = -1;
      break;
    }
    off[size_t(e) + 1] = off[size_t(e)] + c;
  }
  if (off[size_t(experts)] != rows) {
    int64_t sum = 0;
    bool over = false;
    for (int64_t e = 0; e < experts && !over; ++e)
      over = __builtin_add_overflow(
          sum, counts.dtype == DType::I32 ? int64_t(counts.data<int32_t>()[e]) : counts.data<int64_t>()[e], &sum);
    fail(Code::Value, std::string(op) + ": expected rowsPerExpert to sum to the rows of x (" + std::to_string(rows) +
                          ") but they sum to " + (over ? "more than 2^63-1" : std::to_string(sum)));
  }
  return off;
}

}  // namespace

Task<Tensor> grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& counts, const Tensor& bias) {
  const char* op = "groupedGemm";
  Dims d = check_args(op, x, w, counts);
  if (bias.defined()) {
    check_float(op, "bias", bias);
    check_shape(op, "bias", bias, {d.experts, d.n}, "[L, N]");
    check_same_device(op, {{"x", &x}, {"bias", &bias}});
  }
  if (x.device().kind == Device::CUDA) return cuda_path::grouped_gemm(x, w, counts, bias);
  return [x, w, counts, bias, d, op] {
    OpTimer timer("groupedGemm");
    std::vector<int64_t> off = expert_offsets(op, counts, d.rows);
    const int k = int(d.k), n = int(d.n);
    Tensor y = empty(x.dtype, {d.rows, d.n});
    F32Read xf(x), wf(w);
    F32Write yf(y);
    float* yp = yf.data();
    if (bias.defined()) {
      // Y starts as the bias row of each row's expert; the GEMM then adds X_e · W_e (beta = 1).
      F32Read bf(bias);
      const float* bp = bf.data();
      parallel_for(d.rows, 64, [&](int64_t r0, int64_t r1) {
        int64_t e = std::upper_bound(off.begin(), off.end(), r0) - off.begin() - 1;
        for (int64_t r = r0; r < r1; ++r) {
          while (r >= off[size_t(e) + 1]) ++e;
          std::copy(bp + e * d.n, bp + (e + 1) * d.n, yp + r * d.n);
        }
      });
    }
    const float beta = bias.defined() ? 1.0f : 0.0f;
    for (int64_t e = 0; e < d.experts; ++e) {
      const int64_t r0 = off[size_t(e)];
      const int m = int(off[size_t(e) + 1] - r0);
      sgemm(false, false, m, n, k, 1.0f, xf.data() + r0 * d.k, k, wf.data() + e * d.k * d.n, n, beta, yp + r0 * d.n, n);
    }
    yf.commit();
    return y;
  };
}

Task<GroupedGemmGrads> grouped_gemm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& counts,
                                             GroupedGemmNeeds needs) {
  const char* op = "groupedGemmBackward";
  Dims d = check_args(op, x, w, counts);
  check_float(op, "dy", dy);
  check_shape(op, "dy", dy, {d.rows, d.n}, "[R, N]");
  check_same_device(op, {{"x", &x}, {"dy", &dy}});
  if (needs.dw_into.defined()) {
    check_dtype(op, "dwInto", needs.dw_into, {DType::F32});
    check_shape(op, "dwInto", needs.dw_into, w.shape, "like w");
    check_same_device(op, {{"x", &x}, {"dwInto", &needs.dw_into}});
  } else if (needs.accumulate) {
    fail(Code::Value, std::string(op) + ": expected dwInto with accumulate but received none");
  }
  if (x.device().kind == Device::CUDA) {
    if (!needs.dw_into.defined() || !needs.dw) return cuda_path::grouped_gemm_backward(dy, x, w, counts, needs);
    // The CUDA kernels write a fresh dW; it lands in dw_into on the same stream.
    auto grads = cuda_path::grouped_gemm_backward(dy, x, w, counts, needs);
    return [grads, needs] {
      GroupedGemmGrads g = grads();
      cuda_path::axpby(needs.dw_into, g.dw, needs.accumulate ? 1.0f : 0.0f, 1.0f)();
      g.dw = needs.dw_into;
      return g;
    };
  }
  return [dy, x, w, counts, d, needs, op] {
    std::vector<int64_t> off = expert_offsets(op, counts, d.rows);
    const int k = int(d.k), n = int(d.n);
    GroupedGemmGrads g;
    F32Read dyf(dy);
    if (needs.dx) {
      OpTimer timer("groupedGemmBackward.dx");
      F32Read wf(w);
      g.dx = empty(x.dtype, x.shape);
      F32Write dx(g.dx);
      for (int64_t e = 0; e < d.experts; ++e) {
        const int64_t r0 = off[size_t(e)];
        const int m = int(off[size_t(e) + 1] - r0);
        sgemm(false, true, m, k, n, 1.0f, dyf.data() + r0 * d.n, n, wf.data() + e * d.k * d.n, n, 0.0f,
              dx.data() + r0 * d.k, k);
      }
      dx.commit();
    }
    if (needs.dw) {
      OpTimer timer("groupedGemmBackward.dw");
      F32Read xf(x);
      g.dw = needs.dw_into.defined() ? needs.dw_into : empty(DType::F32, w.shape);
      float* dw = g.dw.data<float>();
      const float beta = needs.accumulate ? 1.0f : 0.0f;
      for (int64_t e = 0; e < d.experts; ++e) {
        const int64_t r0 = off[size_t(e)];
        // m == 0 writes zeros, or leaves the sum alone (moe::sgemm's k == 0 case)
        const int m = int(off[size_t(e) + 1] - r0);
        sgemm(true, false, k, n, m, 1.0f, xf.data() + r0 * d.k, k, dyf.data() + r0 * d.n, n, beta, dw + e * d.k * d.n,
              n);
      }
    }
    if (needs.dbias) {
      OpTimer timer("groupedGemmBackward.dbias");
      g.dbias = empty(DType::F32, {d.experts, d.n});
      float* db = g.dbias.data<float>();
      const float* dyp = dyf.data();
      // One (expert, column block) per index, rows summed in order: the result never depends on threads.
      constexpr int64_t kCols = 256;
      const int64_t blocks = (d.n + kCols - 1) / kCols;
      parallel_for(d.experts * blocks, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t e = i / blocks, c0 = (i % blocks) * kCols, c1 = std::min(d.n, c0 + kCols);
          float* out = db + e * d.n;
          std::fill(out + c0, out + c1, 0.0f);
          for (int64_t r = off[size_t(e)]; r < off[size_t(e) + 1]; ++r) {
            const float* row = dyp + r * d.n;
            for (int64_t c = c0; c < c1; ++c) out[c] += row[c];
          }
        }
      });
    }
    return g;
  };
}

}  // namespace moe::ops
