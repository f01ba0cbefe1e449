#include "nccl_comm.h"

#include <algorithm>
#include <cstring>
#include <utility>

#ifdef MOE_EP_WITH_CUDA
#include "../../cuda/launchers.h"
#endif

namespace moe::comm {
namespace {

using namespace std::chrono_literals;
using nccl::Result;

// The few CUDA calls the communicator needs, through cuda/launchers.h. Without
// CUDA in the build nccl::api() has already refused, so these never run there.
namespace cu {
#ifdef MOE_EP_WITH_CUDA
int set_device(int d) { return moe_cuda_set_device(d); }
int get_device(int* d) { return moe_cuda_get_device(d); }
int event_create(void** e) { return moe_cuda_event_create(e); }
int event_record(void* e, void* stream) { return moe_cuda_event_record(e, stream); }
int event_query(void* e, int* done) { return moe_cuda_event_query(e, done); }
void event_destroy(void* e) { moe_cuda_event_destroy(e); }
std::string error(int code) { return moe_cuda_error_string(code); }
#else
constexpr int kNoCuda = -100;
int set_device(int) { return kNoCuda; }
int get_device(int*) { return kNoCuda; }
int event_create(void**) { return kNoCuda; }
int event_record(void*, void*) { return kNoCuda; }
int event_query(void*, int*) { return kNoCuda; }
void event_destroy(void*) {}
std::string error(int) { return "this build has no CUDA code"; }
#endif
}  // namespace cu

// A failed NCCL call as an error code: a peer that went away shows up as a
// remote or system (socket) error; anything else is not the peer's doing.
Code code_for(Result r) {
  switch (r) {
    case nccl::kRemoteError:
    case nccl::kSystemError:
      return Code::PeerLost;
    case nccl::kTimeout:
    case nccl::kInProgress:
      return Code::Timeout;
    default:
      return Code::Internal;
  }
}

std::string ms(Millis t) { return std::to_string(t.count()) + " ms"; }

// Keeps the first result that is an error (ncclInProgress is not one).
struct FirstError {
  Result first = nccl::kSuccess;
  void keep(Result r) {
    if (first == nccl::kSuccess && r != nccl::kSuccess && r != nccl::kInProgress) first = r;
  }
};

}  // namespace

void check_all_to_all_v(const NcclAllToAllV& a, int world_size) {
  const size_t n = static_cast<size_t>(world_size);
  auto side = [&](const char* name, const void* buf, int64_t elements, const std::vector<int64_t>& counts,
                  const std::vector<int64_t>& offsets) {
    const std::string s = name;
    if (counts.size() != n || offsets.size() != n) {
      fail(Code::Value, "nccl all_to_all_v: expected " + std::to_string(n) + " " + s +
                            " counts and offsets (one per rank) but received " + std::to_string(counts.size()) +
                            " and " + std::to_string(offsets.size()));
    }
    if (elements < 0)
      fail(Code::Value, "nccl all_to_all_v: expected " + s + " elements >= 0 but received " + std::to_string(elements));
    bool any = false;
    for (size_t p = 0; p < n; ++p) {
      const int64_t c = counts[p], o = offsets[p];
      if (c < 0 || o < 0) {
        fail(Code::Value, "nccl all_to_all_v: expected " + s + " counts and offsets >= 0 but received count " +
                              std::to_string(c) + ", offset " + std::to_string(o) + " for rank " + std::to_string(p));
      }
      if (c > elements || o > elements - c) {
        fail(Code::Value, "nccl all_to_all_v: expected the " + s + " range of rank " + std::to_string(p) +
                              " inside the buffer of " + std::to_string(elements) + " elements but received offset " +
                              std::to_string(o) + " + count " + std::to_string(c));
      }
      any = any || c > 0;
    }
    if (any && !buf) fail(Code::Value, "nccl all_to_all_v: expected a " + s + " buffer but received a null pointer");
  };
  side("send", a.send, a.send_elements, a.send_counts, a.send_offsets);
  side("recv", a.recv, a.recv_elements, a.recv_counts, a.recv_offsets);

  // Receives run concurrently: two ranges that overlap would race.
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (size_t p = 0; p < n; ++p)
    if (a.recv_counts[p] > 0) ranges.emplace_back(a.recv_offsets[p], a.recv_offsets[p] + a.recv_counts[p]);
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      fail(Code::Value, "nccl all_to_all_v: expected disjoint recv ranges but [" + std::to_string(ranges[i - 1].first) +
                            ", " + std::to_string(ranges[i - 1].second) + ") and [" + std::to_string(ranges[i].first) +
                            ", " + std::to_string(ranges[i].second) + ") overlap");
    }
  }
}

