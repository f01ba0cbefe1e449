#include "permute.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../core/op_clock.h"
#include "../core/check.h"
#include "../core/host_allocator.h"
#include "../core/floats.h"
#include "../core/parallel.h"
#include "../core/size.h"
#include "cuda_ops.h"

namespace moe::ops {

namespace {

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();  // row maps are int32

// Rows per parallel chunk so that a chunk moves about 64 KiB.
int64_t row_grain(int64_t row_bytes) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, row_bytes));
}

// Rows per chunk when each row moves `factors` multiplied together bytes (saturating: an estimate).
int64_t row_grain(int64_t a, int64_t b, int64_t c) { return row_grain(saturating_mul(saturating_mul(a, b), c)); }

void check_permute_args(const Tensor& x, const Tensor& indices, const Tensor& weights, const PermuteOptions& o) {
  const char* op = "permute";
  check_float(op, "x", x);
  check_shape(op, "x", x, {-1, -1}, "[tokens, dModel]");
  check_dtype(op, "indices", indices, {DType::I32});
  check_shape(op, "indices", indices, {x.dim(0), -1}, "[tokens, topK]");
  if (indices.dim(1) < 1)
    fail(Code::Shape, std::string(op) + ": expected indices of shape [tokens, topK] with topK >= 1 but received " +
                          shape_str(indices.shape));
  check_dtype(op, "weights", weights, {DType::F32});
  check_shape(op, "weights", weights, {x.dim(0), indices.dim(1)}, "[tokens, topK]");
  check_same_device(op, {{"x", &x}, {"indices", &indices}, {"weights", &weights}});
  check_option(op, "numExperts", o.num_experts >= 1 && o.num_experts <= kMaxIndex, "an integer in [1, 2147483647]",
               std::to_string(o.num_experts));
  if (o.capacity_factor)
    check_option(op, "capacityFactor", std::isfinite(*o.capacity_factor) && *o.capacity_factor > 0,
                 "a finite number > 0", num_str(*o.capacity_factor));
  check_option(op, "minCapacity", o.min_capacity >= 0 && o.min_capacity <= kMaxIndex, "an integer in [0, 2147483647]",
               std::to_string(o.min_capacity));
  check_option(op, "padToCapacity", !o.pad_to_capacity || o.capacity_factor.has_value(),
               "false when no capacityFactor is given (padding needs a capacity)", "true");
  const int64_t pairs = x.dim(0) * indices.dim(1);
  check_option(op, "tokens * topK", pairs <= kMaxIndex, "at most 2147483647 (row maps are int32)",
               std::to_string(pairs));
}

// The kept choices of one over-full expert under "probs": the C largest weights,
// ties to the lower flat index t * k + j (lower token, then lower choice), kept
// in flat order. `seg` holds the expert's flat indices in flat order.
void keep_largest(int32_t* seg, int64_t count, int64_t capacity, const float* w) {
  std::vector<int32_t> order(seg, seg + count);
  auto before = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  std::nth_element(order.begin(), order.begin() + capacity, order.end(), before);
  std::sort(order.begin(), order.begin() + capacity);
  std::copy(order.begin(), order.begin() + capacity, seg);
}

// The kept choices of one over-full expert under "choice": the first C in (choice, token) order,
// kept in flat order.
void keep_by_choice(int32_t* seg, int64_t count, int64_t capacity, int64_t k) {
  std::vector<int32_t> order(seg, seg + count);
  std::stable_sort(order.begin(), order.end(), [k](int32_t a, int32_t b) { return a % k < b % k; });
  std::sort(order.begin(), order.begin() + capacity);
  std::copy(order.begin(), order.begin() + capacity, seg);
}

}  // namespace

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "probs") return DropPolicy::Probs;
  if (name == "position") return DropPolicy::Position;
  if (name == "choice") return DropPolicy::Choice;
  fail(Code::Value, "permute: expected dropPolicy \"probs\", \"position\" or \"choice\" but received \"" + name + "\"");
}

int64_t expert_capacity(int64_t tokens, int64_t top_k, int64_t num_experts, double capacity_factor,
                        int64_t min_capacity) {
  double c = std::max(std::ceil((double(tokens) * double(top_k) / double(num_experts)) * capacity_factor),
                      double(min_capacity));
  if (!(c <= double(kMaxIndex)))
    fail(Code::Value, "permute: expected a capacity of at most 2147483647 rows per expert but capacityFactor " +
                          num_str(capacity_factor) + " gives " + num_str(c));
  return int64_t(c);
}

