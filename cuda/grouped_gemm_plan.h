// Launch planning of the grouped GEMM kernels, as plain C++ (no CUDA headers)
// so the host can size grids, shared memory and workspaces, and reject
// unsupported shapes, before it touches a device; test/cuda-gemm-build.test.ts
// compiles it with the host compiler and checks it against its own arithmetic.
//
// Three products over L experts whose row counts c_e live on the device
// (rows of expert e are the segment [o_e, o_e + c_e) of the R rows, o the
// exclusive prefix sum of c):
//   forward  Y_e[c_e, N] = X_e[c_e, K] · W_e[K, N]     (W as [L, K, N] row-major)
//   dx      dX_e[c_e, K] = dY_e[c_e, N] · W_eᵀ
//   dw      dW_e[K, N]   = X_eᵀ · dY_e                  (reduction over the expert's own rows)
// Every kernel computes BLOCK_M x BLOCK_N output tiles. For forward and dx the
// output rows of an expert are its c_e rows, so its tile count depends on a
// device value: a one-block schedule kernel turns the counts into row offsets
// and tile starts (the same arithmetic as gg_offsets below) and the GEMM grid
// is an upper bound on the total that every count vector summing to at most R
// respects; surplus CTAs exit at once. For dw every expert owns the same
// ceil(K / BLOCK_M) x ceil(N / BLOCK_N) tiles, zero-row experts included
// (they write zeros).
//
// Functions marked MOE_GG_HD are also used on the device by the schedule
// kernel (cuda/grouped_gemm.cu), so the CPU test covers that arithmetic too.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "launchers.h"

#if defined(__CUDACC__)
#define MOE_GG_HD __host__ __device__
#else
#define MOE_GG_HD
#endif

