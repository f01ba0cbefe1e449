#include "nccl_group.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <utility>

#include "../core/cuda_device.h"
#include "../core/stream.h"
#include "blocking.h"
#include "nccl_api.h"

namespace moe::comm {
namespace {

constexpr int64_t kMagic = 0x6d6f6565702d6e31;  // "moeep-n1"
// The descriptor of an allToAllV: magic, seq, dtype, row elements, row shape
// hash, has_expected; then the send counts (one per rank) and the expected
// receive counts (-1 where not given).
constexpr int kHead = 6;
// The op field of the descriptors of allGatherV and reduceScatterV (allToAllV's has none).
constexpr int64_t kOpAllGatherV = 1, kOpReduceScatterV = 2;

int64_t row_elements(const Tensor& x) {
  int64_t n = 1;
  for (int d = 1; d < x.ndim(); ++d) n *= x.dim(d);
  return n;
}

// Waits until the work queued on the CPU stream so far has run: CUDA ops
// enqueue their kernels from there, so afterwards the compute stream holds
// every kernel the caller launched before this collective.
void after_cpu_stream() {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> f = done->get_future();
  cpu_stream_submit([done] { done->set_value(); });
  f.wait();
}

NcclReduceOp nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return NcclReduceOp::Sum;
    case ReduceOp::Avg:
      return NcclReduceOp::Avg;
    case ReduceOp::Max:
      return NcclReduceOp::Max;
  }
  return NcclReduceOp::Sum;
}

// Errors every rank sees alike before data moves: the group stays usable.
bool leaves_group_usable(Code c) {
  return c == Code::CountMismatch || c == Code::Shape || c == Code::Dtype || c == Code::Value || c == Code::Device ||
         c == Code::NcclUnavailable;
}

}  // namespace

// One collective on the group's thread: the group's state checked, the
// communicator held, and a failure recorded as the group's fault.
struct NcclGroup::Op {
  Op(NcclGroup& g, const char* name) : g(g), name(name) {
    std::lock_guard<std::mutex> lock(g.mu_);
    if (g.destroyed()) fail(Code::Disposed, std::string(name) + ": the process group was destroyed");
    if (g.fault_) fail(g.fault_->first, std::string(name) + ": the process group failed earlier: " + g.fault_->second);
    if (!g.comm_) fail(Code::Internal, std::string(name) + ": the process group is not connected");
    comm = g.comm_;
    g.busy_ = true;
  }
  ~Op() {
    std::lock_guard<std::mutex> lock(g.mu_);
    g.busy_ = false;
  }

  template <class F>
  auto run(F&& body) -> decltype(body()) {
    try {
      auto r = body();
      comm_ok();
      return r;
    } catch (const Error& e) {
      if (leaves_group_usable(e.code()) && !comm->failed()) throw;
      broken(e.code(), e.what());
    } catch (const std::exception& e) {
      broken(Code::Internal, std::string(name) + ": " + e.what());
    }
  }

  // Throws the communicator's failure (the watchdog may have aborted it while
  // the host waited on the device).
  void comm_ok() {
    if (comm->failed()) comm->wait();  // throws the failure at once
  }

  [[noreturn]] void broken(Code code, std::string message) {
    if (g.destroyed()) {
      code = Code::Disposed;
      message = std::string(name) + ": the process group was destroyed while the collective ran";
    }
    {
      std::lock_guard<std::mutex> lock(g.mu_);
      if (!g.fault_ && code != Code::Disposed) g.fault_.emplace(code, message);
    }
    comm->abort(code, message);  // the other ranks' operations fail at their own watchdogs
    throw Error(code, message);
  }

  NcclGroup& g;
  const char* name;
  std::shared_ptr<NcclComm> comm;
};

NcclGroup::NcclGroup(std::shared_ptr<Store> store, std::string prefix, int rank, std::vector<int> world_ranks,
                     Device device, NcclGroupOptions options)
    : store_(std::move(store)),
      prefix_(std::move(prefix)),
      rank_(rank),
      world_ranks_(std::move(world_ranks)),
      device_(device),
      options_(std::move(options)) {}

