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
// Up to kPermuteOneBlockCells cells, one block scans them (and plans the rows
// per expert) in a single launch; beyond, CUB scans the cells first.
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

constexpr int64_t kPermuteOneBlockCells = int64_t(1) << 16;

struct PermuteLayout {
  int status;            // 0, MOE_CUDA_ERR_INVALID_ARGUMENT or MOE_CUDA_ERR_UNSUPPORTED
  int64_t warps;         // W
  int64_t pairsPerWarp;  // a multiple of 32
  int64_t blocks;        // ceil(W / kPermuteWarpsPerBlock)
  int64_t cells;         // E·W + 1 (the last cell ends as the number of valid pairs)
  bool byProbs;          // capacity with the "probs" policy: the per-expert selection runs
  bool cubScan;          // cells > kPermuteOneBlockCells: CUB scans the cells
  // Byte offsets into the workspace, each a multiple of 256.
  size_t counts;       // int32 [cells]: histogram, scanned in place, then per-cell cursors
  size_t expertStart;  // int32 [E + 1]: first sorted position of each expert; [E] = valid pairs
  size_t rowStart;     // int32 [E + 1]: first row of each expert; [E] = R
  size_t sortedPairs;  // int32 [pairs], probs only: flat pair index t·k + j at each sorted position
  size_t sortedKeys;   // uint32 [pairs], probs only: the weight at each sorted position, as ordered bits
  size_t cub;          // CUB's temporary storage starts here (cubScan only)
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
  l.cubScan = l.cells > kPermuteOneBlockCells;

  const size_t n = static_cast<size_t>(pairs), e1 = static_cast<size_t>(experts) + 1;
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += permute_align(bytes);
    return here;
  };
  l.counts = take(4 * static_cast<size_t>(l.cells));
  l.expertStart = take(4 * e1);
  l.rowStart = take(4 * e1);
  if (l.byProbs) {
    l.sortedPairs = take(4 * n);
    l.sortedKeys = take(4 * n);
  }
  l.cub = at;
  return l;
}

// Rows the outputs are allocated for before the data says how many there are
// (R <= this; equal when dropless or padded): permute launches everything at
// once and the host reads R afterwards. capacity < 0: dropless.
inline int64_t permute_max_rows(int64_t pairs, int experts, int64_t capacity, bool pad) {
  if (capacity < 0) return pairs;
  const int64_t all = static_cast<int64_t>(experts) * capacity;
  return pad || all < pairs ? all : pairs;
}

}  // namespace moe_cuda
