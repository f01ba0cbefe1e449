#include "host_allocator.h"

#include <sys/mman.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace moe {
namespace {

constexpr size_t kSmall = size_t(1) << 20;    // below this, plain aligned_alloc
constexpr size_t kGranule = size_t(2) << 20;  // large blocks round up to 2 MiB (huge page size)

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

size_t size_class(size_t bytes) { return (bytes + kGranule - 1) / kGranule * kGranule; }

}  // namespace

void* host_alloc(size_t bytes) {
  if (bytes < kSmall) return std::aligned_alloc(64, (bytes + 63) / 64 * 64 + (bytes == 0 ? 64 : 0));
  size_t cls = size_class(bytes);
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
  void* p = std::aligned_alloc(kGranule, cls);
  if (p) madvise(p, cls, MADV_HUGEPAGE);  // fewer faults and TLB misses on big row copies
  return p;
}

void host_free(void* p, size_t bytes) {
  if (!p) return;
  if (bytes < kSmall) {
    std::free(p);
    return;
  }
  size_t cls = size_class(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + cls <= cache_limit()) {
      c.free_blocks.emplace(cls, p);
      c.cached += cls;
      return;
    }
  }
  std::free(p);
}

int64_t host_cached_bytes() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return int64_t(cache().cached);
}

void host_empty_cache() {
  std::vector<void*> blocks;
  {
    std::lock_guard<std::mutex> lock(cache().mu);
    for (auto& kv : cache().free_blocks) blocks.push_back(kv.second);
    cache().free_blocks.clear();
    cache().cached = 0;
  }
  for (void* p : blocks) std::free(p);
}

}  // namespace moe
