// Launch geometry and workspace layout of the permute kernels (cuda/permute.cu),
// as plain C++ (no CUDA headers) so the host can check shapes before it touches
// a device and the layout can be unit-tested on a machine without a GPU.
//
// The stable counting sort: the T·k pairs are cut into W contiguous runs, one
// per warp (a multiple of 32 pairs each). Warp w counts its pairs per expert
// into cell e·W + w of a histogram of E·W + 1 cells (expert-major, one owner
// per cell: no atomics); an exclusive scan of the cells gives each (expert,
// warp) its first sorted position, so walking the runs again in order places
// every pair after all pairs of its expert that come before it in (t, j)
// order: stable, and the same on every run whatever the scheduling.
//
// The grid depends on (pairs, experts) only, never on the device.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "launchers.h"

namespace moe_cuda {

constexpr int kPermuteThreads = 256;
constexpr int kPermuteWarpsPerBlock = kPermuteThreads / 32;
constexpr int64_t kPermuteMinPairsPerWarp = 64;
constexpr int64_t kPermuteMaxCells = int64_t(1) << 24;  // histogram cells: 64 MiB of int32 at most
constexpr int kPermuteMaxExperts = 1 << 20;
constexpr int kDropProbs = 0;     // moe::ops::DropPolicy::Probs
constexpr int kDropPosition = 1;  // moe::ops::DropPolicy::Position

struct PermuteLayout {
  int status;            // 0, MOE_CUDA_ERR_INVALID_ARGUMENT or MOE_CUDA_ERR_UNSUPPORTED
  int64_t warps;         // W
  int64_t pairsPerWarp;  // a multiple of 32
  int64_t blocks;        // ceil(W / kPermuteWarpsPerBlock)
  int64_t cells;         // E·W + 1 (the last cell ends as the number of valid pairs)
  bool byProbs;          // capacity with the "probs" policy: the segmented sort runs
  // Byte offsets into the workspace, each a multiple of 256.
  size_t counts;       // int32 [cells]: histogram, scanned in place, then per-cell cursors
  size_t expertStart;  // int32 [E + 1]: first sorted position of each expert; [E] = valid pairs
  size_t sortedPairs;  // int32 [pairs]: flat pair index t·k + j at each sorted position
  size_t rowsPer;      // int32 [E + 1]: rows of each expert (padding included), then 0
  size_t rowStart;     // int32 [E + 1]: exclusive scan of rowsPer; [E] = R
  size_t keys;         // uint64 [pairs], probs only: (weight, position) keys, see cuda/permute.cu
  size_t keysOut;      // uint64 [pairs], probs only
  size_t posIn;        // int32 [pairs], probs only: 0, 1, 2, ...
  size_t posOut;       // int32 [pairs], probs only: sorted positions by weight within each expert
  size_t keep;         // int32 [pairs + 1], probs only: kept flags, scanned in place
  size_t cub;          // CUB's temporary storage starts here
};

inline size_t permute_align(size_t bytes) { return (bytes + 255) / 256 * 256; }

// pairs = T·k <= INT32_MAX; experts in [1, kPermuteMaxExperts]; capacity < 0 for dropless.
inline PermuteLayout permute_layout(int64_t pairs, int experts, int policy, int64_t capacity) {
  PermuteLayout l{};
  if (pairs < 0 || pairs > INT32_MAX || experts < 1 || (policy != kDropProbs && policy != kDropPosition) ||
      capacity > INT32_MAX) {
    l.status = MOE_CUDA_ERR_INVALID_ARGUMENT;
    return l;
  }
  if (experts > kPermuteMaxExperts) {
    l.status = MOE_CUDA_ERR_UNSUPPORTED;
    return l;
  }
  const int64_t maxWarps = (kPermuteMaxCells - 1) / experts;  // >= 15 for E <= 2^20
  int64_t w = (pairs + kPermuteMinPairsPerWarp - 1) / kPermuteMinPairsPerWarp;
  if (w < 1) w = 1;
  if (w > maxWarps) w = maxWarps;
  int64_t per = (pairs + w - 1) / w;
  per = (per + 31) / 32 * 32;
  if (per < 32) per = 32;
  w = (pairs + per - 1) / per;
  if (w < 1) w = 1;
  l.warps = w;
  l.pairsPerWarp = per;
  l.blocks = (w + kPermuteWarpsPerBlock - 1) / kPermuteWarpsPerBlock;
  l.cells = static_cast<int64_t>(experts) * w + 1;
  l.byProbs = capacity >= 0 && policy == kDropProbs;

  const size_t n = static_cast<size_t>(pairs), e1 = static_cast<size_t>(experts) + 1;
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += permute_align(bytes);
    return here;
  };
  l.counts = take(4 * static_cast<size_t>(l.cells));
  l.expertStart = take(4 * e1);
  l.sortedPairs = take(4 * n);
  l.rowsPer = take(4 * e1);
  l.rowStart = take(4 * e1);
  if (l.byProbs) {
    l.keys = take(8 * n);
    l.keysOut = take(8 * n);
    l.posIn = take(4 * n);
    l.posOut = take(4 * n);
    l.keep = take(4 * (n + 1));
  }
  l.cub = at;
  return l;
}

}  // namespace moe_cuda
