#include "host_allocator.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

namespace moe {
namespace {

constexpr size_t kSmall = size_t(64) << 10;   // below this, plain aligned_alloc (glibc's heap reuses these)
constexpr size_t kLarge = size_t(4) << 20;    // from here, size classes of 2 MiB
constexpr size_t kGranule = size_t(2) << 20;  // 2 MiB: the huge page size

size_t cache_limit() {
  static const size_t limit = [] {
    if (const char* env = std::getenv("MOE_EP_HOST_CACHE_BYTES")) return size_t(std::strtoull(env, nullptr, 10));
    return size_t(4) << 30;
  }();
  return limit;
}

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // size class -> block
  size_t cached = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may be freed during exit
  return *c;
}

std::atomic<int64_t> allocated{0}, from_system{0}, zeroed{0};
// Bytes taken from the system and not given back: live small blocks, live and cached large ones.
std::atomic<int64_t> held{0};

size_t small_bytes(size_t bytes) { return (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0); }

// Between 64 KiB and 4 MiB: a quarter of the power of two at or above the size (at most 25 %
// waste); above: whole 2 MiB granules.
size_t size_class(size_t bytes) {
  if (bytes >= kLarge) return (bytes + kGranule - 1) / kGranule * kGranule;
  size_t p = kSmall;
  while (p < bytes) p <<= 1;
  const size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

}  // namespace

void* host_alloc(size_t bytes) {
  allocated += int64_t(bytes);
  if (bytes < kSmall) {
    const size_t n = small_bytes(bytes);
    void* p = std::aligned_alloc(64, n);
    if (p) held += int64_t(n);
    return p;
  }
  const size_t cls = size_class(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(cls);
    if (it != c.free_blocks.end()) {
      void* p = it->second;
      c.free_blocks.erase(it);
      c.cached -= cls;
      return p;
    }
  }
  from_system += int64_t(cls);
  const size_t align = cls >= kLarge ? kGranule : 64;
  void* p = std::aligned_alloc(align, cls);
  if (!p) return p;
  held += int64_t(cls);
  if (cls >= kLarge) madvise(p, cls, MADV_HUGEPAGE);  // fewer faults and TLB misses on big row copies
  return p;
}

void host_free(void* p, size_t bytes, bool cache_it) {
  if (!p) return;
  if (bytes < kSmall) {
    std::free(p);
    held -= int64_t(small_bytes(bytes));
    return;
  }
  const size_t cls = size_class(bytes);
  if (cache_it) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + cls <= cache_limit()) {
      c.free_blocks.emplace(cls, p);
      c.cached += cls;
      return;
    }
  }
  std::free(p);
  held -= int64_t(cls);
}

int64_t host_held_bytes() { return held.load(std::memory_order_relaxed); }

int64_t host_cached_bytes() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return int64_t(cache().cached);
}

void host_empty_cache() {
  std::vector<void*> blocks;
  int64_t released = 0;
  {
    std::lock_guard<std::mutex> lock(cache().mu);
    for (auto& kv : cache().free_blocks) blocks.push_back(kv.second);
    released = int64_t(cache().cached);
    cache().free_blocks.clear();
    cache().cached = 0;
  }
  for (void* p : blocks) std::free(p);
  held -= released;
}

void note_zeroed(size_t bytes) { zeroed += int64_t(bytes); }

HostCounters host_counters() {
  HostCounters h;
  h.allocated_bytes = allocated.load();
  h.system_bytes = from_system.load();
  h.zeroed_bytes = zeroed.load();
  struct rusage u {};
  if (getrusage(RUSAGE_SELF, &u) == 0) {
    h.minor_faults = int64_t(u.ru_minflt);
    h.major_faults = int64_t(u.ru_majflt);
  }
  return h;
}

}  // namespace moe
