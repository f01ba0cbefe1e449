// Host memory for CPU tensors and the ops' scratch. Blocks are cached after
// free and handed out again for the same size class: a fresh multi-megabyte
// allocation comes from mmap and every page faults on first touch (the
// kernel zeroes it), which costs more than the copy or GEMM that fills it
// (PyTorch's CPU caching allocator exists for the same reason). In steady
// state a training step at a fixed shape takes no new pages from the system.
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>

namespace moe {

// Uninitialised, 64-byte aligned; never null unless out of memory.
void* host_alloc(size_t bytes);
// cache_it = false gives a large block back to the system instead of caching it.
void host_free(void* p, size_t bytes, bool cache_it = true);

// Bytes taken from the system and not yet given back: live blocks and cached ones. It changes
// only when the process's host memory for tensors and scratch does (not in a steady-state step).
int64_t host_held_bytes();

// Bytes held in the cache (not in live tensors); release them to the system.
int64_t host_cached_bytes();
void host_empty_cache();

// Running totals since the process started (for the benchmarks' per-step figures).
struct HostCounters {
  int64_t allocated_bytes = 0;  // handed out by host_alloc (from the cache or the system)
  int64_t system_bytes = 0;     // of which newly taken from the system (pages that fault on first touch)
  int64_t zeroed_bytes = 0;     // written with zeros by the core (zeros(), zeroInPlace, padding rows)
  int64_t minor_faults = 0;     // the process's minor page faults (getrusage)
  int64_t major_faults = 0;
};
HostCounters host_counters();
// The core calls this wherever it fills memory with zeros.
void note_zeroed(size_t bytes);

// A scratch buffer from the host allocator, uninitialised (RAII); none for n == 0.
template <class T>
class HostScratch {
 public:
  explicit HostScratch(size_t n) : n_(n), p_(n ? static_cast<T*>(host_alloc(n * sizeof(T))) : nullptr) {
    if (n && !p_) throw std::bad_alloc();
  }
  ~HostScratch() { host_free(p_, n_ * sizeof(T)); }
  HostScratch(const HostScratch&) = delete;
  HostScratch& operator=(const HostScratch&) = delete;
  T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_;
  T* p_;
};

}  // namespace moe
