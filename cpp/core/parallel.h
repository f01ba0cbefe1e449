// parallel_for over the CPU threads of the core. Ops give every index a fixed
// piece of work, so results never depend on how indices meet threads.
#pragma once
#include <cstdint>
#include <functional>

namespace moe {

int num_threads();  // MOE_EP_NUM_THREADS, else the hardware's count

// Calls fn(begin, end) over [0, n) in chunks of at least `grain` indices,
// across the pool and the calling thread; returns when all have run.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace moe
