#include "process_group.h"

#include <algorithm>

namespace moe::comm {

ReduceOp parse_reduce_op(const std::string& name) {
  if (name == "sum") return ReduceOp::Sum;
  if (name == "avg") return ReduceOp::Avg;
  if (name == "max") return ReduceOp::Max;
  fail(Code::Value, "allReduce: expected op \"sum\", \"avg\" or \"max\" but received \"" + name + "\"");
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Avg:
      return "avg";
    case ReduceOp::Max:
      return "max";
  }
  return "?";
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

int64_t shape_hash(const Shape& s, size_t from) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = from; i < s.size(); ++i) {
    h ^= uint64_t(s[i]);
    h *= 1099511628211ull;
  }
  return int64_t(h & 0x7fffffffffffffffull);
}

int check_members(const char* op, const std::vector<int>& members, int size, int rank) {
  if (members.empty()) fail(Code::Value, std::string(op) + ": expected at least one rank");
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] < 0 || members[i] >= size) {
      fail(Code::Value, std::string(op) + ": expected ranks in [0, " + std::to_string(size) + ") but received " +
                            std::to_string(members[i]));
    }
    if (i && members[i] <= members[i - 1]) {
      fail(Code::Value, std::string(op) + ": expected ascending, distinct ranks but received [" + join(members) + "]");
    }
  }
  auto at = std::find(members.begin(), members.end(), rank);
  if (at == members.end()) {
    fail(Code::Value, std::string(op) + ": only the members call it, and this rank (" + std::to_string(rank) +
                          ") is not in [" + join(members) + "]");
  }
  return int(at - members.begin());
}

void check_all_to_all_v_args(const char* op, const Tensor& x, const std::vector<int64_t>& send_counts,
                             const std::optional<std::vector<int64_t>>& expected, const std::vector<int>& world_ranks) {
  if (x.ndim() < 1) fail(Code::Shape, std::string(op) + ": expected x [rows, ...] but received a scalar");
  const int n = int(world_ranks.size());
  auto check_counts = [&](const std::vector<int64_t>& c, const char* what) {
    if (int(c.size()) != n) {
      fail(Code::Value, std::string(op) + ": expected " + what + " to hold one count per rank (" + std::to_string(n) +
                            ") but received " + std::to_string(c.size()));
    }
    for (int p = 0; p < n; ++p) {
      if (c[size_t(p)] < 0) {
        fail(Code::Value, std::string(op) + ": expected " + what + " >= 0 but received " +
                              std::to_string(c[size_t(p)]) + " for rank " + std::to_string(world_ranks[size_t(p)]));
      }
    }
  };
  check_counts(send_counts, "sendCounts");
  int64_t total = 0;
  bool over = false;
  for (int64_t c : send_counts) over = over || __builtin_add_overflow(total, c, &total);
  if (over || total != x.dim(0)) {
    fail(Code::Value, std::string(op) + ": expected sendCounts to sum to the rows of x (" + std::to_string(x.dim(0)) +
                          ") but they sum to " + (over ? "more than 2^63-1" : std::to_string(total)));
  }
  if (expected) check_counts(*expected, "recvCounts");
}

void check_all_to_all_v_chunks(const char* op, const AllToAllVChunks& chunks, const std::vector<int64_t>& send_counts,
                               const std::optional<std::vector<int64_t>>& expected, int size) {
  auto check = [&](const std::vector<int64_t>& c, const char* what, const char* layout) {
    if (c.empty()) return int64_t(0);
    if (c.size() % size_t(size) != 0)
      fail(Code::Value, std::string(op) + ": expected " + what + " to hold " + layout + " counts (a multiple of " +
                            std::to_string(size) + ") but received " + std::to_string(c.size()));
    for (size_t i = 0; i < c.size(); ++i)
      if (c[i] < 0)
        fail(Code::Value, std::string(op) + ": expected " + what + " >= 0 but element " + std::to_string(i) + " is " +
                              std::to_string(c[i]));
    return int64_t(c.size()) / size;
  };
  const int64_t ls = check(chunks.send, "sendChunks", "[chunks, ranks]");
  for (int p = 0; ls && p < size; ++p) {
    int64_t sum = 0;
    for (int64_t l = 0; l < ls; ++l) sum += chunks.send[size_t(l * size + p)];
    if (sum != send_counts[size_t(p)])
      fail(Code::Value, std::string(op) + ": expected the sendChunks for rank " + std::to_string(p) +
                            " to sum to its sendCounts (" + std::to_string(send_counts[size_t(p)]) +
                            ") but they sum to " + std::to_string(sum));
  }
  const int64_t lr = check(chunks.recv, "recvChunks", "[ranks, chunks]");
  if (lr && !expected) fail(Code::Value, std::string(op) + ": expected recvCounts with recvChunks");
  for (int p = 0; lr && p < size; ++p) {
    int64_t sum = 0;
    for (int64_t l = 0; l < lr; ++l) sum += chunks.recv[size_t(p * lr + l)];
    if (sum != (*expected)[size_t(p)])
      fail(Code::Value, std::string(op) + ": expected the recvChunks from rank " + std::to_string(p) +
                            " to sum to its recvCounts (" + std::to_string((*expected)[size_t(p)]) +
                            ") but they sum to " + std::to_string(sum));
  }
}

void check_reduce_scatter_v_args(const char* op, const Tensor& x, const std::vector<int64_t>& counts, int size) {
  if (x.ndim() < 1) fail(Code::Shape, std::string(op) + ": expected x [rows, ...] but received a scalar");
  if (int(counts.size()) != size) {
    fail(Code::Value, std::string(op) + ": expected counts to hold one count per rank (" + std::to_string(size) +
                          ") but received " + std::to_string(counts.size()));
  }
  int64_t total = 0;
  bool over = false;
  for (int64_t c : counts) {
    if (c < 0) fail(Code::Value, std::string(op) + ": expected counts >= 0 but received " + std::to_string(c));
    over = over || __builtin_add_overflow(total, c, &total);
  }
  if (over || total != x.dim(0)) {
    fail(Code::Value, std::string(op) + ": expected counts to sum to the rows of x (" + std::to_string(x.dim(0)) +
                          ") but they sum to " + (over ? "more than 2^63-1" : std::to_string(total)));
  }
}

int64_t counts_hash(const std::vector<int64_t>& counts, const Shape& shape) {
  uint64_t h = uint64_t(shape_hash(shape, 1));
  for (int64_t c : counts) {
    h ^= uint64_t(c);
    h *= 1099511628211ull;
  }
  return int64_t(h & 0x7fffffffffffffffull);
}

}  // namespace moe::comm
