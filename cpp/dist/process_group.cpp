#include "process_group.h"

namespace moe::dist {

ReduceOp parse_reduce_op(const std::string& name) {
  if (name == "sum") return ReduceOp::Sum;
  if (name == "avg") return ReduceOp::Avg;
  if (name == "max") return ReduceOp::Max;
  fail(Code::Value, "allReduce: expected op \"sum\", \"avg\" or \"max\" but received \"" + name + "\"");
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
  }
  return "?";
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
  for (int64_t c : send_counts) total += c;
  if (total != x.dim(0)) {
    fail(Code::Value, std::string(op) + ": expected sendCounts to sum to the rows of x (" + std::to_string(x.dim(0)) +
                          ") but they sum to " + std::to_string(total));
  }
  if (expected) check_counts(*expected, "recvCounts");
}

}  // namespace moe::dist