nccl::DataType nccl_type(DType dtype, const nccl::Status& status) {
  switch (dtype) {
    case DType::F32:
      return nccl::kFloat32;
    case DType::F16:
      return nccl::kFloat16;
    case DType::BF16:
      if (!status.supports_bf16) {
        fail(Code::NcclUnavailable, "nccl: bfloat16 needs NCCL >= " + nccl::version_string(nccl::kBf16Version) +
                                        " but the loaded library is NCCL " + status.version);
      }
      return nccl::kBfloat16;
    case DType::I32:
      return nccl::kInt32;
    case DType::I64:
      return nccl::kInt64;
  }
  fail(Code::Dtype, "nccl: unsupported dtype");
}

// ---- creation ----------------------------------------------------------------------------

NcclComm::NcclComm(const nccl::Api& api, const nccl::Status& status, int rank, int size, int device, Millis timeout)
    : api_(api), status_(status), rank_(rank), size_(size), device_(device), timeout_(timeout) {}

std::shared_ptr<NcclComm> NcclComm::create(Store& store, int rank, int size, const std::string& prefix, Millis timeout,
                                           int device) {
  const nccl::Api& api = nccl::api();  // ERR_MOE_NCCL_UNAVAILABLE with the reason
  const nccl::Status& status = nccl::status();
  if (size < 1) fail(Code::Value, "nccl: expected size >= 1 but received " + std::to_string(size));
  if (rank < 0 || rank >= size) {
    fail(Code::Value, "nccl: expected 0 <= rank < " + std::to_string(size) + " but received " + std::to_string(rank));
  }
  if (timeout.count() <= 0) fail(Code::Value, "nccl: expected a timeout > 0 ms but received " + ms(timeout));

  int dev = device;
  if (dev >= 0) {
    if (int rc = cu::set_device(dev))
      fail(Code::Device, "nccl: cannot use CUDA device " + std::to_string(dev) + ": " + cu::error(rc));
  } else if (int rc = cu::get_device(&dev)) {
    fail(Code::Device, "nccl: no current CUDA device: " + cu::error(rc));
  }

  nccl::UniqueId id;
  std::memset(&id, 0, sizeof id);
  const std::string key = prefix + "/nccl/unique_id";
  if (rank == 0) {
    if (Result r = api.GetUniqueId(&id)) {
      fail(Code::NcclUnavailable, "nccl: ncclGetUniqueId failed (no usable network interface?): " + nccl::describe(r));
    }
    const uint8_t* p = reinterpret_cast<const uint8_t*>(id.internal);
    store.set(key, Bytes(p, p + nccl::kUniqueIdBytes));
  } else {
    const Bytes b = store.get(key, timeout);  // ERR_MOE_TIMEOUT naming the key when rank 0 never sets it
    if (b.size() != nccl::kUniqueIdBytes) {
      fail(Code::Value, "nccl: expected a unique id of " + std::to_string(nccl::kUniqueIdBytes) + " bytes under " +
                            describe_key(key) + " but received " + std::to_string(b.size()));
    }
    std::memcpy(id.internal, b.data(), nccl::kUniqueIdBytes);
  }

  std::shared_ptr<NcclComm> comm(new NcclComm(api, status, rank, size, dev, timeout));
  comm->init(id);
  comm->watchdog_ = std::thread([c = comm.get()] { c->watchdog(); });
  return comm;
}

