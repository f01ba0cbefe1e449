// What every process group offers, whichever engine moves the data: Gloo for
// CPU tensors (gloo_group.h), NCCL for CUDA tensors (nccl_group.h). The binding
// holds groups through this interface, so both backends share one JS handle.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../core/task.h"
#include "store.h"

namespace moe::comm {

enum class ReduceOp { Sum, Avg, Max };
// "sum", "avg", "max"; ERR_MOE_VALUE otherwise.
ReduceOp parse_reduce_op(const std::string& name);
const char* reduce_op_name(ReduceOp op);

struct AllToAllVResult {
  Tensor output;
  std::vector<int64_t> recv_counts;
};

// allToAllV's rows cut into chunks, for the MoE dispatcher's regrouping by expert (empty: no
// chunks on that side). send [L, P], row-major: x holds, chunk-major, the rows of chunk l for
// rank p (chunk 0 for every rank in rank order, then chunk 1...); rank p receives its L chunks in
// chunk order. recv [P, L]: the rows of chunk l from rank p; the output holds them chunk-major.
// Both are what chunkTranspose would do before and after a plain allToAllV.
struct AllToAllVChunks {
  std::vector<int64_t> send, recv;
};

struct Unit {};

struct AllGatherVResult {
  Tensor output;
  std::vector<int64_t> counts;  // the rows each rank contributed, in rank order
};

// "0, 2, 3": ranks as messages show them.
std::string join(const std::vector<int>& ranks);
// A stable hash of shape[from:], so ranks can compare row shapes in a fixed-size descriptor.
int64_t shape_hash(const Shape& shape, size_t from);
// newGroup's checks: members ascending, distinct, in [0, size), holding `rank`;
// returns this rank's index among them.
int check_members(const char* op, const std::vector<int>& members, int size, int rank);

// allToAllV's argument checks, shared by every backend: x [rows, ...], one
// non-negative count per rank summing to rows, and the same shape for `expected`.
void check_all_to_all_v_args(const char* op, const Tensor& x, const std::vector<int64_t>& send_counts,
                             const std::optional<std::vector<int64_t>>& expected, const std::vector<int>& world_ranks);

// The chunks against the counts: send's column sums are send_counts, recv's row sums the
// expected counts (which recv needs); each a whole number of chunks per rank, none negative.
void check_all_to_all_v_chunks(const char* op, const AllToAllVChunks& chunks, const std::vector<int64_t>& send_counts,
                               const std::optional<std::vector<int64_t>>& expected, int size);

// reduceScatterV's argument checks: one non-negative count per rank, summing to x's rows.
void check_reduce_scatter_v_args(const char* op, const Tensor& x, const std::vector<int64_t>& counts, int size);
// A stable hash of the counts and x's row shape, so ranks can compare them in one descriptor field.
int64_t counts_hash(const std::vector<int64_t>& counts, const Shape& shape);

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's ranks as ranks of the world (for messages).
  virtual const std::vector<int>& world_ranks() const = 0;
  virtual Millis timeout() const = 0;
  virtual const std::string& name() const = 0;
  // The address this rank's connections bind to ("" where the engine picks its own).
  virtual std::string address() const = 0;
  // The device whose tensors the group moves.
  virtual Device device() const = 0;
  virtual bool destroyed() const = 0;
  // The fault that broke the group, if any: code and message.
  virtual std::optional<std::pair<Code, std::string>> fault() const = 0;

  // Runs work on the group's thread, in order.
  virtual void submit(std::function<void()> work) = 0;
  // The rendezvous; resolves once every rank has connected.
  virtual Task<Unit> connect() = 0;
  // A sub-group of this group's ranks `members` (ascending, holding this rank); only members call it.
  virtual std::shared_ptr<ProcessGroup> new_group(const std::vector<int>& members, std::optional<Millis> timeout) = 0;

  // x [rows, ...]: send_counts[p] rows go to rank p; counts are exchanged first, and with
  // `expected` every rank fails with ERR_MOE_COUNT_MISMATCH on a disagreement. Output rows
  // ordered by source rank.
  virtual Task<AllToAllVResult> all_to_all_v(const Tensor& x, std::vector<int64_t> send_counts,
                                             std::optional<std::vector<int64_t>> expected) = 0;
  // all_to_all_v with its rows in chunks (AllToAllVChunks); engines without it refuse.
  virtual Task<AllToAllVResult> all_to_all_v_chunks(const Tensor& x, std::vector<int64_t> send_counts,
                                                    std::optional<std::vector<int64_t>> expected,
                                                    AllToAllVChunks chunks) {
    fail(Code::Unsupported, "allToAllV: this process group takes no sendChunks or recvChunks");
  }
  virtual Task<Tensor> all_to_all(const Tensor& x) = 0;
  // Whether all_to_all_v moves its rows through shared memory (ranks of one machine).
  virtual bool shared_memory() const { return false; }
  // x [rows, ...] from every rank (rows may differ): the counts are exchanged first, then every
  // rank receives every rank's rows, concatenated in rank order.
  virtual Task<AllGatherVResult> all_gather_v(const Tensor& x) = 0;
  // x [sum(counts), ...] on every rank, cut by counts (the same on every rank): rank p receives the
  // sum over ranks of their chunk p, [counts[p], ...]. Float and integer dtypes; ranks that
  // disagree on the counts fail with ERR_MOE_COUNT_MISMATCH before data moves.
  virtual Task<Tensor> reduce_scatter_v(const Tensor& x, std::vector<int64_t> counts) = 0;
  virtual Task<Unit> all_reduce(const Tensor& t, ReduceOp op) = 0;  // in place
  virtual Task<Unit> broadcast(const Tensor& t, int root) = 0;      // in place
  virtual Task<Unit> barrier() = 0;

  // Ends the group: later calls fail with ERR_MOE_DISPOSED.
  virtual void destroy() = 0;
};

}  // namespace moe::comm