void check_row_map(const char* op, const int32_t* pair_to_row, int64_t pairs, int64_t rows) {
  for (int64_t i = 0; i < pairs; ++i)
    if (pair_to_row[i] < -1 || pair_to_row[i] >= rows)
      fail(Code::Value, std::string(op) + ": expected pairToRow entries in [-1, " + std::to_string(rows) +
                            ") but element " + std::to_string(i) + " is " + std::to_string(pair_to_row[i]));
}

Task<Permuted> permute(const Tensor& x, const Tensor& indices, const Tensor& weights, const PermuteOptions& options) {
  check_permute_args(x, indices, weights, options);
  const int64_t capacity = options.capacity_factor ? expert_capacity(x.dim(0), indices.dim(1), options.num_experts,
                                                                     *options.capacity_factor, options.min_capacity)
                                                   : -1;
  if (options.pad_to_capacity && capacity * options.num_experts > kMaxIndex)
    fail(Code::Value, "permute: expected numExperts * capacity <= 2147483647 padded rows but received " +
                          std::to_string(options.num_experts) + " * " + std::to_string(capacity));
  if (x.device().kind == Device::CUDA) {
    if (options.drop_policy == DropPolicy::Choice && capacity >= 0)
      fail(Code::Unsupported,
           "permute: expected dropPolicy \"probs\" or \"position\" on CUDA (\"choice\" is CPU only)");
    cuda_path::check_permute_supported(options.num_experts);
    return cuda_path::permute(x, indices, weights, options, capacity);
  }
  const PermuteOptions o = options;
  return [x, indices, weights, o, capacity] {
    OpTimer timer("permute");
    const int64_t T = x.dim(0), D = x.dim(1), k = indices.dim(1), E = o.num_experts, N = T * k;
    const int32_t* idx = indices.data<int32_t>();
    const float* w = weights.data<float>();
    for (int64_t i = 0; i < N; ++i)
      if (idx[i] < 0 || idx[i] >= E)
        fail(Code::Value, "permute: expected indices in [0, numExperts) = [0, " + std::to_string(E) + ") but element " +
                              std::to_string(i) + " (token " + std::to_string(i / k) + ", choice " +
                              std::to_string(i % k) + ") is " + std::to_string(idx[i]));
    const bool by_probs = capacity >= 0 && o.drop_policy == DropPolicy::Probs;
    if (by_probs) check_finite("permute", "weights (the probs drop policy ranks them)", w, N);

    // Counting sort by expert (histogram, prefix sum, scatter): stable, so each
    // expert's pairs stay in flat order t * k + j.
    std::vector<int64_t> start(size_t(E) + 1, 0);
    for (int64_t i = 0; i < N; ++i) ++start[size_t(idx[i]) + 1];
    for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
    std::vector<int32_t> sorted(static_cast<size_t>(N));
    {
      std::vector<int64_t> next(start.begin(), start.end() - 1);
      for (int64_t i = 0; i < N; ++i) sorted[size_t(next[size_t(idx[i])]++)] = int32_t(i);
    }

    // Capacity: each expert keeps at most C of its pairs, moved to the front of its segment.
    std::vector<int64_t> kept(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      int64_t count = start[e + 1] - start[e];
      kept[e] = capacity >= 0 ? std::min(count, capacity) : count;
    }
    if (by_probs)
      parallel_for(E, 1, [&](int64_t b, int64_t end) {
        for (int64_t e = b; e < end; ++e) {
          int64_t count = start[e + 1] - start[e];
          if (count > kept[e]) keep_largest(sorted.data() + start[e], count, kept[e], w);
        }
      });
    if (capacity >= 0 && o.drop_policy == DropPolicy::Choice)
      parallel_for(E, 1, [&](int64_t b, int64_t end) {
        for (int64_t e = b; e < end; ++e) {
          int64_t count = start[e + 1] - start[e];
          if (count > kept[e]) keep_by_choice(sorted.data() + start[e], count, kept[e], k);
        }
      });

    Permuted out;
    out.capacity = capacity;
    out.rows_per_expert = empty(DType::I32, {E});
    int32_t* per_expert = out.rows_per_expert.data<int32_t>();
    int64_t R = 0;
    std::vector<int64_t> row_start(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      int64_t n = o.pad_to_capacity ? capacity : kept[e];
      per_expert[e] = int32_t(n);
      row_start[e] = R;
      R += n;
      out.dropped += start[e + 1] - start[e] - kept[e];
    }

    out.pair_to_row = empty(DType::I32, {T, k});
    out.row_to_pair = empty(DType::I32, {R});
    int32_t* p2r = out.pair_to_row.data<int32_t>();
    int32_t* r2p = out.row_to_pair.data<int32_t>();
    std::fill(p2r, p2r + N, -1);
    std::fill(r2p, r2p + R, -1);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < kept[e]; ++i) {
        int32_t pair = sorted[size_t(start[e] + i)];
        int64_t row = row_start[e] + i;
        p2r[pair] = int32_t(row);
        r2p[row] = pair;
      }

    // The rows themselves: one memcpy per row, in x's dtype (exact), zeros for padding.
    out.rows = empty(x.dtype, {R, D});
    const size_t row_bytes = size_t(D) * dtype_size(x.dtype);
    const char* src = static_cast<const char*>(x.raw());
    char* dst = static_cast<char*>(out.rows.raw());
    int64_t padding = R;
    for (int64_t e = 0; e < E; ++e) padding -= kept[e];
    note_zeroed(size_t(padding) * row_bytes);
    parallel_for(R, row_grain(int64_t(row_bytes)), [&](int64_t b, int64_t end) {
      for (int64_t r = b; r < end; ++r) {
        if (r2p[r] < 0)
          std::memset(dst + size_t(r) * row_bytes, 0, row_bytes);
        else
          std::memcpy(dst + size_t(r) * row_bytes, src + size_t(r2p[r] / k) * row_bytes, row_bytes);
      }
    });
    return out;
  };
}

