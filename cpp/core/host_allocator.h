// Host memory for CPU tensors. Large blocks are cached after free and handed
// out again for the same size class: a fresh multi-megabyte allocation comes
// from mmap and every page faults on first touch, which costs more than the
// copy a permute makes into it (PyTorch's CPU caching allocator exists for
// the same reason).
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

void* host_alloc(size_t bytes);
void host_free(void* p, size_t bytes);

// Bytes held in the cache (not in live tensors); release them to the system.
int64_t host_cached_bytes();
void host_empty_cache();

}  // namespace moe
