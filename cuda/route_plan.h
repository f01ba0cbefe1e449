// Launch geometry of the route kernels, as plain C++ (no CUDA headers) so the
// host side can size workspaces and reject unsupported shapes before it touches
// a device.
//
// A warp owns one token at a time (the layout of vLLM's topk_softmax): lane l
// holds experts l, l + 32, l + 64, ... in registers, so a warp covers
// 32 * expertsPerLane experts. expertsPerLane is a template parameter of the
// kernels, instantiated for the powers of two up to kMaxExpertsPerLane.
//
// The grid depends on T alone (never on the device), so the per-block partial
// sums of the loss statistics, and therefore their fixed-order reduction, are
// the same on every run and every GPU.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "launchers.h"

namespace moe_cuda {

constexpr int kRouteWarpsPerBlock = 4;
constexpr int kRouteThreadsPerBlock = kRouteWarpsPerBlock * 32;
constexpr int64_t kRouteMaxBlocks = 1024;
constexpr int kMaxExpertsPerLane = 16;              // E <= 512
constexpr size_t kRouteMaxSharedBytes = 48 * 1024;  // no opt-in to larger dynamic shared memory

struct RoutePlan {
  int status;          // 0, MOE_CUDA_ERR_INVALID_ARGUMENT or MOE_CUDA_ERR_UNSUPPORTED
  int expertsPerLane;  // 1, 2, 4, 8 or 16
  int64_t blocks;      // 0 when T == 0
  int threads;
  size_t sharedBytes;     // dynamic shared memory of the forward kernel
  size_t workspaceBytes;  // per-block partials: blocks * (2E + 1) 4-byte words (probabilities, lse², counts)
};

inline int64_t route_blocks(int64_t tokens) {
  if (tokens <= 0) return 0;
  int64_t b = (tokens + kRouteWarpsPerBlock - 1) / kRouteWarpsPerBlock;
  return b < kRouteMaxBlocks ? b : kRouteMaxBlocks;
}

inline size_t route_workspace_bytes(int64_t tokens, int experts) {
  if (experts <= 0) return 0;
  return static_cast<size_t>(route_blocks(tokens)) * (2 * static_cast<size_t>(experts) + 1) * sizeof(float);
}

// Smallest supported power of two >= ceil(E / 32); 0 when E is too large.
inline int route_experts_per_lane(int experts) {
  int need = (experts + 31) / 32;
  for (int epl = 1; epl <= kMaxExpertsPerLane; epl *= 2)
    if (epl >= need) return epl;
  return 0;
}

// Dynamic shared memory of the forward kernel: per warp its loss partials [E],
// its chosen (index, weight) list [k] and, with groups, the selection keys [E]
// and group scores [G]; per block the expert histogram [E].
inline size_t route_shared_bytes(int experts, int topK, int groups) {
  size_t perWarp = static_cast<size_t>(experts) + 2 * static_cast<size_t>(topK);
  if (groups > 1) perWarp += static_cast<size_t>(experts) + static_cast<size_t>(groups);
  return 4 * (kRouteWarpsPerBlock * perWarp + static_cast<size_t>(experts));
}

// groups <= 1 means no group limit. Arguments outside the ranges that
// cpp/ops/route.cpp checks first (check_route_options, which owns them and
// names the limit) are INVALID_ARGUMENT here, so that no launch indexes out of
// bounds; sensible ones beyond the compiled kernels are UNSUPPORTED.
inline RoutePlan route_plan(int64_t tokens, int experts, int topK, int groups, int topkGroups) {
  RoutePlan p{0, 0, 0, kRouteThreadsPerBlock, 0, 0};
  if (tokens < 0 || experts < 1 || topK < 1 || topK > experts || groups < 0) {
    p.status = MOE_CUDA_ERR_INVALID_ARGUMENT;
    return p;
  }
  if (groups > 1) {
    if (experts % groups != 0 || topkGroups < 1 || topkGroups > groups ||
        static_cast<int64_t>(topK) > static_cast<int64_t>(topkGroups) * (experts / groups)) {
      p.status = MOE_CUDA_ERR_INVALID_ARGUMENT;
      return p;
    }
  }
  p.expertsPerLane = route_experts_per_lane(experts);
  if (p.expertsPerLane == 0) {
    p.status = MOE_CUDA_ERR_UNSUPPORTED;
    return p;
  }
  p.blocks = route_blocks(tokens);
  p.sharedBytes = route_shared_bytes(experts, topK, groups);
  if (p.sharedBytes > kRouteMaxSharedBytes) {
    p.status = MOE_CUDA_ERR_UNSUPPORTED;
    return p;
  }
  p.workspaceBytes = route_workspace_bytes(tokens, experts);
  return p;
}

}  // namespace moe_cuda
