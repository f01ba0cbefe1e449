// permute and the row-map ops on CUDA tensors (see cuda_ops.h): the stable
// counting sort of cuda/permute.cu and the gathers of cuda/unpermute.cu.
#include <climits>

#include "../../cuda/launchers.h"
#include "../../cuda/permute_plan.h"
#include "cuda_ops.h"

namespace moe::ops::cuda_path {

namespace {

// The check of pairToRow entries outside [-1, rows): its tag, for the row
// kernels to report under (at the next synchronisation).
uint32_t row_map_tag(const cuda::Scope& sc, const char* op, int64_t rows) {
  return sc.add_check(
      Code::Value, std::string(op) + ": expected pairToRow entries in [-1, " + std::to_string(rows) + ") but element ",
      " is outside it (found on " + sc.device().str() + ")");
}

// The same check as a kernel of its own, for when no row kernel runs.
void check_row_map(const cuda::Scope& sc, const char* op, const Tensor& pair_to_row, int64_t rows, uint32_t tag) {
  const int32_t hi = rows < INT32_MAX ? int32_t(rows) : INT32_MAX;
  cuda::check(
      moe_cuda_check_range_i32(pair_to_row.data<int32_t>(), pair_to_row.numel(), -1, hi, sc.status(), tag, sc.stream()),
      op, sc.device());
}

}  // namespace

void check_permute_supported(int64_t num_experts) {
  if (num_experts > moe_cuda::kPermuteMaxExperts)
    fail(Code::Unsupported, "permute: expected numExperts <= " + std::to_string(moe_cuda::kPermuteMaxExperts) +
                                " on CUDA (the sort's histogram has a cell per expert and warp) but received " +
                                std::to_string(num_experts));
}

Task<Permuted> permute(const Tensor& x, const Tensor& indices, const Tensor& weights, const PermuteOptions& options,
                       int64_t capacity) {
  return [x, indices, weights, o = options, capacity] {
    const char* op = "permute";
    const Device dev = x.device();
    cuda::Scope sc(dev);
    const int64_t T = x.dim(0), D = x.dim(1), k = indices.dim(1), N = T * k;
    const int E = int(o.num_experts);
    const int policy = o.drop_policy == DropPolicy::Probs ? moe_cuda::kDropProbs : moe_cuda::kDropPosition;
    const std::string where = " (found on " + dev.str() + ")";
    const uint32_t tag = sc.add_check(
        Code::Value, "permute: expected indices in [0, numExperts) = [0, " + std::to_string(E) + ") but element ",
        " is outside it" + where);
    if (capacity >= 0 && o.drop_policy == DropPolicy::Probs) {
      const uint32_t finite = sc.add_check(
          Code::NonFinite, "permute: expected finite values in weights (the probs drop policy ranks them) but element ",
          " is not finite" + where);
      cuda::check(moe_cuda_check_finite(weights.raw(), MOE_CUDA_F32, N, sc.status(), finite, sc.stream()), op, dev);
    }

    size_t ws = 0;
    cuda::check(moe_cuda_permute_workspace_bytes(N, E, policy, capacity, &ws), op, dev);
    Scratch workspace(ws, dev);
    Permuted out;
    out.capacity = capacity;
    out.rows_per_expert = empty(DType::I32, {int64_t(E)}, dev);
    const int pad = o.pad_to_capacity ? 1 : 0;
    // With a capacity the row count depends on the data: it is read back once
    // the plan is made (the rows' work goes on meanwhile), which also reports
    // bad indices or weights as this op's error.
    std::unique_ptr<cuda::Readback> back;
    std::unique_ptr<Scratch> summary;
    if (capacity >= 0)
      back = std::make_unique<cuda::Readback>(dev);
    else
      summary = std::make_unique<Scratch>(3 * sizeof(int64_t), dev);
    int64_t* words = back ? back->device_words() : nullptr;
    cuda::check(moe_cuda_permute_plan(indices.data<int32_t>(), weights.data<float>(), N, E, capacity, policy, pad,
                                      out.rows_per_expert.data<int32_t>(),
                                      back ? words + 2 : static_cast<int64_t*>(summary->at(0)), sc.status(), tag,
                                      workspace.at(0), ws, words, back ? back->event() : nullptr, sc.stream()),
                op, dev);
    // Sized for the most rows the arguments allow (allocated while the plan
    // runs), so that the rows' work is enqueued before R is known; the first
    // R rows are the result.
    const int64_t max_rows = moe_cuda::permute_max_rows(N, E, capacity, o.pad_to_capacity);
    out.pair_to_row = empty(DType::I32, {T, k}, dev);
    out.row_to_pair = empty(DType::I32, {max_rows}, dev);
    out.rows = empty(x.dtype, {max_rows, D}, dev);
    cuda::check(moe_cuda_permute_rows(x.raw(), cuda::dtype_code(x.dtype), D, int(k), indices.data<int32_t>(),
                                      weights.data<float>(), N, E, capacity, policy, pad, workspace.at(0), ws, max_rows,
                                      out.pair_to_row.data<int32_t>(), out.row_to_pair.data<int32_t>(), out.rows.raw(),
                                      sc.stream()),
                op, dev);
    if (back) {
      const int64_t* host = back->wait();
      out.dropped = host[3];
      out.row_to_pair.shape = {host[2]};
      out.rows.shape = {host[2], D};
    }
    return out;
  };
}

Task<Tensor> permute_backward(const Tensor& d_rows, const Tensor& pair_to_row) {
  return [d_rows, pair_to_row] {
    const char* op = "permuteBackward";
    const Device dev = d_rows.device();
    cuda::Scope sc(dev);
    const int64_t R = d_rows.dim(0), D = d_rows.dim(1), T = pair_to_row.dim(0), k = pair_to_row.dim(1);
    const uint32_t tag = row_map_tag(sc, op, R);
    if (D == 0) check_row_map(sc, op, pair_to_row, R, tag);
    Tensor dx = empty(d_rows.dtype, {T, D}, dev);
    if (k == 0) {
      cuda::memset_async(dx.raw(), 0, dx.bytes(), dev);
      return dx;
    }
    cuda::check(
        moe_cuda_permute_backward(d_rows.raw(), cuda::dtype_code(d_rows.dtype), R, D, pair_to_row.data<int32_t>(), T,
                                  int(k), dx.raw(), sc.status(), tag, sc.stream()),
        op, dev);
    return dx;
  };
}

Task<Tensor> unpermute(const Tensor& rows, const Tensor& pair_to_row, const Tensor& weights) {
  return [rows, pair_to_row, weights] {
    const char* op = "unpermute";
    const Device dev = rows.device();
    cuda::Scope sc(dev);
    const int64_t R = rows.dim(0), D = rows.dim(1), T = pair_to_row.dim(0), k = pair_to_row.dim(1);
    const uint32_t tag = row_map_tag(sc, op, R);
    if (D == 0) check_row_map(sc, op, pair_to_row, R, tag);
    Tensor y = empty(rows.dtype, {T, D}, dev);
    if (k == 0) {
      cuda::memset_async(y.raw(), 0, y.bytes(), dev);
      return y;
    }
    cuda::check(moe_cuda_unpermute_forward(rows.raw(), cuda::dtype_code(rows.dtype), R, D, pair_to_row.data<int32_t>(),
                                           weights.data<float>(), T, int(k), y.raw(), sc.status(), tag, sc.stream()),
                op, dev);
    return y;
  };
}

Task<UnpermuteGrads> unpermute_backward(const Tensor& dy, const Tensor& rows, const Tensor& pair_to_row,
                                        const Tensor& weights) {
  return [dy, rows, pair_to_row, weights] {
    const char* op = "unpermuteBackward";
    const Device dev = rows.device();
    cuda::Scope sc(dev);
    const int64_t R = rows.dim(0), D = rows.dim(1), T = pair_to_row.dim(0), k = pair_to_row.dim(1);
    const uint32_t tag = row_map_tag(sc, op, R);
    if (D == 0 || R == 0) check_row_map(sc, op, pair_to_row, R, tag);
    UnpermuteGrads g{empty(rows.dtype, {R, D}, dev), empty(DType::F32, {T, k}, dev)};
    if (k == 0) {
      cuda::memset_async(g.d_rows.raw(), 0, g.d_rows.bytes(), dev);
      return g;
    }
    size_t ws = 0;
    cuda::check(moe_cuda_unpermute_backward_workspace_bytes(T * k, R, &ws), op, dev);
    Scratch workspace(ws, dev);
    cuda::check(
        moe_cuda_unpermute_backward(dy.raw(), cuda::dtype_code(dy.dtype), rows.raw(), cuda::dtype_code(rows.dtype), R,
                                    D, pair_to_row.data<int32_t>(), weights.data<float>(), T, int(k), g.d_rows.raw(),
                                    g.d_weights.data<float>(), workspace.at(0), ws,
                                    D == 0 || R == 0 ? nullptr : sc.status(), tag, sc.stream()),
        op, dev);
    return g;
  };
}

}  // namespace moe::ops::cuda_path
