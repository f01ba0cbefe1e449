#include "cuda_device.h"

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "../../cuda/launchers.h"
#include "cuda_probe.h"
#include "device_checks.h"

namespace moe::cuda {
namespace {

constexpr int kMaxDevices = 16;

struct DeviceState {
  int index = 0;
  void* compute = nullptr;
  void* comm = nullptr;
  void* status = nullptr;
  std::mutex checks_mu;
  CheckRegistry checks;
  std::mutex sync_mu;      // one synchronisation at a time reads and resets the status word
  std::mutex readback_mu;  // one Readback at a time; its buffer and event, made on first use
  void* readback_host = nullptr;
  void* readback_device = nullptr;
  void* readback_event = nullptr;
};

struct Devices {
  std::mutex mu;  // held while a device's state is created
  std::array<std::atomic<DeviceState*>, kMaxDevices> states{};
};

// Never destroyed: tensors may be freed while the process exits.
Devices& devices() {
  static Devices* d = new Devices();
  return *d;
}

std::string launcher_error(int rc) {
  if (rc == MOE_CUDA_ERR_NOT_BUILT) return "this build has no CUDA code";
  return moe_cuda_error_string(rc);
}

// The device's state, created on first use (streams, status word, pool).
DeviceState& state(Device device) {
  require(device, "cannot use " + device.str());
  Devices& all = devices();
  std::atomic<DeviceState*>& slot = all.states[size_t(device.index)];
  if (DeviceState* ready = slot.load(std::memory_order_acquire)) return *ready;
  std::lock_guard<std::mutex> lock(all.mu);
  if (DeviceState* ready = slot.load(std::memory_order_acquire)) return *ready;
  auto s = std::make_unique<DeviceState>();
  s->index = device.index;
  const std::string what = "setting up " + device.str();
  check(moe_cuda_set_device(device.index), what, device);
  check(moe_cuda_pool_configure(device.index), what, device);
  check(moe_cuda_stream_create(device.index, &s->compute), what, device);
  check(moe_cuda_stream_create(device.index, &s->comm), what, device);
  check(moe_cuda_malloc(&s->status, moe_cuda_status_bytes()), what, device);
  check(moe_cuda_status_reset(s->status, s->compute), what, device);
  DeviceState* made = s.release();
  slot.store(made, std::memory_order_release);
  return *made;
}

std::vector<int> used_devices() {
  std::vector<int> used;
  for (int i = 0; i < kMaxDevices; ++i)
    if (devices().states[size_t(i)].load(std::memory_order_acquire)) used.push_back(i);
  return used;
}

void set_current(Device device) { check(moe_cuda_set_device(device.index), "selecting " + device.str(), device); }

struct HostCallback {
  std::function<void()> fn;
};
void run_host_callback(void* p) {
  auto* cb = static_cast<HostCallback*>(p);
  cb->fn();
  delete cb;
}

}  // namespace

void require(Device device, const std::string& what) {
  if (device.kind != Device::CUDA) fail(Code::Internal, what + ": not a CUDA device");
  const CudaStatus& st = cuda_status();
  if (!st.available) fail(Code::CudaUnavailable, what + ": " + st.reason);
  if (device.index >= st.device_count)
    fail(Code::Device, what + ": expected a CUDA device index below " + std::to_string(st.device_count) +
                           " (the devices this machine has) but received " + device.str());
}

void check(int rc, const std::string& op, Device device) {
  if (rc == 0) return;
  if (rc == MOE_CUDA_ERR_NOT_BUILT) fail(Code::CudaUnavailable, op + ": this build has no CUDA code");
  if (rc == MOE_CUDA_ERR_UNSUPPORTED)
    fail(Code::Unsupported, op + ": no compiled CUDA kernel covers these arguments on " + device.str());
  if (rc == MOE_CUDA_ERR_INVALID_ARGUMENT)
    fail(Code::Internal, op + ": the CUDA launcher refused its arguments on " + device.str() +
                             " (arguments the op had accepted: a bug in moe-ep)");
  fail(Code::Internal, op + ": CUDA reported " + launcher_error(rc) + " on " + device.str());
}

Scope::Scope(Device device) : device_(device) {
  DeviceState& s = state(device);
  set_current(device);
  compute_ = s.compute;
  comm_ = s.comm;
  status_ = s.status;
}

uint32_t Scope::add_check(Code code, std::string before, std::string after) const {
  DeviceState& s = state(device_);
  std::lock_guard<std::mutex> lock(s.checks_mu);
  return s.checks.add(code, std::move(before), std::move(after));
}

void* allocate(size_t bytes, Device device) {
  if (bytes == 0) return nullptr;
  Scope scope(device);
  void* p = nullptr;
  const int rc = moe_cuda_malloc_async(&p, bytes, scope.stream());
  if (rc != 0)
    fail(Code::Value,
         "cannot allocate " + std::to_string(bytes) + " bytes on " + device.str() + ": " + launcher_error(rc));
  return p;
}

void release(void* ptr, Device device) noexcept {
  if (!ptr) return;
  DeviceState* s = devices().states[size_t(device.index)].load(std::memory_order_acquire);
  if (!s) return;  // cannot happen: the pointer came from allocate()
  // Errors are dropped: a destructor cannot report them, and during exit the
  // runtime may already be gone. The thread's current device is restored: a
  // tensor may be freed in the middle of a task that works on another device.
  int previous = -1;
  const bool had = moe_cuda_get_device(&previous) == 0;
  if (had && previous != device.index) moe_cuda_set_device(device.index);
  moe_cuda_free_async(ptr, s->compute);
  if (had && previous != device.index) moe_cuda_set_device(previous);
}

void memset_async(void* ptr, int value, size_t bytes, Device device) {
  if (bytes == 0) return;
  Scope scope(device);
  check(moe_cuda_memset_async(ptr, value, bytes, scope.stream()), "memset", device);
}

void after_stream(Device device, std::function<void()> fn) {
  Scope scope(device);
  auto* cb = new HostCallback{std::move(fn)};
  const int rc = moe_cuda_launch_host_func(scope.stream(), run_host_callback, cb);
  if (rc != 0) {
    moe_cuda_stream_synchronize(scope.stream());
    run_host_callback(cb);
    check(rc, "queueing a host callback", device);
  }
}

void upload(void* dst, const void* src, size_t bytes, Device device) {
  if (bytes == 0) return;
  upload(dst, std::vector<uint8_t>(static_cast<const uint8_t*>(src), static_cast<const uint8_t*>(src) + bytes), device);
}

void upload(void* dst, std::vector<uint8_t> staging, Device device) {
  if (staging.empty()) return;
  Scope scope(device);
  auto held = std::make_shared<std::vector<uint8_t>>(std::move(staging));
  check(moe_cuda_memcpy_async(dst, held->data(), held->size(), scope.stream()), "copy to " + device.str(), device);
  after_stream(device, [held] {});
}

void copy_async(void* dst, const void* src, size_t bytes, Device device) {
  if (bytes == 0) return;
  Scope scope(device);
  check(moe_cuda_memcpy_async(dst, src, bytes, scope.stream()), "copy on " + device.str(), device);
}

void copy_peer_async(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  Scope scope(dst_device);
  check(moe_cuda_memcpy_peer_async(dst, dst_device.index, src, src_device.index, bytes, scope.stream()),
        "copy from " + src_device.str() + " to " + dst_device.str(), dst_device);
}

void download(void* dst, const void* src, size_t bytes, Device device) {
  synchronize(device);
  if (bytes == 0) return;
  Scope scope(device);
  check(moe_cuda_memcpy_async(dst, src, bytes, scope.stream()), "copy from " + device.str(), device);
  check(moe_cuda_stream_synchronize(scope.stream()), "copy from " + device.str(), device);
}

void comm_waits_for_compute(Device device) {
  Scope scope(device);
  check(moe_cuda_stream_wait_stream(scope.comm_stream(), scope.stream()), "ordering streams", device);
}

void compute_waits_for_comm(Device device) {
  Scope scope(device);
  check(moe_cuda_stream_wait_stream(scope.stream(), scope.comm_stream()), "ordering streams", device);
}

void stream_waits_for(Device waiter, Device signaler) {
  Scope to(waiter);
  // The launcher records its event on the current device, which must be the
  // signaler's (an event is recorded on a stream of its own device); a stream
  // may wait on an event of another device.
  Scope from(signaler);
  check(moe_cuda_stream_wait_stream(to.stream(), from.stream()), "ordering streams", waiter);
}

void synchronize(Device device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> sync_lock(s.sync_mu);
  uint64_t mark;
  {
    std::lock_guard<std::mutex> lock(s.checks_mu);
    mark = s.checks.mark();
  }
  set_current(device);
  const std::string what = "synchronizing " + device.str();
  int rc = moe_cuda_stream_synchronize(s.comm);
  if (rc == 0) rc = moe_cuda_stream_synchronize(s.compute);
  if (rc != 0)
    fail(Code::Internal, what + ": CUDA reported " + launcher_error(rc) +
                             " (a fault in queued work; the device's state since the last synchronisation is lost)");
  uint32_t tag = 0;
  int64_t detail = 0;
  check(moe_cuda_status_read(s.status, &tag, &detail, s.compute), what, device);
  if (tag != 0) check(moe_cuda_status_reset(s.status, s.compute), what, device);
  std::optional<Error> err;
  {
    std::lock_guard<std::mutex> lock(s.checks_mu);
    err = s.checks.settle(tag, detail, mark);
  }
  if (err) throw *err;
}

Readback::Readback(Device device)
    : device_(device), lock_(nullptr), mark_(0), host_(nullptr), words_device_(nullptr), event_(nullptr), words_{} {
  DeviceState& s = state(device);
  s.readback_mu.lock();
  lock_ = &s.readback_mu;
  try {
    set_current(device);
    const std::string what = "setting up read-backs on " + device.str();
    if (s.readback_event == nullptr) {
      check(moe_cuda_host_alloc_mapped(kWords * sizeof(int64_t), &s.readback_host, &s.readback_device), what, device);
      check(moe_cuda_event_create(&s.readback_event), what, device);
    }
  } catch (...) {
    s.readback_mu.unlock();
    throw;
  }
  host_ = s.readback_host;
  words_device_ = s.readback_device;
  event_ = s.readback_event;
  std::lock_guard<std::mutex> lock(s.checks_mu);
  mark_ = s.checks.mark();
}

Readback::~Readback() { static_cast<std::mutex*>(lock_)->unlock(); }

const int64_t* Readback::wait() {
  DeviceState& s = state(device_);
  set_current(device_);
  const std::string what = "reading back from " + device_.str();
  const int rc = moe_cuda_event_synchronize(event_);
  if (rc != 0)
    fail(Code::Internal, what + ": CUDA reported " + launcher_error(rc) +
                             " (a fault in queued work; the device's state since the last synchronisation is lost)");
  std::memcpy(words_, host_, sizeof words_);
  const uint32_t tag = static_cast<uint32_t>(words_[0]);
  std::lock_guard<std::mutex> sync_lock(s.sync_mu);
  if (tag != 0) check(moe_cuda_status_reset(s.status, s.compute), what, device_);
  std::optional<Error> err;
  {
    std::lock_guard<std::mutex> lock(s.checks_mu);
    err = s.checks.settle(tag, words_[1], mark_);
  }
  if (err) throw *err;
  return words_;
}

void synchronize_all() {
  std::vector<int> used = used_devices();
  for (int i : used) synchronize(Device{Device::CUDA, i});
}

int64_t cached_bytes(Device device) {
  if (device.index < 0 || device.index >= kMaxDevices) return 0;
  DeviceState* s = devices().states[size_t(device.index)].load(std::memory_order_acquire);
  if (!s) return 0;
  uint64_t reserved = 0, used = 0;
  if (moe_cuda_pool_usage(device.index, &reserved, &used) != 0 || reserved < used) return 0;
  return int64_t(reserved - used);
}

void empty_cache() {
  std::vector<int> used = used_devices();
  for (int i : used) check(moe_cuda_pool_trim(i), "emptying the cache", Device{Device::CUDA, i});
}

TimingEvent::TimingEvent(Device device) : device_(device) {
  Scope scope(device);
  check(moe_cuda_timing_event_create(&event_), "creating a timing event", device);
  const int rc = moe_cuda_event_record(event_, scope.stream());
  if (rc != 0) {
    moe_cuda_event_destroy(event_);
    check(rc, "recording a timing event", device);
  }
}

TimingEvent::~TimingEvent() {
  if (event_) moe_cuda_event_destroy(event_);
}

double TimingEvent::elapsed_ms_since(const TimingEvent& start) const {
  if (start.device_ != device_)
    fail(Code::Device,
         "elapsed time: expected two events on " + device_.str() + " but received one on " + start.device_.str());
  float ms = 0;
  check(moe_cuda_event_elapsed_ms(start.event_, event_, &ms), "elapsed time", device_);
  return ms;
}

int dtype_code(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return MOE_CUDA_F32;
    case DType::BF16:
      return MOE_CUDA_BF16;
    case DType::F16:
      return MOE_CUDA_F16;
    default:
      fail(Code::Internal, std::string("no CUDA dtype code for ") + dtype_name(dtype));
  }
}

}  // namespace moe::cuda
