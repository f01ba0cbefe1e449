// What the grouped GEMM launchers (cuda/grouped_gemm.cu) share with the two
// kernel files (grouped_gemm_sm80.cu: mma.sync; grouped_gemm_sm90.cu: wgmma):
// the argument block, the workspace layout written by the schedule kernel, and
// the device pieces both kernels use (tile -> expert lookup, the epilogue).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include "grouped_gemm_plan.h"
#include "launchers.h"

namespace moe_cuda {

constexpr int kGgActNone = 0;
constexpr int kGgActRelu = 1;
constexpr int kGgActSilu = 2;
constexpr int kGgActGeluTanh = 3;

// One launch, as the launcher validated it. The operands by kind:
//   forward: a = x [R, K],  b = w [L, K, N], out = y [R, N]
//   dx:      a = dy [R, N], b = w [L, K, N], out = dx [R, K]
//   dw:      a = x [R, K],  b = dy [R, N],   out = dw [L, K, N]
struct GgArgs {
  int kind;   // GgKind
  int dtype;  // MOE_CUDA_GG_BF16 or MOE_CUDA_GG_F16
  bool outF32;
  int act;  // kGgAct*
  const void* a;
  const void* b;
  const void* bias;  // [L, N] or nullptr (forward only)
  void* out;
  const int32_t* workspace;  // filled by the schedule kernel on the same stream
  int64_t totalRows;
  int experts;
  int k;
  int n;
  GgPlan plan;
};

// Workspace views (layout in grouped_gemm_plan.h).
__host__ __device__ inline const int32_t* gg_ws_row_start(const int32_t* ws) { return ws + kGgWorkspaceHeader; }
__host__ __device__ inline const int32_t* gg_ws_tile_start(const int32_t* ws, int experts) {
  return ws + kGgWorkspaceHeader + experts + 1;
}

// Launch one kernel for `args` on `stream` (the schedule kernel has already
// been enqueued). 0 or a cudaError_t value.
int gg_launch_sm80(const GgArgs& args, cudaStream_t stream);
int gg_launch_sm90(const GgArgs& args, cudaStream_t stream);
// True when the current device is compute capability 9.0 and the wgmma kernel
// was compiled for it (sm_90a); sets *error to a cudaError_t value when a
// runtime query fails.
bool gg_sm90_available(int* error);

// What both kernels take besides their operands: the epilogue's inputs and
// the tile schedule's sizes.
template <typename T, typename OutT>
struct GgEpilogueParams {
  const T* bias;
  OutT* out;
  const int32_t* ws;
  int experts;
  int k;
  int n;
  int act;
  int tilesN;
  int tilesM;  // dw: output tiles along K
};

template <typename T, typename OutT>
GgEpilogueParams<T, OutT> gg_epilogue_params(const GgArgs& g) {
  GgEpilogueParams<T, OutT> p;
  p.bias = static_cast<const T*>(g.bias);
  p.out = static_cast<OutT*>(g.out);
  p.ws = g.workspace;
  p.experts = g.experts;
  p.k = g.k;
  p.n = g.n;
  p.act = g.act;
  p.tilesN = static_cast<int>(g.plan.tilesN);
  p.tilesM = static_cast<int>(gg_ceil_div(g.k, kGgBlockM));
  return p;
}

// Types as values, for gg_dispatch's callback.
template <typename T>
struct GgType {
  using type = T;
};
template <int KIND>
struct GgKindTag {
  static constexpr int value = KIND;
};

// launch(GgType<T>, GgKindTag<KIND>, GgType<OutT>) for the launch's element type
// (bf16 or f16), product and output type (T, or float32 when outF32).
template <class Launch>
int gg_dispatch(const GgArgs& g, Launch&& launch) {
  auto out = [&](auto t, auto kind) { return g.outF32 ? launch(t, kind, GgType<float>{}) : launch(t, kind, t); };
  auto kind = [&](auto t) {
    switch (g.kind) {
      case kGgForward:
        return out(t, GgKindTag<kGgForward>{});
      case kGgDx:
        return out(t, GgKindTag<kGgDx>{});
      case kGgDw:
        return out(t, GgKindTag<kGgDw>{});
      default:
        return static_cast<int>(MOE_CUDA_ERR_INVALID_ARGUMENT);
    }
  };
  return g.dtype == MOE_CUDA_GG_BF16 ? kind(GgType<__nv_bfloat16>{}) : kind(GgType<__half>{});
}

// ---- device pieces -----------------------------------------------------------------

// Tile rows per raster group (gg_tile_coords).
constexpr int kGgGroupM = 8;

// Output tile (mt, nt) of an expert's local tile index, for tilesM x tilesN
// tiles taken in groups of kGgGroupM tile rows, column by column within a
// group: the CTAs resident at once then share a few row slices and a few
// column slices of the operands in L2, instead of one row slice and every
// column slice (which, for wide outputs, streams a whole operand from memory
// once per tile row). A bijection onto the tiles; each tile's arithmetic is
// unchanged.
__device__ __forceinline__ void gg_tile_coords(int local, int tilesM, int tilesN, int& mt, int& nt) {
  const int perGroup = kGgGroupM * tilesN;
  const int group = local / perGroup;
  const int firstM = group * kGgGroupM;
  const int groupRows = tilesM - firstM < kGgGroupM ? tilesM - firstM : kGgGroupM;
  const int inGroup = local - group * perGroup;
  mt = firstM + inGroup % groupRows;
  nt = inGroup / groupRows;
}

// The expert that owns output tile `tile` (forward and dx): the last e with
// tileStart[e] <= tile, found by bisection over [0, L). -1 past the last tile.
__device__ __forceinline__ int gg_find_expert(const int32_t* tileStart, int experts, int tile) {
  if (tile >= tileStart[experts]) return -1;
  int lo = 0;
  int hi = experts - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (tileStart[mid] <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float gg_activate(float v, int act) {
  switch (act) {
    case kGgActRelu:
      return fmaxf(v, 0.f);
    case kGgActSilu:
      return v / (1.f + __expf(-v));
    case kGgActGeluTanh: {
      // GELU, tanh approximation (Hendrycks & Gimpel 2016): 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      return 0.5f * v * (1.f + tanhf(u));
    }
    default:
      return v;
  }
}

template <typename T>
__device__ __forceinline__ float gg_to_float(T v);
template <>
__device__ __forceinline__ float gg_to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float gg_to_float<__half>(__half v) {
  return __half2float(v);
}

// Two adjacent output elements (columns n, n + 1; n even and N % 8 == 0, so the
// pair is 4- or 8-byte aligned) stored in OutT.
template <typename OutT>
__device__ __forceinline__ void gg_store_pair(OutT* p, float v0, float v1);
template <>
__device__ __forceinline__ void gg_store_pair<float>(float* p, float v0, float v1) {
  *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
template <>
__device__ __forceinline__ void gg_store_pair<__nv_bfloat16>(__nv_bfloat16* p, float v0, float v1) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
}
template <>
__device__ __forceinline__ void gg_store_pair<__half>(__half* p, float v0, float v1) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(v0, v1);
}

// Epilogue of one accumulator pair at output (row, col), col even: bias of
// column col (forward), activation, store; rows >= rowLimit or columns >=
// colLimit belong to no output and are dropped.
template <typename T, typename OutT>
__device__ __forceinline__ void gg_epilogue_pair(OutT* out, int64_t ldOut, int row, int col, int rowLimit, int colLimit,
                                                 float v0, float v1, const T* bias, int act) {
  if (row >= rowLimit || col >= colLimit) return;
  if (bias != nullptr) {
    v0 += gg_to_float<T>(bias[col]);
    v1 += gg_to_float<T>(bias[col + 1]);
  }
  v0 = gg_activate(v0, act);
  v1 = gg_activate(v1, act);
  gg_store_pair<OutT>(out + static_cast<int64_t>(row) * ldOut + col, v0, v1);
}

}  // namespace moe_cuda
