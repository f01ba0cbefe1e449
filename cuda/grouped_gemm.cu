// The grouped GEMM launchers (launchers.h): argument checks, the schedule
// kernel that turns the device-side row counts into row offsets and tile
// starts (no host sync), and the choice between the wgmma kernel
// (grouped_gemm_sm90.cu, compute capability 9.0) and the mma.sync kernel
// (grouped_gemm_sm80.cu, everything else or MOE_CUDA_GG_FORCE_SM80).
// The CPU emulator's device has compute capability 8.0, so there the mma.sync
// kernel is the one chosen.
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"
#include "grouped_gemm.cuh"
#include "grouped_gemm_plan.h"
#include "launchers.h"

namespace moe_cuda {
namespace {

constexpr int kScheduleWarps = kGgScheduleThreads / 32;

// One block. Exclusive prefix sums of the counts and of the per-expert tile
// counts (gg_expert_tiles), 256 experts at a time: warp shuffles, then the
// warp totals, then a carry across chunks. Bad counts (negative, or a total
// above totalRows) zero both arrays and set header[0], exactly like
// gg_offsets in grouped_gemm_plan.h.
__global__ void __launch_bounds__(kGgScheduleThreads)
    gg_schedule_kernel(const int32_t* counts, int experts, int64_t totalRows, int64_t nOut, int32_t* ws,
                       int32_t* invalidOut) {
  __shared__ int64_t sWarpRows[kScheduleWarps];
  __shared__ int64_t sWarpTiles[kScheduleWarps];
  __shared__ int sBad;
  int32_t* rowStart = ws + kGgWorkspaceHeader;
  int32_t* tileStart = rowStart + experts + 1;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (tid == 0) sBad = 0;
  __syncthreads();

  int64_t carryRows = 0;
  int64_t carryTiles = 0;
  for (int chunk = 0; chunk < experts; chunk += kGgScheduleThreads) {
    const int e = chunk + tid;
    const int32_t c = e < experts ? counts[e] : 0;
    if (c < 0) atomicOr(&sBad, 1);
    const int64_t ownRows = c < 0 ? 0 : c;
    const int64_t ownTiles = gg_expert_tiles(c, nOut);
    int64_t rows = ownRows;
    int64_t tiles = ownTiles;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int64_t r = __shfl_up_sync(kFullMask, rows, offset);
      const int64_t t = __shfl_up_sync(kFullMask, tiles, offset);
      if (lane >= offset) {
        rows += r;
        tiles += t;
      }
    }
    if (lane == 31) {
      sWarpRows[warp] = rows;
      sWarpTiles[warp] = tiles;
    }
    __syncthreads();
    int64_t beforeRows = 0;
    int64_t beforeTiles = 0;
    int64_t chunkRows = 0;
    int64_t chunkTiles = 0;
#pragma unroll
    for (int w = 0; w < kScheduleWarps; ++w) {
      if (w < warp) {
        beforeRows += sWarpRows[w];
        beforeTiles += sWarpTiles[w];
      }
      chunkRows += sWarpRows[w];
      chunkTiles += sWarpTiles[w];
    }
    if (e < experts) {
      rowStart[e] = static_cast<int32_t>(carryRows + beforeRows + rows - ownRows);
      tileStart[e] = static_cast<int32_t>(carryTiles + beforeTiles + tiles - ownTiles);
    }
    carryRows += chunkRows;
    carryTiles += chunkTiles;
    __syncthreads();  // sWarp* is rewritten by the next chunk
  }
  const int bad = sBad != 0 || carryRows > totalRows;
  for (int e = tid; e < experts; e += kGgScheduleThreads)
    if (bad) rowStart[e] = tileStart[e] = 0;
  if (tid == 0) {
    rowStart[experts] = bad ? 0 : static_cast<int32_t>(carryRows);
    tileStart[experts] = bad ? 0 : static_cast<int32_t>(carryTiles);
    ws[0] = bad;
    ws[1] = bad ? 0 : static_cast<int32_t>(carryTiles);
    if (invalidOut != nullptr) *invalidOut = bad;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int grouped_gemm(int kind, const void* a, const void* b, const void* bias, const int32_t* counts, void* out,
                 int64_t totalRows, int experts, int64_t k, int64_t n, int dtype, int flags, void* workspace,
                 size_t workspaceBytes, int32_t* invalidCounts, void* stream) {
  constexpr int kKnownFlags = MOE_CUDA_GG_OUT_F32 | MOE_CUDA_GG_FORCE_SM80 | MOE_CUDA_GG_ACT_MASK;
  if ((flags & ~kKnownFlags) != 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int act = (flags & MOE_CUDA_GG_ACT_MASK) >> 4;
  if ((act != kGgActNone || bias != nullptr) && kind != kGgForward) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  // Shape first, so that unsupported shapes are reported without touching the device.
  GgPlan plan = gg_plan(kind, totalRows, experts, k, n, dtype, false);
  if (plan.status != 0) return plan.status;
  if (a == nullptr || b == nullptr || out == nullptr || counts == nullptr || workspace == nullptr)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (!aligned16(a) || !aligned16(b) || !aligned16(out) || !aligned16(workspace)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (workspaceBytes < plan.workspaceBytes) return MOE_CUDA_ERR_INVALID_ARGUMENT;

  bool sm90 = false;
  if ((flags & MOE_CUDA_GG_FORCE_SM80) == 0) {
    int err = 0;
    sm90 = gg_sm90_available(&err);
    if (err != 0) return err;
  }
  if (sm90) plan = gg_plan(kind, totalRows, experts, k, n, dtype, true);

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int32_t* ws = static_cast<int32_t*>(workspace);
  gg_schedule_kernel<<<1, kGgScheduleThreads, 0, s>>>(counts, experts, totalRows, plan.nOut, ws, invalidCounts);
  MOE_CUDA_TRY_LAUNCH();
  if (plan.grid == 0) return 0;

  GgArgs g;
  g.kind = kind;
  g.dtype = dtype;
  g.outF32 = (flags & MOE_CUDA_GG_OUT_F32) != 0;
  g.act = act;
  g.a = a;
  g.b = b;
  g.bias = bias;
  g.out = out;
  g.workspace = ws;
  g.totalRows = totalRows;
  g.experts = experts;
  g.k = static_cast<int>(k);
  g.n = static_cast<int>(n);
  g.plan = plan;
  return sm90 ? gg_launch_sm90(g, s) : gg_launch_sm80(g, s);
}

}  // namespace
}  // namespace moe_cuda

extern "C" size_t moe_cuda_grouped_gemm_workspace_bytes(int num_experts) {
  return moe_cuda::gg_workspace_bytes(num_experts);
}

extern "C" int moe_cuda_grouped_gemm_uses_sm90(int flags, int* uses_sm90) {
  if (uses_sm90 == nullptr) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  *uses_sm90 = 0;
  if ((flags & MOE_CUDA_GG_FORCE_SM80) != 0) return 0;
  int err = 0;
  *uses_sm90 = moe_cuda::gg_sm90_available(&err) ? 1 : 0;
  return err;
}

extern "C" int moe_cuda_grouped_gemm(const void* x, const void* w, const void* bias, const int32_t* rows_per_expert,
                                     void* y, int64_t total_rows, int num_experts, int64_t k, int64_t n, int dtype,
                                     int flags, void* workspace, size_t workspace_bytes, int32_t* invalid_counts,
                                     void* stream) {
  return moe_cuda::grouped_gemm(moe_cuda::kGgForward, x, w, bias, rows_per_expert, y, total_rows, num_experts, k, n,
                                dtype, flags, workspace, workspace_bytes, invalid_counts, stream);
}

extern "C" int moe_cuda_grouped_gemm_dx(const void* dy, const void* w, const int32_t* rows_per_expert, void* dx,
                                        int64_t total_rows, int num_experts, int64_t k, int64_t n, int dtype, int flags,
                                        void* workspace, size_t workspace_bytes, int32_t* invalid_counts,
                                        void* stream) {
  return moe_cuda::grouped_gemm(moe_cuda::kGgDx, dy, w, nullptr, rows_per_expert, dx, total_rows, num_experts, k, n,
                                dtype, flags, workspace, workspace_bytes, invalid_counts, stream);
}

extern "C" int moe_cuda_grouped_gemm_dw(const void* x, const void* dy, const int32_t* rows_per_expert, void* dw,
                                        int64_t total_rows, int num_experts, int64_t k, int64_t n, int dtype, int flags,
                                        void* workspace, size_t workspace_bytes, int32_t* invalid_counts,
                                        void* stream) {
  return moe_cuda::grouped_gemm(moe_cuda::kGgDw, x, dy, nullptr, rows_per_expert, dw, total_rows, num_experts, k, n,
                                dtype, flags, workspace, workspace_bytes, invalid_counts, stream);
}
