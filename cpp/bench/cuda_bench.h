// Kernel timings on a GPU with CUDA events, for scripts/device-check.js: the
// launches alone, back to back on the compute stream with buffers allocated
// once, so that neither allocation nor the Promise round trip of an op is
// counted. Figures: BENCHMARKS.md.
#pragma once
#include <cstdint>

#include "../core/tensor.h"
#include "../core/task.h"

namespace moe::bench {

struct KernelTime {
  double median_us = 0;  // per launch: the median over `batches` of (batch time / reps)
  double best_us = 0;
  int reps = 0;
  int batches = 0;
};

// moe_cuda_route_forward (softmax, top-k, counts and loss statistics, with its
// finalisation) on random logits [tokens, experts].
Task<KernelTime> cuda_route_kernel(Device device, int64_t tokens, int experts, int top_k, int reps, int batches);

// A device-to-device copy of `bytes` (cudaMemcpyAsync): the bandwidth limit for
// the row-moving kernels, as read + write bytes per second.
struct CopyRate {
  double gbps = 0;  // 2 · bytes / median time, in 1e9 bytes per second
  double median_us = 0;
  double bytes = 0;
};
Task<CopyRate> cuda_copy_rate(Device device, int64_t bytes, int reps, int batches);

}  // namespace moe::bench
