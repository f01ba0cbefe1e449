// A process group over NCCL for CUDA tensors
// (docs/architecture.md#process-groups): the communicator under the TypeScript
// ProcessGroup when the backend is "nccl". It has the Gloo group's surface
// (gloo_group.h): each method checks its arguments at once, on the caller's
// thread, and returns a Task that the binding runs on the group's own thread
// (submit()).
//
// test/nccl-group.test.ts tests it where a GPU and NCCL are present, and
// test/emulated/nccl-procs.test.ts across processes on the CUDA emulator's
// NCCL.
//
// Streams: every tensor lives on the group's device. A collective first waits
// until the work queued on the CPU stream before it has been enqueued (CUDA
// ops enqueue their kernels from there), then makes the device's
// communication stream wait for its compute stream, enqueues the NCCL calls on
// the communication stream, and makes the compute stream wait for the
// communication stream, so later kernels (and the freeing of tensors, which is
// stream-ordered on the compute stream) come after the transfer. The Promise
// of allReduce / broadcast / allToAll resolves once the work is enqueued, as a
// CUDA op's does; reading a result back waits for it.
//
// allToAllV exchanges a descriptor first (dtype, row shape, every rank's
// counts and expectations, gathered by every rank with one NCCL all-to-all of
// int64 on the device) and reads it back to the host: that read is the
// collective's one host synchronisation. Every rank then sees the same table,
// so a disagreement (dtype, row shape, counts against recvCounts) fails on
// every rank alike before any row moves, and the group stays usable. The rows
// then move as grouped ncclSend / ncclRecv on the communication stream.
//
// allReduce, broadcast and allToAll exchange no descriptor (no extra host
// synchronisation): ranks that disagree on their sizes hang until the
// watchdog's timeout, which aborts the communicator (ERR_MOE_TIMEOUT). bfloat16
// and float16 reduce in their own precision (NCCL's rule), not in float32.
//
// Faults: NcclComm's watchdog aborts the communicator when an operation does
// not finish within the timeout (ERR_MOE_TIMEOUT) or NCCL reports a peer's
// loss (ERR_MOE_PEER_LOST); the group is then broken and every later call
// fails with the same error.
#pragma once
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../core/task.h"
#include "process_group.h"
#include "nccl_comm.h"
#include "serial_queue.h"
#include "store.h"

namespace moe::comm {

struct NcclGroupOptions {
  Millis timeout = kDefaultTimeout;
  std::string name = "world";
};

class NcclGroup : public ProcessGroup, public std::enable_shared_from_this<NcclGroup> {
 public:
  // A group of world_ranks.size() ranks on CUDA device `device`, this one at
  // `rank`, meeting through `store` under `prefix`. Refuses at once (before
  // any NCCL call) with ERR_MOE_NCCL_UNAVAILABLE and the reason when NCCL is
  // unusable, ERR_MOE_DEVICE for a device that is not CUDA, ERR_MOE_VALUE for
  // a bad rank. Nothing is connected until connect() runs.
  static std::shared_ptr<NcclGroup> create(std::shared_ptr<Store> store, std::string prefix, int rank,
                                           std::vector<int> world_ranks, Device device, NcclGroupOptions options);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return int(world_ranks_.size()); }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  Device device() const override { return device_; }
  Millis timeout() const override { return options_.timeout; }
  const std::string& name() const override { return options_.name; }
  // NCCL chooses its own interfaces: there is no one address to report.
  std::string address() const override { return ""; }
  bool destroyed() const override { return destroyed_.load(); }
  std::optional<std::pair<Code, std::string>> fault() const override;

  void submit(std::function<void()> work) override { queue_.submit(std::move(work)); }

  // Makes the communicator: rank 0 puts the unique id in the store under the
  // group's prefix, the others take it from there (NcclComm::create).
  Task<Unit> connect() override;

  // A sub-group of this group's ranks `members` (ascending, distinct, holding
  // this rank) with a communicator of its own under a new store prefix; only
  // members call it, each the same number of times for the same members.
  std::shared_ptr<NcclGroup> subgroup(const std::vector<int>& members, std::optional<Millis> timeout);
  std::shared_ptr<ProcessGroup> new_group(const std::vector<int>& members, std::optional<Millis> timeout) override {
    return subgroup(members, timeout);
  }

  // As GlooGroup's, on CUDA tensors of the group's device (ERR_MOE_DEVICE
  // otherwise); bfloat16 needs NCCL >= 2.10.3 (ERR_MOE_NCCL_UNAVAILABLE naming
  // the loaded version otherwise).
  Task<AllToAllVResult> all_to_all_v(const Tensor& x, std::vector<int64_t> send_counts,
                                     std::optional<std::vector<int64_t>> expected) override;
  Task<Tensor> all_to_all(const Tensor& x) override;
  // The counts travel with a descriptor (one host synchronisation), then x goes
  // to every rank as grouped send / recv.
  Task<AllGatherVResult> all_gather_v(const Tensor& x) override;
  // After a descriptor check (one host synchronisation): an all-reduce of x
  // into a buffer of its own, of which this rank keeps its chunk. NCCL's
  // reduce-scatter takes equal chunks only; this moves twice the bytes of one,
  // and needs nothing beyond the all-reduce from the library.
  Task<Tensor> reduce_scatter_v(const Tensor& x, std::vector<int64_t> counts) override;
  Task<Unit> all_reduce(const Tensor& t, ReduceOp op) override;
  Task<Unit> broadcast(const Tensor& t, int root) override;
  // An all-reduce of one element, waited for on the host.
  Task<Unit> barrier() override;

  // Ends the group: later calls fail with ERR_MOE_DISPOSED; a collective in
  // progress is aborted; the communicator is closed off the caller's thread.
  void destroy() override;

  struct Op;  // one collective's bookkeeping (nccl_group.cpp)

 private:
  NcclGroup(std::shared_ptr<Store> store, std::string prefix, int rank, std::vector<int> world_ranks, Device device,
            NcclGroupOptions options);
  void check_tensor(const char* op, const char* what, const Tensor& t) const;
  std::string who(int group_rank) const;
  // Every rank's `mine` (the same length everywhere), read back on the host: [size][mine.size()].
  std::vector<int64_t> gather_descriptors(Op& c, const std::vector<int64_t>& mine);
  // The first rank whose descriptor head (magic, seq, op, dtype, row elements, param) differs from
  // rank 0's, as the error every rank throws alike; `describe(r)` says what rank r passed.
  template <class Describe>
  void check_heads(const char* op, const std::vector<int64_t>& table, int64_t width, Code param_code,
                   Describe describe) const;

  std::shared_ptr<Store> store_;
  std::string prefix_;
  int rank_;
  std::vector<int> world_ranks_;
  Device device_;
  NcclGroupOptions options_;
  std::atomic<bool> destroyed_{false};

  mutable std::mutex mu_;
  std::shared_ptr<NcclComm> comm_;  // set by connect()
  std::optional<std::pair<Code, std::string>> fault_;
  bool busy_ = false;
  int64_t seq_ = 0;  // collectives with a descriptor so far (ranks out of step are named)
  std::map<std::string, int> subgroups_;

  SerialQueue queue_;
};

}  // namespace moe::comm
