// A NCCL communicator over raw device pointers
// (docs/architecture.md#process-groups): the all-to-all of expert parallelism
// as grouped ncclSend/ncclRecv, and all-reduce / broadcast, each enqueued on
// the caller's CUDA stream.
//
// Rendezvous: rank 0 makes the unique id (ncclGetUniqueId) and sets it in the
// store under "<prefix>/nccl/unique_id"; the other ranks get it from there
// (waiting up to the timeout). The store already separates runs; the prefix
// names the communicator within the run, so a new communicator (after an
// abort, or a second group) needs a new prefix.
//
// Faults (NCCL has no timeout of its own): with NCCL >= 2.14 the communicator
// is non-blocking, so init and every enqueue return at once and are polled
// with ncclCommGetAsyncError up to the timeout. After each operation an event
// is recorded on its stream; a watchdog thread polls the events and the
// communicator's asynchronous error, and when an operation has not finished
// within the timeout, or NCCL reports an error, it calls ncclCommAbort and
// marks the communicator failed: wait() and every later call then throw
// ERR_MOE_TIMEOUT (the operation did not finish in time) or ERR_MOE_PEER_LOST
// (NCCL reported a remote or system error). With NCCL 2.7.3 - 2.13 the host
// calls block; device work is still watched and aborted, but a hang inside a
// host call (a peer that never connects) cannot be interrupted.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"
#include "nccl_api.h"
#include "store.h"

namespace moe::comm {

enum class NcclReduceOp { Sum, Prod, Max, Min, Avg };

// An all-to-all-v in elements of one dtype: send_counts[p] elements from
// send + send_offsets[p] go to peer p, and recv_counts[p] elements from peer p
// land at recv + recv_offsets[p]. The *_elements are the buffers' sizes, so
// every range can be checked. Counts must agree between peers (what p sends to
// q is what q receives from p); NCCL cannot check that, and a mismatch hangs
// until the watchdog's timeout.
struct NcclAllToAllV {
  const void* send = nullptr;
  int64_t send_elements = 0;
  std::vector<int64_t> send_counts, send_offsets;
  void* recv = nullptr;
  int64_t recv_elements = 0;
  std::vector<int64_t> recv_counts, recv_offsets;
};

// ERR_MOE_VALUE unless there is one count and offset per rank, none negative,
// every range inside its buffer, and the buffers non-null where a count is > 0.
void check_all_to_all_v(const NcclAllToAllV& a, int world_size);

// The NCCL type of a dtype; ERR_MOE_NCCL_UNAVAILABLE for bfloat16 when the
// library is older than 2.10.3.
nccl::DataType nccl_type(DType dtype, const nccl::Status& status);

class NcclComm {
 public:
  using Clock = std::chrono::steady_clock;

  // ERR_MOE_NCCL_UNAVAILABLE (with the reason) when NCCL or a device is
  // missing; ERR_MOE_VALUE for a bad rank/size/timeout; ERR_MOE_TIMEOUT when
  // the unique id or a peer does not arrive in time. `device` is the CUDA
  // device of this rank (the calling thread's current device when < 0).
  static std::shared_ptr<NcclComm> create(Store& store, int rank, int size, const std::string& prefix, Millis timeout,
                                          int device = -1);
  ~NcclComm();  // close()
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }
  Millis timeout() const { return timeout_; }
  bool non_blocking() const { return non_blocking_; }

  // Enqueue on `stream` (a cudaStream_t; null is the legacy default stream)
  // and return; the data moves when the stream gets there. Pointers are device
  // pointers on this rank's device.
  void all_to_all_v(const NcclAllToAllV& a, DType dtype, void* stream);
  void all_reduce(const void* send, void* recv, int64_t count, DType dtype, NcclReduceOp op, void* stream);
  void broadcast(const void* send, void* recv, int64_t count, DType dtype, int root, void* stream);

  // Blocks until every operation enqueued so far has finished on the device;
  // throws the communicator's failure if it failed (before or while waiting).
  void wait();
  bool failed() const;
  // Aborts the communicator: operations still running are cancelled, and
  // wait() and every later call throw `code` with `message`.
  void abort(Code code, const std::string& message);
  // Waits for enqueued work (bounded by the watchdog's timeout), stops the
  // watchdog and destroys the communicator, or aborts it when it failed or its
  // work did not finish. Idempotent; never throws.
  void close() noexcept;

 private:
  struct Pending {
    uint64_t id;
    std::string what;  // "all_to_all_v #12"
    void* event;       // cudaEvent_t recorded after the operation
    Clock::time_point deadline;
  };

  NcclComm(const nccl::Api& api, const nccl::Status& status, int rank, int size, int device, Millis timeout);
  void init(const nccl::UniqueId& id);
  // Runs `calls` (a sequence of NCCL calls on comm_) for operation `op`, then
  // settles a non-blocking communicator and records the completion event.
  template <class Calls>
  void issue(const char* op, void* stream, Calls&& calls);
  // Polls a non-blocking communicator while it reports ncclInProgress.
  nccl::Result settle(nccl::Result r, Clock::time_point deadline);
  // Marks the communicator failed (first failure wins) and wakes waiters. Needs mu_.
  void mark_failed_locked(Code code, const std::string& message);
  // ncclCommAbort, once. Needs issue_mu_.
  void abort_comm_locked();
  [[noreturn]] void throw_failure_locked() const;
  void throw_if_failed(const char* op);
  std::string last_error() const;
  void watchdog();

  const nccl::Api& api_;
  const nccl::Status& status_;
  const int rank_, size_, device_;
  const Millis timeout_;
  bool non_blocking_ = false;

  // Serialises every NCCL call on comm_ (the calls of one operation, and abort/destroy).
  std::mutex issue_mu_;
  nccl::Comm comm_ = nullptr;  // null once aborted or destroyed
  uint64_t next_id_ = 0;

  // The watchdog's state.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool failed_ = false;
  Code fail_code_ = Code::Internal;
  std::string fail_message_;
  bool stop_ = false;
  bool closed_ = false;
  std::thread watchdog_;
};

}  // namespace moe::comm