std::shared_ptr<NcclGroup> NcclGroup::create(std::shared_ptr<Store> store, std::string prefix, int rank,
                                             std::vector<int> world_ranks, Device device, NcclGroupOptions options) {
  nccl::api();  // ERR_MOE_NCCL_UNAVAILABLE with the reason, before anything else
  if (device.kind != Device::CUDA) {
    fail(Code::Device, "process group: backend \"nccl\" needs a CUDA device but received " + device.str());
  }
  cuda::require(device, "process group");
  if (!store) fail(Code::Value, "process group: expected a store");
  if (world_ranks.empty()) fail(Code::Value, "process group: expected at least one rank");
  if (rank < 0 || rank >= int(world_ranks.size())) {
    fail(Code::Value, "process group: expected rank in [0, " + std::to_string(world_ranks.size()) + ") but received " +
                          std::to_string(rank));
  }
  if (options.timeout.count() <= 0) fail(Code::Value, "process group: expected a timeout > 0 ms");
  return std::shared_ptr<NcclGroup>(
      new NcclGroup(std::move(store), std::move(prefix), rank, std::move(world_ranks), device, std::move(options)));
}

NcclGroup::~NcclGroup() {
  // The last reference may go on the group's own thread; the communicator's
  // close waits for its work (bounded by the watchdog), never for this thread.
  if (comm_) comm_->close();
}

std::optional<std::pair<Code, std::string>> NcclGroup::fault() const {
  std::shared_ptr<NcclComm> comm;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fault_) return fault_;
    comm = comm_;
  }
  if (comm && comm->failed()) {
    try {
      comm->wait();  // a failed communicator throws its failure at once
    } catch (const Error& e) {
      return std::make_pair(e.code(), std::string(e.what()));
    }
  }
  return std::nullopt;
}

std::string NcclGroup::who(int r) const {
  std::string s = "rank " + std::to_string(world_ranks_[size_t(r)]);
  if (options_.name != "world") s += " (rank " + std::to_string(r) + " of group " + options_.name + ")";
  return s;
}

void NcclGroup::check_tensor(const char* op, const char* what, const Tensor& t) const {
  if (!t.defined()) fail(Code::Value, std::string(op) + ": expected a tensor for " + what);
  if (t.device() != device_) {
    fail(Code::Device, std::string(op) + ": expected " + what + " on " + device_.str() +
                           " (the NCCL process group's device) but received " + t.describe());
  }
  nccl_type(t.dtype, nccl::status());  // bfloat16 with NCCL < 2.10.3: ERR_MOE_NCCL_UNAVAILABLE naming the version
}

Task<Unit> NcclGroup::connect() {
  return [self = shared_from_this()]() -> Unit {
    NcclGroup& g = *self;
    if (g.destroyed()) fail(Code::Disposed, "process group: destroyed before it connected");
    auto comm = NcclComm::create(*g.store_, g.rank_, g.size(), g.prefix_, g.options_.timeout, g.device_.index);
    std::lock_guard<std::mutex> lock(g.mu_);
    if (g.destroyed()) {
      comm->close();
      fail(Code::Disposed, "process group: destroyed while it connected");
    }
    g.comm_ = std::move(comm);
    return Unit{};
  };
}

std::shared_ptr<NcclGroup> NcclGroup::subgroup(const std::vector<int>& members, std::optional<Millis> timeout) {
  const char* op = "newGroup";
  if (destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
  const int my_index = check_members(op, members, size(), rank_);
  std::vector<int> world;
  for (int m : members) world.push_back(world_ranks_[size_t(m)]);
  const std::string key = join(members);
  int n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    n = subgroups_[key]++;
  }
  NcclGroupOptions o = options_;
  if (timeout) o.timeout = *timeout;
  o.name = "[" + join(world) + "]";
  // A communicator of its own: a new prefix, so its unique id is a new key.
  return create(store_, prefix_ + "/sub[" + key + "]#" + std::to_string(n), my_index, world, device_, o);
}