namespace moe_cuda {

enum GgKind { kGgForward = 0, kGgDx = 1, kGgDw = 2 };

// Output tile of both kernels (CTA tile).
constexpr int kGgBlockM = 128;
constexpr int kGgBlockN = 128;
// mma.sync kernel (sm_80 and newer): 8 warps as 2 (M) x 4 (N), 64 x 32 each.
constexpr int kGgSm80BlockK = 32;
constexpr int kGgSm80Stages = 4;
constexpr int kGgSm80Threads = 256;
// wgmma kernel (sm_90a): one producer warpgroup (TMA) and two consumer
// warpgroups of 64 x 128 each; BLOCK_K = 64 bf16/f16 = one 128-byte swizzle row.
constexpr int kGgSm90BlockK = 64;
constexpr int kGgSm90Stages = 4;
constexpr int kGgSm90Threads = 384;
// The dynamic shared memory of the wgmma kernel is aligned to 1024 bytes by
// hand (the period of the 128-byte swizzle), so it asks for this much more.
constexpr size_t kGgSm90AlignSlack = 1024;
constexpr int kGgElementBytes = 2;  // bf16 and f16 inputs
// K % 8 == 0 and N % 8 == 0: every row starts 16-byte aligned, as cp.async
// (16-byte copies) and the TMA (16-byte global strides) require.
constexpr int kGgAlignElements = 8;
constexpr int kGgScheduleThreads = 256;
// Workspace: int32 header[4] (0: 1 when the counts were invalid, 1: total
// tiles), row offsets [L + 1], tile starts [L + 1]; rounded up to 16 bytes.
constexpr int kGgWorkspaceHeader = 4;

MOE_GG_HD inline int64_t gg_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Output tiles of one expert with `rows` rows and nOut output columns
// (forward: nOut = N; dx: nOut = K). Zero rows: zero tiles.
MOE_GG_HD inline int64_t gg_expert_tiles(int64_t rows, int64_t nOut) {
  if (rows <= 0 || nOut <= 0) return 0;
  return gg_ceil_div(rows, kGgBlockM) * gg_ceil_div(nOut, kGgBlockN);
}

// The largest sum over experts of ceil(c_e / BLOCK_M) for counts c_e >= 0 with
// sum <= R: at most min(L, R) experts are non-empty, and each adds at most
// (BLOCK_M - 1) / BLOCK_M of a tile beyond c_e / BLOCK_M.
inline int64_t gg_max_m_tiles(int64_t totalRows, int64_t experts) {
  if (totalRows <= 0 || experts <= 0) return 0;
  const int64_t nonEmpty = experts < totalRows ? experts : totalRows;
  return (totalRows + nonEmpty * (kGgBlockM - 1)) / kGgBlockM;
}

// Host version of the schedule: rowStart[e] = sum of counts before e,
// tileStart[e] = sum of gg_expert_tiles before e, both [L + 1]. Returns 0, or
// 1 when a count is negative or the counts sum past totalRows, in which case
// (like the device schedule) every entry is 0 so that no tile runs.
inline int gg_offsets(const int32_t* counts, int experts, int64_t totalRows, int64_t nOut, int32_t* rowStart,
                      int32_t* tileStart) {
  int64_t rows = 0;
  int64_t tiles = 0;
  int bad = 0;
  for (int e = 0; e < experts; ++e) {
    rowStart[e] = static_cast<int32_t>(rows);
    tileStart[e] = static_cast<int32_t>(tiles);
    if (counts[e] < 0) bad = 1;
    rows += counts[e] < 0 ? 0 : counts[e];
    tiles += gg_expert_tiles(counts[e], nOut);
    if (rows > totalRows) bad = 1;
  }
  rowStart[experts] = static_cast<int32_t>(rows);
  tileStart[experts] = static_cast<int32_t>(tiles);
  if (bad)
    for (int e = 0; e <= experts; ++e) rowStart[e] = tileStart[e] = 0;
  return bad;
}

inline size_t gg_workspace_bytes(int experts) {
  if (experts < 1) return 0;
  const size_t words = kGgWorkspaceHeader + 2 * (static_cast<size_t>(experts) + 1);
  return (words * sizeof(int32_t) + 15) / 16 * 16;
}

// One pipeline stage: an A tile BLOCK_M x BLOCK_K and a B tile BLOCK_K x BLOCK_N.
constexpr size_t gg_sm80_stage_bytes() {
  return static_cast<size_t>(kGgBlockM * kGgSm80BlockK + kGgSm80BlockK * kGgBlockN) * kGgElementBytes;
}
constexpr size_t gg_sm80_shared_bytes() { return kGgSm80Stages * gg_sm80_stage_bytes(); }
constexpr size_t gg_sm90_stage_bytes() {
  return static_cast<size_t>(kGgBlockM * kGgSm90BlockK + kGgSm90BlockK * kGgBlockN) * kGgElementBytes;
}
constexpr size_t gg_sm90_shared_bytes() { return kGgSm90Stages * gg_sm90_stage_bytes() + kGgSm90AlignSlack; }

struct GgPlan {
  int status;      // 0, MOE_CUDA_ERR_INVALID_ARGUMENT or MOE_CUDA_ERR_UNSUPPORTED
  int64_t grid;    // CTAs (an upper bound for forward and dx); 0: nothing to compute
  int64_t tilesN;  // output tiles along the output columns
  int64_t nOut;    // output columns: N (forward, dw) or K (dx)
  int64_t kRed;    // reduction length: K (forward), N (dx), the expert's rows (dw: 0 here)
  int threads;
  size_t sharedBytes;     // dynamic shared memory of the chosen kernel
  size_t workspaceBytes;  // gg_workspace_bytes(L)
};

// The operand widths the kernels take: K and N multiples of kGgAlignElements
// and below 2^31 (the plan counts them in int32).
inline bool gg_widths_supported(int64_t k, int64_t n) {
  return k % kGgAlignElements == 0 && n % kGgAlignElements == 0 && k <= INT32_MAX && n <= INT32_MAX;
}

// kind: GgKind; dtype: MOE_CUDA_GG_BF16 or MOE_CUDA_GG_F16; sm90: plan the
// wgmma kernel instead of the mma.sync one. Nonsensical arguments are
// INVALID_ARGUMENT; shapes the kernels do not cover (K or N not a multiple of 8,
// more than INT32_MAX rows or tiles) are UNSUPPORTED.
inline GgPlan gg_plan(int kind, int64_t totalRows, int experts, int64_t k, int64_t n, int dtype, bool sm90) {
  GgPlan p{0, 0, 0, 0, 0, 0, 0, 0};
  if ((kind != kGgForward && kind != kGgDx && kind != kGgDw) || totalRows < 0 || experts < 1 || k < 1 || n < 1 ||
      (dtype != MOE_CUDA_GG_BF16 && dtype != MOE_CUDA_GG_F16)) {
    p.status = MOE_CUDA_ERR_INVALID_ARGUMENT;
    return p;
  }
  if (!gg_widths_supported(k, n) || totalRows > INT32_MAX) {
    p.status = MOE_CUDA_ERR_UNSUPPORTED;
    return p;
  }
  p.threads = sm90 ? kGgSm90Threads : kGgSm80Threads;
  p.sharedBytes = sm90 ? gg_sm90_shared_bytes() : gg_sm80_shared_bytes();
  p.workspaceBytes = gg_workspace_bytes(experts);
  p.nOut = kind == kGgDx ? k : n;
  p.kRed = kind == kGgForward ? k : kind == kGgDx ? n : 0;
  p.tilesN = gg_ceil_div(p.nOut, kGgBlockN);
  if (kind == kGgDw)
    p.grid = static_cast<int64_t>(experts) * gg_ceil_div(k, kGgBlockM) * p.tilesN;
  else
    p.grid = gg_max_m_tiles(totalRows, experts) * p.tilesN;
  if (p.grid > INT32_MAX) p.status = MOE_CUDA_ERR_UNSUPPORTED;
  return p;
}

}  // namespace moe_cuda
