// The CUDA runtime calls of cuda/*.cu, for the emulator (cuda_emu.h): one
// device whose memory is host memory. Kernels and copies complete before the
// call that enqueues them returns, so streams need no ordering of their own;
// host functions (cudaLaunchHostFunc) run on one callback thread in the order
// they were enqueued, as the driver's thread runs them, and events complete
// once the host functions enqueued before them have run. The memory pool
// counts what is in use and keeps the high-water mark as reserved until trimmed.
#include "runtime.h"

#include <cuda_runtime.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

namespace emu {
namespace {

thread_local cudaError_t last_error = cudaSuccess;
thread_local int current_device = 0;

cudaError_t fail(cudaError_t err) {
  last_error = err;
  return err;
}

struct Streams {
  std::mutex mu;
  std::set<cudaStream_t> live;
  uintptr_t next = 0x1000;
};
Streams& streams() {
  static Streams* s = new Streams;  // never destroyed: tensors may be freed during exit
  return *s;
}

// The callback thread, and the count of host functions run so far.
struct Callbacks {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<cudaHostFn_t, void*>> queue;
  uint64_t enqueued = 0;
  uint64_t done = 0;
  bool started = false;

  void start() {
    if (started) return;
    started = true;
    std::thread([this] {
      std::unique_lock<std::mutex> lock(mu);
      for (;;) {
        cv.wait(lock, [this] { return !queue.empty(); });
        auto item = queue.front();
        queue.pop_front();
        lock.unlock();
        item.first(item.second);
        lock.lock();
        ++done;
        cv.notify_all();
      }
    }).detach();
  }
  void wait_for(uint64_t seq) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done >= seq; });
  }
};
Callbacks& callbacks() {
  static Callbacks* c = new Callbacks;
  return *c;
}

struct Event {
  uint64_t seq = 0;
  std::chrono::steady_clock::time_point at{};
  bool timing = true;
  bool recorded = false;
};

struct Block {
  void* base = nullptr;  // the mapping: the block, then its guard page
  size_t span = 0;
  size_t bytes = 0;  // what the pool counts
};

constexpr uint64_t kQuarantineBytes = 256ull << 20;

struct Pool {
  std::mutex mu;
  std::unordered_map<void*, Block> blocks;
  std::deque<Block> quarantine;  // freed, inaccessible, oldest first
  uint64_t quarantined = 0;
  uint64_t used = 0;
  uint64_t reserved = 0;
  uint64_t threshold = 0;
};
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}
int pool_token;  // the one device's cudaMemPool_t

std::mutex limits_mu;
std::map<const void*, size_t> limits;

uint64_t callbacks_enqueued() {
  Callbacks& c = callbacks();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.enqueued;
}

// Device memory as the GPU's allocator gives it, with three checks a GPU does
// not make: every block ends (to within its 256-byte rounding) at an
// inaccessible page, so a kernel that runs off the end of a buffer faults at
// once; a fresh block holds all-ones bytes (NaN as floats, -1 as integers),
// not zeros, so a kernel that reads memory nothing wrote shows it; and a freed
// block stays inaccessible for a while, so a use after free faults.
void* device_alloc(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (bytes + 255) / 256 * 256;
  const size_t span = (rounded + page - 1) / page * page + page;
  void* base = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  char* guard = static_cast<char*>(base) + span - page;
  mprotect(guard, page, PROT_NONE);
  char* p = guard - rounded;
  memset(p, 0xff, rounded);
  Pool& m = pool();
  std::lock_guard<std::mutex> lock(m.mu);
  m.blocks[p] = Block{base, span, rounded};
  m.used += rounded;
  if (m.used > m.reserved) m.reserved = m.used;
  return p;
}

cudaError_t device_free(void* p) {
  if (!p) return cudaSuccess;
  Pool& m = pool();
  Block b;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    auto it = m.blocks.find(p);
    if (it == m.blocks.end()) return fail(cudaErrorInvalidValue);
    b = it->second;
    m.used -= b.bytes;
    if (m.reserved > m.threshold && m.reserved > m.used) m.reserved = std::max<uint64_t>(m.used, m.threshold);
    m.blocks.erase(it);
  }
  // Freed blocks stay mapped but inaccessible for a while (the most recent
  // kQuarantineBytes of them), so a kernel that uses memory after its free faults.
  mprotect(b.base, b.span, PROT_NONE);
  std::vector<Block> expired;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.quarantine.push_back(b);
    m.quarantined += b.span;
    while (m.quarantined > kQuarantineBytes) {
      expired.push_back(m.quarantine.front());
      m.quarantined -= m.quarantine.front().span;
      m.quarantine.pop_front();
    }
  }
  for (const Block& e : expired) munmap(e.base, e.span);
  return cudaSuccess;
}

}  // namespace

void set_last_error(cudaError_t err) { last_error = err; }

size_t shared_limit(const void* kernel) {
  std::lock_guard<std::mutex> lock(limits_mu);
  auto it = limits.find(kernel);
  return it == limits.end() ? 0 : it->second;
}

bool stream_valid(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  Streams& st = streams();
  std::lock_guard<std::mutex> lock(st.mu);
  return st.live.count(s) != 0;
}

}  // namespace emu

