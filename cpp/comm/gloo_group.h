// A process group over Gloo (CPU tensors, TCP transport): the communicator
// under the TypeScript ProcessGroup. Its collectives run in order on the
// group's own thread (SerialQueue); each method checks its arguments at once,
// on the caller's thread, and returns a Task to run there (the binding queues
// it with submit()).
//
// Faults: every collective has the group's timeout. A peer that closes its
// connection (killed, exited, or its own group failed) is ERR_MOE_PEER_LOST
// naming it; a peer that does not answer in time is ERR_MOE_TIMEOUT naming the
// op and the timeout. Either breaks the group: its connections are closed (so
// the other ranks learn at once) and every later call fails with the same
// error. Disagreements that every rank sees alike (counts, shapes, dtypes)
// fail on every rank and leave the group usable, since no data moved.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../core/task.h"
#include "process_group.h"
#include "serial_queue.h"
#include "store.h"

namespace moe::comm {

struct GroupOptions {
  // The address Gloo's sockets bind to and that peers connect to: loopback
  // unless the user names another (Gloo alone would bind the address of the
  // machine's host name). A name is resolved when the group connects, and Gloo
  // is handed the numeric address, loopback or not as the name says.
  std::string hostname = "127.0.0.1";
  // Every collective and rendezvous wait.
  Millis timeout = kDefaultTimeout;
  // For messages: "world", "[0, 1]"...
  std::string name = "world";
};

class GlooGroup : public ProcessGroup, public std::enable_shared_from_this<GlooGroup> {
 public:
  // A group of `world_ranks.size()` ranks, this one at `rank`, meeting through
  // `store` under `prefix`. Nothing is connected until connect() runs.
  // world_ranks maps the group's ranks to the ranks of the world (for messages).
  static std::shared_ptr<GlooGroup> create(std::shared_ptr<Store> store, std::string prefix, int rank,
                                           std::vector<int> world_ranks, GroupOptions options);
  ~GlooGroup();
  GlooGroup(const GlooGroup&) = delete;
  GlooGroup& operator=(const GlooGroup&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return int(world_ranks_.size()); }
  const std::vector<int>& world_ranks() const override { return world_ranks_; }
  Millis timeout() const override { return options_.timeout; }
  const std::string& name() const override { return options_.name; }
  const std::string& hostname() const { return options_.hostname; }
  // The numeric address the group's sockets bind to once connected; the hostname before.
  std::string address() const override;
  Device device() const override { return Device{}; }
  bool destroyed() const override { return destroyed_.load(); }
  // The fault that broke the group, if any: code and message.
  std::optional<std::pair<Code, std::string>> fault() const override;

  // Runs work on the group's thread, in order.
  void submit(std::function<void()> work) override { queue_.submit(std::move(work)); }

  // The rendezvous: every rank publishes its addresses in the store, connects
  // to every other rank, and they exchange their connections' endpoints (so a
  // lost peer can be named); it returns once every rank has connected.
  Task<Unit> connect() override;

  // A sub-group of this group's ranks `members` (ascending, distinct, holding
  // this rank), sharing the store and Gloo device. Only members call it, each
  // the same number of times for the same members, in the same order.
  std::shared_ptr<GlooGroup> subgroup(const std::vector<int>& members, std::optional<Millis> timeout);
  std::shared_ptr<ProcessGroup> new_group(const std::vector<int>& members, std::optional<Millis> timeout) override {
    return subgroup(members, timeout);
  }

  // x [rows, ...] split by rows: send_counts[p] rows go to rank p (in order).
  // The counts are exchanged first; with `expected`, every rank checks what
  // arrives against it and all ranks fail with ERR_MOE_COUNT_MISMATCH naming
  // the sender, the receiver and both counts before any row moves.
  // Output [sum(recv_counts), ...], rows ordered by source rank.
  // On one machine the rows go through shared memory once the first call has set it up
  // (shm_exchange.h); MOE_EP_SHM=0 on any rank keeps them on the sockets.
  Task<AllToAllVResult> all_to_all_v(const Tensor& x, std::vector<int64_t> send_counts,
                                     std::optional<std::vector<int64_t>> expected) override;
  // The same with the rows in chunks (process_group.h): through shared memory each chunk is
  // copied straight to its place; over the sockets, through a buffer on either side.
  Task<AllToAllVResult> all_to_all_v_chunks(const Tensor& x, std::vector<int64_t> send_counts,
                                            std::optional<std::vector<int64_t>> expected,
                                            AllToAllVChunks chunks) override;
  // Whether allToAllV moves its rows through shared memory.
  bool shared_memory() const override;
  // x [size, ...]: block p goes to rank p; the output holds block r of rank p at p.
  Task<Tensor> all_to_all(const Tensor& x) override;
  // Every rank's x [rows_p, ...] to every rank, in rank order (Gloo's allgatherv after the counts).
  Task<AllGatherVResult> all_gather_v(const Tensor& x) override;
  // Chunk p of every rank's x to rank p (an all-to-all-v), summed there in rank order (half
  // dtypes in float32), so every run adds in the same order.
  Task<Tensor> reduce_scatter_v(const Tensor& x, std::vector<int64_t> counts) override;
  // In place; float32, bfloat16 / float16 (reduced in float32), int32, int64 (not avg).
  Task<Unit> all_reduce(const Tensor& t, ReduceOp op) override;
  // In place, from the group rank `root`.
  Task<Unit> broadcast(const Tensor& t, int root) override;
  Task<Unit> barrier() override;

  // Ends the group: later calls fail with ERR_MOE_DISPOSED, a collective in
  // progress is aborted (and fails with ERR_MOE_DISPOSED), the connections close.
  void destroy() override;

  struct Impl;  // the Gloo side, defined in gloo_group.cpp

 private:
  GlooGroup(std::shared_ptr<Store> store, std::string prefix, int rank, std::vector<int> world_ranks,
            GroupOptions options);

  std::shared_ptr<Store> store_;
  std::string prefix_;
  int rank_;
  std::vector<int> world_ranks_;
  GroupOptions options_;
  std::atomic<bool> destroyed_{false};
  std::unique_ptr<Impl> impl_;  // the Gloo side
  // The group's thread. Queued work holds a reference to the group, so the
  // group goes only once its queue is empty, perhaps on the queue's own thread
  // (the queue's destructor closes it without joining).
  SerialQueue queue_;
};

}  // namespace moe::comm
