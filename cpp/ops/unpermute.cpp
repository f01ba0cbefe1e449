#include "unpermute.h"

#include <algorithm>
#include <vector>

#include "../core/op_clock.h"
#include "../core/check.h"
#include "../core/floats.h"
#include "../core/parallel.h"
#include "../core/size.h"
#include "cuda_ops.h"
#include "permute.h"

namespace moe::ops {

namespace {

// Items per parallel chunk so that a chunk touches about 64 KiB.
int64_t grain_for(int64_t bytes_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, bytes_per_item));
}
int64_t grain_for(int64_t a, int64_t b, int64_t c) { return grain_for(saturating_mul(saturating_mul(a, b), c)); }

void check_unpermute_args(const char* op, const Tensor& rows, const Tensor& pair_to_row, const Tensor& weights) {
  check_float(op, "rows", rows);
  check_shape(op, "rows", rows, {-1, -1}, "[rows, dModel]");
  check_dtype(op, "pairToRow", pair_to_row, {DType::I32});
  check_shape(op, "pairToRow", pair_to_row, {-1, -1}, "[tokens, topK]");
  check_dtype(op, "weights", weights, {DType::F32});
  check_shape(op, "weights", weights, {pair_to_row.dim(0), pair_to_row.dim(1)}, "[tokens, topK]");
}

// Eight running sums in a fixed order: vectorisable, and the same bits on every run.
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail;
}

}  // namespace

Task<Tensor> unpermute(const Tensor& rows, const Tensor& pair_to_row, const Tensor& weights) {
  check_unpermute_args("unpermute", rows, pair_to_row, weights);
  check_same_device("unpermute", {{"rows", &rows}, {"pairToRow", &pair_to_row}, {"weights", &weights}});
  checked_mul("unpermute", "y [tokens, dModel] elements", pair_to_row.dim(0), rows.dim(1));
  if (rows.device().kind == Device::CUDA) return cuda_path::unpermute(rows, pair_to_row, weights);
  return [rows, pair_to_row, weights] {
    OpTimer timer("unpermute");
    const int64_t R = rows.dim(0), D = rows.dim(1), T = pair_to_row.dim(0), k = pair_to_row.dim(1);
    const int32_t* p2r = pair_to_row.data<int32_t>();
    check_row_map("unpermute", p2r, T * k, R);
    Tensor y = empty(rows.dtype, {T, D});
    if (D == 0) return y;  // no work, however many tokens the shape claims
    const float* w = weights.data<float>();
    F32Read in(rows);
    F32Write out(y);
    const float* src = in.data();
    float* dst = out.data();
    // One token per index: its output row is summed in choice order by one thread.
    parallel_for(T, grain_for(D, k, 4), [&](int64_t b, int64_t end) {
      for (int64_t t = b; t < end; ++t) {
        float* o = dst + t * D;
        bool any = false;
        for (int64_t j = 0; j < k; ++j) {
          int32_t r = p2r[t * k + j];
          if (r < 0) continue;
          const float* s = src + int64_t(r) * D;
          const float wj = w[t * k + j];
          if (any)
            for (int64_t d = 0; d < D; ++d) o[d] += wj * s[d];
          else
            for (int64_t d = 0; d < D; ++d) o[d] = wj * s[d];
          any = true;
        }
        if (!any) std::fill(o, o + D, 0.0f);
      }
    });
    out.commit();
    return y;
  };
}

Task<UnpermuteGrads> unpermute_backward(const Tensor& dy, const Tensor& rows, const Tensor& pair_to_row,
                                        const Tensor& weights) {
  const char* op = "unpermuteBackward";
  check_unpermute_args(op, rows, pair_to_row, weights);
  check_float(op, "dy", dy);
  check_shape(op, "dy", dy, {pair_to_row.dim(0), rows.dim(1)}, "[tokens, dModel]");
  check_same_device(op, {{"dy", &dy}, {"rows", &rows}, {"pairToRow", &pair_to_row}, {"weights", &weights}});
  if (rows.device().kind == Device::CUDA) return cuda_path::unpermute_backward(dy, rows, pair_to_row, weights);
  return [dy, rows, pair_to_row, weights] {
    OpTimer timer("unpermuteBackward");
    const int64_t R = rows.dim(0), D = rows.dim(1), T = pair_to_row.dim(0), k = pair_to_row.dim(1), N = T * k;
    const int32_t* p2r = pair_to_row.data<int32_t>();
    check_row_map("unpermuteBackward", p2r, N, R);
    // No work and no scratch sized by R, however many rows the shape claims.
    if (D == 0) return UnpermuteGrads{empty(rows.dtype, {R, 0}), zeros(DType::F32, {T, k})};
    const float* w = weights.data<float>();

    // The pairs that read each row, in flat order (a counting sort by row), so every
    // gradient row is summed by one thread in a fixed order even if a map repeats a row.
    std::vector<int64_t> first(size_t(R) + 1, 0);
    for (int64_t i = 0; i < N; ++i)
      if (p2r[i] >= 0) ++first[size_t(p2r[i]) + 1];
    for (int64_t r = 0; r < R; ++r) first[r + 1] += first[r];
    std::vector<int32_t> readers(static_cast<size_t>(first[R]));
    {
      std::vector<int64_t> next(first.begin(), first.end() - 1);
      for (int64_t i = 0; i < N; ++i)
        if (p2r[i] >= 0) readers[size_t(next[size_t(p2r[i])]++)] = int32_t(i);
    }

    F32Read g(dy), in(rows);
    const float* gp = g.data();
    const float* rp = in.data();
    UnpermuteGrads out{empty(rows.dtype, {R, D}), empty(DType::F32, {T, k})};
    F32Write drows(out.d_rows);
    float* dr = drows.data();
    float* dw = out.d_weights.data<float>();
    for (int64_t i = 0; i < N; ++i)
      if (p2r[i] < 0) dw[i] = 0.0f;  // dropped pairs; every other pair is one row's reader below
    // One sweep over the rows: each row's gradient, and the weight gradient of each pair that
    // reads it while the row is in cache.
    parallel_for(R, grain_for(D, 6, 1), [&](int64_t b, int64_t end) {
      for (int64_t r = b; r < end; ++r) {
        float* o = dr + r * D;
        const float* row = rp + r * D;
        if (first[r] == first[r + 1]) std::fill(o, o + D, 0.0f);
        for (int64_t q = first[r]; q < first[r + 1]; ++q) {
          const int32_t pair = readers[size_t(q)];
          const float* s = gp + (pair / k) * D;
          const float wj = w[pair];
          if (q == first[r])
            for (int64_t d = 0; d < D; ++d) o[d] = wj * s[d];
          else
            for (int64_t d = 0; d < D; ++d) o[d] += wj * s[d];
          dw[pair] = dot(s, row, D);
        }
      }
    });
    drows.commit();
    return out;
  };
}

}  // namespace moe::ops