Task<Tensor> permute_backward(const Tensor& d_rows, const Tensor& pair_to_row) {
  const char* op = "permuteBackward";
  check_float(op, "dRows", d_rows);
  check_shape(op, "dRows", d_rows, {-1, -1}, "[rows, dModel]");
  check_dtype(op, "pairToRow", pair_to_row, {DType::I32});
  check_shape(op, "pairToRow", pair_to_row, {-1, -1}, "[tokens, topK]");
  check_same_device(op, {{"dRows", &d_rows}, {"pairToRow", &pair_to_row}});
  checked_mul(op, "dx [tokens, dModel] elements", pair_to_row.dim(0), d_rows.dim(1));
  if (d_rows.device().kind == Device::CUDA) return cuda_path::permute_backward(d_rows, pair_to_row);
  return [d_rows, pair_to_row] {
    OpTimer timer("permuteBackward");
    const int64_t R = d_rows.dim(0), D = d_rows.dim(1), T = pair_to_row.dim(0), k = pair_to_row.dim(1);
    const int32_t* p2r = pair_to_row.data<int32_t>();
    check_row_map("permuteBackward", p2r, T * k, R);
    if (D == 0) return empty(d_rows.dtype, {T, 0});  // no work, however many tokens the shape claims
    F32Read g(d_rows);
    Tensor dx = empty(d_rows.dtype, {T, D});
    F32Write out(dx);
    const float* gp = g.data();
    float* op_ = out.data();
    // Each token sums its own kept rows in choice order: no two chunks write the same row.
    parallel_for(T, row_grain(D, k, 4), [&](int64_t b, int64_t end) {
      for (int64_t t = b; t < end; ++t) {
        float* o = op_ + t * D;
        bool any = false;
        for (int64_t j = 0; j < k; ++j) {
          int32_t r = p2r[t * k + j];
          if (r < 0) continue;
          const float* s = gp + int64_t(r) * D;
          if (any)
            for (int64_t d = 0; d < D; ++d) o[d] += s[d];
          else
            std::copy(s, s + D, o);
          any = true;
        }
        if (!any) std::fill(o, o + D, 0.0f);
      }
    });
    out.commit();
    return dx;
  };
}

}  // namespace moe::ops