void NcclComm::init(const nccl::UniqueId& id) {
  std::lock_guard<std::mutex> issue_lock(issue_mu_);
  const auto deadline = deadline_after(timeout_);
  Result r;
  if (api_.CommInitRankConfig) {
    // NCCL copies sizeof(config) bytes, padding included: zero it all first.
    nccl::ConfigV21400 config;
    std::memset(&config, 0, sizeof config);
    config.size = sizeof config;
    config.magic = nccl::kConfigMagic;
    config.version = nccl::kConfigVersion;
    config.blocking = 0;
    non_blocking_ = true;
    r = api_.CommInitRankConfig(&comm_, size_, id, rank_, &config);
  } else {
    r = api_.CommInitRank(&comm_, size_, id, rank_);
  }
  if (r == nccl::kInProgress && comm_) r = settle(r, deadline);
  if (r == nccl::kSuccess) return;

  const std::string who = "nccl init (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";
  const std::string message = r == nccl::kInProgress
                                  ? who + " did not finish within " + ms(timeout_) +
                                        ": a peer never arrived or cannot be reached; the communicator was aborted"
                                  : who + " failed: " + nccl::describe(r) + last_error();
  abort_comm_locked();
  fail(code_for(r), message);
}

// ---- operations ------------------------------------------------------------------------------

Result NcclComm::settle(Result r, Clock::time_point deadline) {
  auto pause = std::chrono::microseconds(20);
  while (r == nccl::kInProgress) {
    if (Clock::now() >= deadline) return r;
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, 2ms);
    Result async = nccl::kSuccess;
    const Result q = api_.CommGetAsyncError(comm_, &async);
    r = q != nccl::kSuccess ? q : async;
  }
  return r;
}

std::string NcclComm::last_error() const {
  if (!api_.GetLastError) return "";
  const char* text = api_.GetLastError(comm_);
  return text && *text ? std::string(" (") + text + ")" : "";
}

void NcclComm::mark_failed_locked(Code code, const std::string& message) {
  if (!failed_) {
    failed_ = true;
    fail_code_ = code;
    fail_message_ = message;
  }
  cv_.notify_all();
}

void NcclComm::abort_comm_locked() {
  if (!comm_) return;
  api_.CommAbort(comm_);  // frees the communicator whatever it returns; nothing more to do with it
  comm_ = nullptr;
}

void NcclComm::throw_failure_locked() const { throw Error(fail_code_, fail_message_); }

void NcclComm::throw_if_failed(const char* op) {
  std::lock_guard<std::mutex> lk(mu_);
  if (failed_) throw_failure_locked();
  if (closed_) fail(Code::Disposed, std::string("nccl ") + op + ": the communicator is closed");
}

template <class Calls>
void NcclComm::issue(const char* op, void* stream, Calls&& calls) {
  std::lock_guard<std::mutex> issue_lock(issue_mu_);
  throw_if_failed(op);
  if (!comm_) fail(Code::Disposed, std::string("nccl ") + op + ": the communicator is closed");
  if (int rc = cu::set_device(device_)) {
    fail(Code::Device,
         std::string("nccl ") + op + ": cannot use CUDA device " + std::to_string(device_) + ": " + cu::error(rc));
  }
  const uint64_t id = ++next_id_;
  const std::string what = std::string(op) + " #" + std::to_string(id);
  const auto deadline = deadline_after(timeout_);

  Result r = calls();
  r = settle(r, deadline);
  if (r != nccl::kSuccess) {
    const std::string who = "nccl " + what + " (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";
    const std::string message =
        r == nccl::kInProgress
            ? who + " was still being enqueued after " + ms(timeout_) +
                  " (a peer that never connects?); the communicator was aborted"
            : who + " failed: " + nccl::describe(r) + last_error() + "; the communicator was aborted";
    {
      std::lock_guard<std::mutex> lk(mu_);
      mark_failed_locked(code_for(r), message);
    }
    abort_comm_locked();
    std::lock_guard<std::mutex> lk(mu_);
    throw_failure_locked();
  }

  void* event = nullptr;
  int rc = cu::event_create(&event);
  if (rc == 0) rc = cu::event_record(event, stream);
  if (rc != 0) {
    cu::event_destroy(event);
    const std::string message = "nccl " + what + ": cannot record its completion event: " + cu::error(rc) +
                                "; the communicator was aborted, since the operation cannot be watched";
    {
      std::lock_guard<std::mutex> lk(mu_);
      mark_failed_locked(Code::Internal, message);
    }
    abort_comm_locked();
    fail(Code::Internal, message);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    pending_.push_back(Pending{id, what, event, deadline});
  }
  cv_.notify_all();
}