using emu::fail;

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return emu::last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorNotSupported:
      return "cudaErrorNotSupported";
    default:
      return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorNotSupported:
      return "operation not supported";
    default:
      return "unknown error";
  }
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return fail(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  emu::current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (!device) return fail(cudaErrorInvalidValue);
  *device = emu::current_device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (!value) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    // Ampere: the emulated build has no sm_90a kernel to select.
    case cudaDevAttrComputeCapabilityMajor:
      *value = 8;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = 4;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = 227 * 1024;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    default:
      return fail(cudaErrorInvalidValue);
  }
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  emu::callbacks().wait_for(emu::callbacks_enqueued());
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  if (!stream) return fail(cudaErrorInvalidValue);
  emu::Streams& st = emu::streams();
  std::lock_guard<std::mutex> lock(st.mu);
  *stream = reinterpret_cast<cudaStream_t>(st.next);
  st.next += 0x10;
  st.live.insert(*stream);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  emu::Streams& st = emu::streams();
  std::lock_guard<std::mutex> lock(st.mu);
  return st.live.erase(stream) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  return cudaDeviceSynchronize();
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  if (!emu::stream_valid(stream) || !event) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;  // the work before the event's record has run already
}
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* data) {
  if (!emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (!fn) return fail(cudaErrorInvalidValue);
  emu::Callbacks& c = emu::callbacks();
  std::lock_guard<std::mutex> lock(c.mu);
  c.start();
  c.queue.emplace_back(fn, data);
  ++c.enqueued;
  c.cv.notify_all();
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (!event) return fail(cudaErrorInvalidValue);
  auto* e = new emu::Event;
  e->timing = (flags & cudaEventDisableTiming) == 0;
  *event = reinterpret_cast<cudaEvent_t>(e);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<emu::Event*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!event || !emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  auto* e = reinterpret_cast<emu::Event*>(event);
  e->seq = emu::callbacks_enqueued();
  e->at = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  auto* e = reinterpret_cast<emu::Event*>(event);
  emu::Callbacks& c = emu::callbacks();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.done >= e->seq ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  emu::callbacks().wait_for(reinterpret_cast<emu::Event*>(event)->seq);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms || !start || !end) return fail(cudaErrorInvalidValue);
  auto* a = reinterpret_cast<emu::Event*>(start);
  auto* b = reinterpret_cast<emu::Event*>(end);
  if (!a->timing || !b->timing || !a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  *ptr = bytes ? emu::device_alloc(bytes) : nullptr;
  return bytes && !*ptr ? fail(cudaErrorMemoryAllocation) : cudaSuccess;
}
cudaError_t cudaFree(void* ptr) { return emu::device_free(ptr); }
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream) {
  if (!emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  return cudaMalloc(ptr, bytes);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (!emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  return emu::device_free(ptr);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind) {
  if (bytes && (!dst || !src)) return fail(cudaErrorInvalidValue);
  if (bytes) memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t stream) {
  if (!emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device, size_t bytes,
                                cudaStream_t stream) {
  if (dst_device != 0 || src_device != 0) return fail(cudaErrorInvalidDevice);
  return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  if (!emu::stream_valid(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (bytes && !ptr) return fail(cudaErrorInvalidValue);
  if (bytes) memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) { return cudaMemsetAsync(ptr, value, bytes, nullptr); }
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  *ptr = aligned_alloc(256, (bytes + 255) / 256 * 256);
  return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned int) {
  if (!device || !host) return fail(cudaErrorInvalidValue);
  *device = host;  // mapped memory: one address space
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!pool) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  *pool = reinterpret_cast<cudaMemPool_t>(&emu::pool_token);
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, enum cudaMemPoolAttr attr, void* value) {
  if (!value) return fail(cudaErrorInvalidValue);
  emu::Pool& m = emu::pool();
  std::lock_guard<std::mutex> lock(m.mu);
  if (attr == cudaMemPoolAttrReleaseThreshold) m.threshold = *static_cast<uint64_t*>(value);
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, enum cudaMemPoolAttr attr, void* value) {
  if (!value) return fail(cudaErrorInvalidValue);
  emu::Pool& m = emu::pool();
  std::lock_guard<std::mutex> lock(m.mu);
  uint64_t* v = static_cast<uint64_t*>(value);
  switch (attr) {
    case cudaMemPoolAttrReservedMemCurrent:
      *v = m.reserved;
      return cudaSuccess;
    case cudaMemPoolAttrUsedMemCurrent:
      *v = m.used;
      return cudaSuccess;
    case cudaMemPoolAttrReleaseThreshold:
      *v = m.threshold;
      return cudaSuccess;
    default:
      return fail(cudaErrorInvalidValue);
  }
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, size_t keep) {
  emu::Pool& m = emu::pool();
  std::lock_guard<std::mutex> lock(m.mu);
  m.reserved = std::max<uint64_t>(m.used, std::min<uint64_t>(m.reserved, keep));
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (!func || value < 0) return fail(cudaErrorInvalidValue);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > 227 * 1024) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(emu::limits_mu);
    emu::limits[func] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  if (!attr || !func) return fail(cudaErrorInvalidValue);
  memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = 1024;
  attr->maxDynamicSharedSizeBytes = static_cast<int>(emu::shared_limit(func));
  return cudaSuccess;
}

}  // extern "C"