Task<AllToAllVResult> NcclGroup::all_to_all_v(const Tensor& x, std::vector<int64_t> send_counts,
                                              std::optional<std::vector<int64_t>> expected) {
  const char* op = "allToAllV";
  if (destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
  check_tensor(op, "x", x);
  check_all_to_all_v_args(op, x, send_counts, expected, world_ranks_);

  return [self = shared_from_this(), x, send_counts = std::move(send_counts), expected = std::move(expected)]() {
    NcclGroup& g = *self;
    Op c(g, "allToAllV");
    int64_t seq;
    {
      std::lock_guard<std::mutex> lock(g.mu_);
      seq = ++g.seq_;
    }
    return c.run([&]() -> AllToAllVResult {
      const int n = g.size();
      const int me = g.rank();
      const Device dev = g.device_;
      const int64_t row_elems = row_elements(x);
      const size_t row_bytes = size_t(row_elems) * dtype_size(x.dtype);
      after_cpu_stream();
      cuda::Scope sc(dev);

      // 1. Every rank's descriptor to every rank (an all-gather as one
      //    all-to-all), read back: the one host synchronisation.
      const int64_t W = kHead + 2 * int64_t(n);
      std::vector<int64_t> mine(static_cast<size_t>(W), -1);
      mine[0] = kMagic;
      mine[1] = seq;
      mine[2] = int64_t(x.dtype);
      mine[3] = row_elems;
      mine[4] = shape_hash(x.shape, 1);
      mine[5] = expected ? 1 : 0;
      for (int p = 0; p < n; ++p) {
        mine[size_t(kHead + p)] = send_counts[size_t(p)];
        if (expected) mine[size_t(kHead + n + p)] = (*expected)[size_t(p)];
      }
      const std::vector<int64_t> table = g.gather_descriptors(c, mine);
      auto at = [&](int r, int64_t i) { return table[size_t(int64_t(r) * W + i)]; };

      // 2. The same checks on every rank, from the same table.
      for (int r = 1; r < n; ++r) {
        if (at(r, 0) != kMagic || at(r, 1) != at(0, 1)) {
          fail(Code::Value, "allToAllV: the ranks are not calling the same collective: " + g.who(0) +
                                " calls allToAllV #" + std::to_string(at(0, 1)) + " of the group but " + g.who(r) +
                                " sent descriptor #" + std::to_string(at(r, 1)));
        }
        if (at(r, 2) != at(0, 2) || at(r, 3) != at(0, 3) || at(r, 4) != at(0, 4)) {
          auto describe = [&](int q) {
            return std::string(dtype_name(DType(at(q, 2)))) + " rows of " + std::to_string(at(q, 3)) + " elements" +
                   (at(q, 4) == at(0, 4) || at(q, 3) != at(0, 3) ? "" : " in another shape");
          };
          fail(at(r, 2) != at(0, 2) ? Code::Dtype : Code::Shape, "allToAllV: the ranks disagree: " + g.who(0) +
                                                                     " passed " + describe(0) + " but " + g.who(r) +
                                                                     " passed " + describe(r));
        }
      }
      std::vector<int64_t> recv(static_cast<size_t>(n));
      const int64_t most = (int64_t(1) << 40) / int64_t(std::max<size_t>(row_bytes, 1));
      for (int p = 0; p < n; ++p) {
        recv[size_t(p)] = at(p, kHead + me);
        if (recv[size_t(p)] < 0 || recv[size_t(p)] > most) {
          fail(Code::Value,
               "allToAllV: " + g.who(p) + " sends an impossible row count (" + std::to_string(recv[size_t(p)]) + ")");
        }
      }
      int64_t mismatches = 0;
      std::string first;
      for (int r = 0; r < n; ++r) {  // receivers, then senders: the order the Gloo group reports in
        if (at(r, 5) == 0) continue;
        for (int p = 0; p < n; ++p) {
          const int64_t sent = at(p, kHead + r), want = at(r, kHead + n + p);
          if (sent == want) continue;
          if (mismatches++ == 0) {
            first = "allToAllV: " + g.who(p) + " sends " + std::to_string(sent) + " rows to " + g.who(r) + " but " +
                    g.who(r) + " expects " + std::to_string(want);
          }
        }
      }
      if (mismatches) {
        fail(Code::CountMismatch, first + (mismatches > 1 ? " (" + std::to_string(mismatches - 1) + " more pair" +
                                                                (mismatches > 2 ? "s" : "") + " of ranks disagree)"
                                                          : ""));
      }

      // 3. The rows, as grouped send / recv on the communication stream.
      int64_t rows_in = 0;
      for (int64_t r : recv) rows_in += r;
      Shape shape = x.shape;
      shape[0] = rows_in;
      AllToAllVResult result{empty(x.dtype, shape, dev), recv};
      NcclAllToAllV rows;
      rows.send = x.raw();
      rows.send_elements = x.numel();
      rows.recv = result.output.raw();
      rows.recv_elements = result.output.numel();
      int64_t so = 0, ro = 0;
      for (int p = 0; p < n; ++p) {
        rows.send_counts.push_back(send_counts[size_t(p)] * row_elems);
        rows.send_offsets.push_back(so);
        so += send_counts[size_t(p)] * row_elems;
        rows.recv_counts.push_back(recv[size_t(p)] * row_elems);
        rows.recv_offsets.push_back(ro);
        ro += recv[size_t(p)] * row_elems;
      }
      cuda::comm_waits_for_compute(dev);
      c.comm->all_to_all_v(rows, x.dtype, sc.comm_stream());
      cuda::compute_waits_for_comm(dev);
      return result;
    });
  };
}

std::vector<int64_t> NcclGroup::gather_descriptors(Op& c, const std::vector<int64_t>& mine) {
  const int n = size();
  const int64_t W = int64_t(mine.size());
  cuda::Scope sc(device_);
  Tensor desc = empty(DType::I64, {W}, device_);
  Tensor table_dev = empty(DType::I64, {int64_t(n) * W}, device_);
  cuda::upload(desc.raw(), mine.data(), size_t(W) * sizeof(int64_t), device_);
  NcclAllToAllV a;
  a.send = desc.raw();
  a.send_elements = W;
  a.send_counts.assign(size_t(n), W);
  a.send_offsets.assign(size_t(n), 0);
  a.recv = table_dev.raw();
  a.recv_elements = int64_t(n) * W;
  a.recv_counts.assign(size_t(n), W);
  for (int p = 0; p < n; ++p) a.recv_offsets.push_back(int64_t(p) * W);
  cuda::comm_waits_for_compute(device_);
  c.comm->all_to_all_v(a, DType::I64, sc.comm_stream());
  cuda::compute_waits_for_comm(device_);
  std::vector<int64_t> table(static_cast<size_t>(int64_t(n) * W));
  cuda::download(table.data(), table_dev.raw(), table.size() * sizeof(int64_t), device_);
  c.comm_ok();
  return table;
}

template <class Describe>
void NcclGroup::check_heads(const char* op, const std::vector<int64_t>& table, int64_t width, Code param_code,
                            Describe describe) const {
  auto at = [&](int r, int64_t i) { return table[size_t(int64_t(r) * width + i)]; };
  for (int r = 1; r < size(); ++r) {
    if (at(r, 0) != kMagic || at(r, 1) != at(0, 1) || at(r, 2) != at(0, 2)) {
      fail(Code::Value, std::string(op) + ": the ranks are not calling the same collective: " + who(0) + " calls #" +
                            std::to_string(at(0, 1)) + " of the group but " + who(r) + " sent descriptor #" +
                            std::to_string(at(r, 1)));
    }
    if (at(r, 3) != at(0, 3) || at(r, 4) != at(0, 4) || at(r, 5) != at(0, 5)) {
      const Code code = at(r, 3) != at(0, 3) ? Code::Dtype : at(r, 4) != at(0, 4) ? Code::Shape : param_code;
      fail(code, std::string(op) + ": the ranks disagree: " + who(0) + " passed " + describe(0) + " but " + who(r) +
                     " passed " + describe(r));
    }
  }
}

Task<AllGatherVResult> NcclGroup::all_gather_v(const Tensor& x) {
  const char* op = "allGatherV";
  if (destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
  check_tensor(op, "x", x);
  if (x.ndim() < 1) fail(Code::Shape, std::string(op) + ": expected x [rows, ...] but received a scalar");
  return [self = shared_from_this(), x]() {
    NcclGroup& g = *self;
    Op c(g, "allGatherV");
    int64_t seq;
    {
      std::lock_guard<std::mutex> lock(g.mu_);
      seq = ++g.seq_;
    }
    return c.run([&]() -> AllGatherVResult {
      const int n = g.size();
      const Device dev = g.device_;
      const int64_t row_elems = row_elements(x);
      after_cpu_stream();
      cuda::Scope sc(dev);
      // 1. magic, seq, op, dtype, row elements, row shape hash, rows.
      const std::vector<int64_t> mine = {
          kMagic, seq, kOpAllGatherV, int64_t(x.dtype), row_elems, shape_hash(x.shape, 1), x.dim(0)};
      const int64_t W = int64_t(mine.size());
      const std::vector<int64_t> table = g.gather_descriptors(c, mine);
      g.check_heads("allGatherV", table, W, Code::Shape, [&](int r) {
        const int64_t* b = &table[size_t(int64_t(r) * W)];
        return std::string(dtype_name(DType(b[3]))) + " rows of " + std::to_string(b[4]) + " elements" +
               (b[5] == table[5] || b[4] != table[4] ? "" : " in another shape");
      });
      std::vector<int64_t> counts(static_cast<size_t>(n));
      int64_t rows = 0;
      for (int p = 0; p < n; ++p) {
        counts[size_t(p)] = table[size_t(int64_t(p) * W + 6)];
        rows += counts[size_t(p)];
      }
      // 2. x to every rank.
      Shape shape = x.shape;
      shape[0] = rows;
      AllGatherVResult result{empty(x.dtype, shape, dev), counts};
      NcclAllToAllV a;
      a.send = x.raw();
      a.send_elements = x.numel();
      a.recv = result.output.raw();
      a.recv_elements = result.output.numel();
      int64_t ro = 0;
      for (int p = 0; p < n; ++p) {
        a.send_counts.push_back(x.numel());
        a.send_offsets.push_back(0);
        a.recv_counts.push_back(counts[size_t(p)] * row_elems);
        a.recv_offsets.push_back(ro);
        ro += counts[size_t(p)] * row_elems;
      }
      cuda::comm_waits_for_compute(dev);
      c.comm->all_to_all_v(a, x.dtype, sc.comm_stream());
      cuda::compute_waits_for_comm(dev);
      return result;
    });
  };
}

Task<Tensor> NcclGroup::reduce_scatter_v(const Tensor& x, std::vector<int64_t> counts) {
  const char* op = "reduceScatterV";
  if (destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
  check_tensor(op, "x", x);
  check_reduce_scatter_v_args(op, x, counts, size());
  return [self = shared_from_this(), x, counts = std::move(counts)]() {
    NcclGroup& g = *self;
    Op c(g, "reduceScatterV");
    int64_t seq;
    {
      std::lock_guard<std::mutex> lock(g.mu_);
      seq = ++g.seq_;
    }
    return c.run([&]() -> Tensor {
      const int n = g.size();
      const int me = g.rank();
      const Device dev = g.device_;
      const int64_t row_elems = row_elements(x);
      after_cpu_stream();
      cuda::Scope sc(dev);
      // 1. magic, seq, op, dtype, row elements, counts and row shape hash; then the counts.
      std::vector<int64_t> mine = {kMagic,           seq,       kOpReduceScatterV,
                                   int64_t(x.dtype), row_elems, counts_hash(counts, x.shape)};
      mine.insert(mine.end(), counts.begin(), counts.end());
      const int64_t W = int64_t(mine.size());
      const std::vector<int64_t> table = g.gather_descriptors(c, mine);
      g.check_heads("reduceScatterV", table, W, Code::CountMismatch, [&](int r) {
        const int64_t* b = &table[size_t(int64_t(r) * W)];
        std::string s =
            std::string(dtype_name(DType(b[3]))) + " rows of " + std::to_string(b[4]) + " elements cut by counts [";
        for (int p = 0; p < n; ++p) s += (p ? ", " : "") + std::to_string(b[6 + p]);
        return s + "]";
      });
      // 2. The sum of every rank's x, of which this rank keeps its chunk.
      int64_t first = 0;
      for (int p = 0; p < me; ++p) first += counts[size_t(p)];
      Shape shape = x.shape;
      shape[0] = counts[size_t(me)];
      Tensor out = empty(x.dtype, shape, dev);
      Tensor sum = empty(x.dtype, x.shape, dev);
      cuda::comm_waits_for_compute(dev);
      c.comm->all_reduce(x.raw(), sum.raw(), x.numel(), x.dtype, NcclReduceOp::Sum, sc.comm_stream());
      cuda::compute_waits_for_comm(dev);
      const size_t elem = dtype_size(x.dtype);
      if (out.numel()) {
        cuda::copy_async(out.raw(), static_cast<const char*>(sum.raw()) + size_t(first * row_elems) * elem,
                         size_t(out.numel()) * elem, dev);
      }
      return out;
    });
  };
}

Task<Tensor> NcclGroup::all_to_all(const Tensor& x) {
  const char* op = "allToAll";
  if (destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
  check_tensor(op, "x", x);
  if (x.ndim() < 1 || x.dim(0) != size()) {
    fail(Code::Shape, std::string(op) + ": expected x [" + std::to_string(size()) +
                          ", ...] (one block per rank) but received " + x.describe());
  }
  return [self = shared_from_this(), x]() {
    NcclGroup& g = *self;
    Op c(g, "allToAll");
    return c.run([&]() -> Tensor {
      const int n = g.size();
      const Device dev = g.device_;
      after_cpu_stream();
      cuda::Scope sc(dev);
      Tensor out = empty(x.dtype, x.shape, dev);
      const int64_t block = n ? x.numel() / n : 0;
      NcclAllToAllV a;
      a.send = x.raw();
      a.send_elements = x.numel();
      a.recv = out.raw();
      a.recv_elements = out.numel();
      for (int p = 0; p < n; ++p) {
        a.send_counts.push_back(block);
        a.send_offsets.push_back(int64_t(p) * block);
        a.recv_counts.push_back(block);
        a.recv_offsets.push_back(int64_t(p) * block);
      }
      cuda::comm_waits_for_compute(dev);
      c.comm->all_to_all_v(a, x.dtype, sc.comm_stream());
      cuda::compute_waits_for_comm(dev);
      return out;
    });
  };
}

Task<Unit> NcclGroup::all_reduce(const Tensor& t, ReduceOp op) {
  const char* name = "allReduce";
  if (destroyed()) fail(Code::Disposed, std::string(name) + ": the process group was destroyed");
  check_tensor(name, "t", t);
  if (op == ReduceOp::Avg && !is_float(t.dtype)) {
    fail(Code::Dtype, std::string(name) + ": op \"avg\" needs a float tensor but received " + t.describe());
  }
  if (op == ReduceOp::Avg && !nccl::at_least(nccl::decode_version(nccl::status().version_code), 2, 10, 0)) {
    fail(Code::NcclUnavailable, std::string(name) +
                                    ": op \"avg\" needs NCCL >= 2.10.0 but the loaded library is NCCL " +
                                    nccl::status().version);
  }
  return [self = shared_from_this(), t, op]() {
    NcclGroup& g = *self;
    Op c(g, "allReduce");
    return c.run([&]() -> Unit {
      after_cpu_stream();
      cuda::Scope sc(g.device_);
      cuda::comm_waits_for_compute(g.device_);
      c.comm->all_reduce(t.raw(), t.raw(), t.numel(), t.dtype, nccl_op(op), sc.comm_stream());
      cuda::compute_waits_for_comm(g.device_);
      return Unit{};
    });
  };
}

Task<Unit> NcclGroup::broadcast(const Tensor& t, int root) {
  const char* name = "broadcast";
  if (destroyed()) fail(Code::Disposed, std::string(name) + ": the process group was destroyed");
  check_tensor(name, "t", t);
  if (root < 0 || root >= size()) {
    fail(Code::Value, std::string(name) + ": expected root in [0, " + std::to_string(size()) + ") but received " +
                          std::to_string(root));
  }
  return [self = shared_from_this(), t, root]() {
    NcclGroup& g = *self;
    Op c(g, "broadcast");
    return c.run([&]() -> Unit {
      after_cpu_stream();
      cuda::Scope sc(g.device_);
      cuda::comm_waits_for_compute(g.device_);
      c.comm->broadcast(t.raw(), t.raw(), t.numel(), t.dtype, root, sc.comm_stream());
      cuda::compute_waits_for_comm(g.device_);
      return Unit{};
    });
  };
}

Task<Unit> NcclGroup::barrier() {
  if (destroyed()) fail(Code::Disposed, "barrier: the process group was destroyed");
  return [self = shared_from_this()]() {
    NcclGroup& g = *self;
    Op c(g, "barrier");
    return c.run([&]() -> Unit {
      after_cpu_stream();
      cuda::Scope sc(g.device_);
      Tensor one = zeros(DType::I32, {1}, g.device_);
      cuda::comm_waits_for_compute(g.device_);
      c.comm->all_reduce(one.raw(), one.raw(), 1, DType::I32, NcclReduceOp::Sum, sc.comm_stream());
      cuda::compute_waits_for_comm(g.device_);
      c.comm->wait();  // every rank has reached the all-reduce (bounded by the watchdog's timeout)
      return Unit{};
    });
  };
}

void NcclGroup::destroy() {
  if (destroyed_.exchange(true)) return;
  std::shared_ptr<NcclComm> comm;
  bool busy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    comm = std::move(comm_);
    busy = busy_;
  }
  if (!comm) return;
  // Off the caller's (JS) thread: abort waits for an issuer inside a blocking
  // NCCL call, and close() for enqueued work (bounded by the timeout).
  std::string message = options_.name + ": the process group was destroyed while a collective ran";
  run_blocking([comm, busy, message] {
    if (busy) comm->abort(Code::Disposed, message);
    comm->close();
  });
}

}  // namespace moe::comm