void NcclComm::all_to_all_v(const NcclAllToAllV& a, DType dtype, void* stream) {
  check_all_to_all_v(a, size_);
  const nccl::DataType type = nccl_type(dtype, status_);
  const size_t es = dtype_size(dtype);
  const char* send = static_cast<const char*>(a.send);
  char* recv = static_cast<char*>(a.recv);
  issue("all_to_all_v", stream, [&] {
    // Zero counts are skipped on both sides (what p sends to q, q receives
    // from p), as PyTorch's alltoall_base does, so no empty message is matched.
    const Result start = api_.GroupStart();
    if (start != nccl::kSuccess && start != nccl::kInProgress) return start;  // no group was opened
    FirstError err;
    for (int p = 0; p < size_; ++p) {
      if (a.send_counts[p] > 0) {
        err.keep(api_.Send(send + size_t(a.send_offsets[p]) * es, size_t(a.send_counts[p]), type, p, comm_, stream));
      }
      if (a.recv_counts[p] > 0) {
        err.keep(api_.Recv(recv + size_t(a.recv_offsets[p]) * es, size_t(a.recv_counts[p]), type, p, comm_, stream));
      }
    }
    const Result end = api_.GroupEnd();  // always closes the group, even after an error inside it
    return err.first != nccl::kSuccess ? err.first : end;
  });
}

void NcclComm::all_reduce(const void* send, void* recv, int64_t count, DType dtype, NcclReduceOp op, void* stream) {
  if (count < 0) fail(Code::Value, "nccl all_reduce: expected count >= 0 but received " + std::to_string(count));
  if (count > 0 && (!send || !recv))
    fail(Code::Value, "nccl all_reduce: expected send and recv buffers but received a null pointer");
  const nccl::DataType type = nccl_type(dtype, status_);
  nccl::RedOp red = nccl::kSum;
  switch (op) {
    case NcclReduceOp::Sum:
      red = nccl::kSum;
      break;
    case NcclReduceOp::Prod:
      red = nccl::kProd;
      break;
    case NcclReduceOp::Max:
      red = nccl::kMax;
      break;
    case NcclReduceOp::Min:
      red = nccl::kMin;
      break;
    case NcclReduceOp::Avg:
      if (!nccl::at_least(nccl::decode_version(status_.version_code), 2, 10, 0)) {
        fail(Code::NcclUnavailable,
             "nccl all_reduce: the average needs NCCL >= 2.10.0 but the loaded library is NCCL " + status_.version);
      }
      red = nccl::kAvg;
      break;
  }
  if (count == 0) {
    throw_if_failed("all_reduce");
    return;  // nothing to move; every rank has the same count, so every rank skips it
  }
  issue("all_reduce", stream, [&] { return api_.AllReduce(send, recv, size_t(count), type, red, comm_, stream); });
}

void NcclComm::broadcast(const void* send, void* recv, int64_t count, DType dtype, int root, void* stream) {
  if (count < 0) fail(Code::Value, "nccl broadcast: expected count >= 0 but received " + std::to_string(count));
  if (root < 0 || root >= size_) {
    fail(Code::Value,
         "nccl broadcast: expected 0 <= root < " + std::to_string(size_) + " but received " + std::to_string(root));
  }
  if (count > 0 && (!recv || (rank_ == root && !send))) {
    fail(Code::Value, "nccl broadcast: expected the buffers but received a null pointer");
  }
  const nccl::DataType type = nccl_type(dtype, status_);
  if (count == 0) {
    throw_if_failed("broadcast");
    return;
  }
  issue("broadcast", stream, [&] { return api_.Broadcast(send, recv, size_t(count), type, root, comm_, stream); });
}

// ---- waiting, faults, teardown -----------------------------------------------------------------

void NcclComm::wait() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return failed_ || pending_.empty(); });
  if (failed_) throw_failure_locked();
}

bool NcclComm::failed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return failed_;
}

void NcclComm::abort(Code code, const std::string& message) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    mark_failed_locked(code, message);
  }
  {
    std::lock_guard<std::mutex> issue_lock(issue_mu_);
    abort_comm_locked();
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (Pending& p : pending_) cu::event_destroy(p.event);
  pending_.clear();
  cv_.notify_all();
}

void NcclComm::watchdog() {
  if (device_ >= 0) cu::set_device(device_);
  std::unique_lock<std::mutex> lk(mu_);
  auto next_async_check = Clock::now();
  while (!stop_) {
    cv_.wait_for(lk, pending_.empty() || failed_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1));
    if (stop_) break;
    if (failed_) continue;

    bool bad = false;
    Code code = Code::Internal;
    std::string message;
    const std::string who = " (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";

    // 1. operations that finished (in any order: they may be on different streams)
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      const int rc = cu::event_query(it->event, &done);
      if (rc != 0) {
        bad = true;
        message = "nccl " + it->what + who + ": CUDA reported " + cu::error(rc) +
                  " on its stream; the communicator was aborted";
        break;
      }
      if (!done) {
        ++it;
        continue;
      }
      cu::event_destroy(it->event);
      it = pending_.erase(it);
    }
    if (pending_.empty()) cv_.notify_all();

    // 2. operations past their deadline
    const auto now = Clock::now();
    for (const Pending& p : pending_) {
      if (bad || now < p.deadline) continue;
      bad = true;
      code = Code::Timeout;
      message = "nccl " + p.what + who + " did not finish within " + ms(timeout_) +
                "; the communicator was aborted (a peer may be dead, hung, or out of step)";
    }

    // 3. errors NCCL found on its own (a peer's connection lost, say)
    if (!bad && now >= next_async_check) {
      next_async_check = now + 50ms;
      std::unique_lock<std::mutex> issue_lock(issue_mu_,
                                              std::try_to_lock);  // skip the round while an issuer calls NCCL
      if (issue_lock.owns_lock() && comm_) {
        Result async = nccl::kSuccess;
        const Result q = api_.CommGetAsyncError(comm_, &async);
        if (q != nccl::kSuccess) async = q;
        if (async != nccl::kSuccess && async != nccl::kInProgress) {
          bad = true;
          code = code_for(async);
          message =
              "nccl" + who + ": the communicator reported " + nccl::describe(async) + last_error() + "; it was aborted";
        }
      }
    }
    if (!bad) continue;

    // Waiters learn of the failure first; then the communicator is aborted,
    // which cancels its kernels, once no issuer is inside a NCCL call.
    mark_failed_locked(code, message);
    lk.unlock();
    std::unique_lock<std::mutex> issue_lock(issue_mu_, std::defer_lock);
    while (!issue_lock.try_lock()) {
      {
        std::lock_guard<std::mutex> g(mu_);
        if (stop_) break;
      }
      std::this_thread::sleep_for(5ms);
    }
    if (issue_lock.owns_lock()) {
      abort_comm_locked();
      issue_lock.unlock();
    }
    lk.lock();
    for (Pending& p : pending_) cu::event_destroy(p.event);
    pending_.clear();
    cv_.notify_all();
  }
}

void NcclComm::close() noexcept {
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (closed_) return;
    closed_ = true;
    // The watchdog bounds this wait: every pending operation finishes, or fails at its deadline.
    if (watchdog_.joinable()) cv_.wait(lk, [&] { return failed_ || pending_.empty(); });
    stop_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();

  // An issuer stuck inside a blocking NCCL call (NCCL < 2.14) holds issue_mu_
  // forever; then the communicator is left as it is rather than hang here too.
  std::unique_lock<std::mutex> issue_lock(issue_mu_, std::defer_lock);
  const auto give_up = deadline_after(timeout_);
  while (!issue_lock.try_lock()) {
    if (Clock::now() >= give_up) return;
    std::this_thread::sleep_for(5ms);
  }
  if (comm_) {
    bool healthy;
    {
      std::lock_guard<std::mutex> lk(mu_);
      healthy = !failed_ && pending_.empty();
    }
    if (healthy) {
      api_.CommDestroy(comm_);
      comm_ = nullptr;
    } else {
      abort_comm_locked();
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (Pending& p : pending_) cu::event_destroy(p.event);
  pending_.clear();
  cv_.notify_all();
}

NcclComm::~NcclComm() { close(); }

}  // namespace moe::comm
