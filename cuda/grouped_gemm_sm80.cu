// Grouped GEMM on tensor cores with mma.sync (sm_80 and newer): bf16 / f16
// inputs, float32 accumulation, per-expert row counts read on the device.
//
// CTA tile 128 x 128 x 32, 8 warps as 2 (M) x 4 (N), a 64 x 32 warp tile of
// m16n8k16 MMAs; a 4-stage cp.async pipeline from global to shared memory;
// fragments through ldmatrix (.trans where the operand is stored MN-major).
// Shared tiles are XOR-swizzled in 16-byte chunks so that neither the cp.async
// stores nor the ldmatrix phases (8 rows of 16 bytes) hit the same bank twice:
//   K-contiguous tile [128][32] (64-byte rows): chunk' = chunk ^ ((row >> 1) & 3)
//   MN-contiguous tile [32][128] (256-byte rows): chunk' = chunk ^ (row & 7)
// Operands by product (grouped_gemm.cuh, GgArgs):
//   forward  A = x rows (K-contiguous)        B = w[e] [K][N] (MN-contiguous, ldmatrix.trans)
//   dx       A = dy rows (K-contiguous)       B = w[e] as [K rows][N] (K-contiguous: no transpose)
//   dw       A = x rows, read transposed (MN-contiguous, ldmatrix.trans), B = dy rows (MN-contiguous)
// Partial tiles: rows, columns and reduction indices past their bounds are
// zero-filled by cp.async (src-size 0) and dropped by the epilogue. For dw the
// reduction runs over the expert's own rows only, so rows of the next expert
// never enter its sum.
//
// test/cuda-gemm-build.test.ts checks that it compiles for sm_80 and sm_90a
// without spills. MOE_EP_GG_KERNEL=sm80 selects it on a Hopper GPU too; the
// CPU emulator runs it, its PTX emulated by cuda/emu/ptx_sm80.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include <type_traits>

#include "common.cuh"
#include "grouped_gemm.cuh"
#include "grouped_gemm_plan.h"
#include "ptx_sm80.cuh"

namespace moe_cuda {
namespace {

constexpr int BM = kGgBlockM;
constexpr int BN = kGgBlockN;
constexpr int BK = kGgSm80BlockK;
constexpr int STAGES = kGgSm80Stages;
constexpr int THREADS = kGgSm80Threads;
constexpr int WARP_M = 64;  // warp tile
constexpr int WARP_N = 32;
constexpr int FRAG_M = WARP_M / 16;  // m16 fragments per warp
constexpr int FRAG_N = WARP_N / 8;   // n8 fragments per warp
constexpr int TILE_ELEMS = BM * BK;  // A and B tiles have the same size (BM == BN)
static_assert(BM == BN, "A and B tiles share one size");
static_assert(TILE_ELEMS / 8 == 2 * THREADS, "each thread copies two 16-byte chunks per tile");
static_assert((BM / WARP_M) * (BN / WARP_N) * 32 == THREADS, "warp grid covers the CTA tile");
static_assert(2 * TILE_ELEMS * 2 * STAGES == static_cast<int>(gg_sm80_shared_bytes()), "plan and kernel agree");

template <typename T, typename OutT>
struct Sm80Params : GgEpilogueParams<T, OutT> {
  const T* a;
  const T* b;
};

// ---- swizzled shared layouts (offsets in elements) --------------------------------

// [128 rows][32]: rows are M (or N) indices, 4 chunks of 8 reduction elements.
__device__ __forceinline__ int kc_offset(int row, int chunk) { return row * BK + ((chunk ^ ((row >> 1) & 3)) << 3); }
// [32 rows][128]: rows are reduction indices, 16 chunks of 8 M (or N) elements.
__device__ __forceinline__ int mc_offset(int row, int chunk) { return row * BM + ((chunk ^ (row & 7)) << 3); }

// One operand tile's copy plan for this thread: two 16-byte chunks.
//   K-contiguous: chunk id -> (row = id / 4, chunk = id % 4); source row `row` of
//   the operand, reduction offset chunk * 8 (+ k0 per tile).
//   MN-contiguous: id -> (row = id / 16, chunk = id % 16); reduction row `row`
//   (+ k0 per tile), column offset chunk * 8.
struct CopyPlan {
  const void* src[2];  // element (row, chunk) of the first tile
  int smem[2];         // swizzled element offset inside a tile
  int row[2];
  int chunk[2];
  bool fixedOk[2];  // the bound that does not move with k0
};

// ---- the kernel ------------------------------------------------------------------

// KIND: GgKind. A is MN-contiguous for dw; B is K-contiguous for dx.
template <typename T, int KIND, typename OutT>
__global__ void __launch_bounds__(THREADS, 2) gg_sm80_kernel(Sm80Params<T, OutT> p) {
  constexpr bool kAmn = KIND == kGgDw;
  constexpr bool kBkc = KIND == kGgDx;
  extern __shared__ uint4 smemRaw[];
  T* smem = reinterpret_cast<T*>(smemRaw);

  const int32_t* ws = p.ws;
  if (ws[0] != 0) return;  // invalid counts: the schedule asked for nothing
  const int32_t* rowStartOf = gg_ws_row_start(ws);
  const int tile = static_cast<int>(blockIdx.x);

  int e, mt, nt;
  if constexpr (KIND == kGgDw) {
    const int perExpert = p.tilesM * p.tilesN;
    e = tile / perExpert;
    const int local = tile - e * perExpert;
    mt = local / p.tilesN;
    nt = local - mt * p.tilesN;
  } else {
    const int32_t* tileStart = gg_ws_tile_start(ws, p.experts);
    e = gg_find_expert(tileStart, p.experts, tile);
    if (e < 0) return;  // past the last tile of the last expert
    const int local = tile - tileStart[e];
    mt = local / p.tilesN;
    nt = local - mt * p.tilesN;
  }
  const int64_t rowStart = rowStartOf[e];
  const int rows = rowStartOf[e + 1] - rowStartOf[e];
  const int m0 = mt * BM;
  const int n0 = nt * BN;
  // Output rows (M) and columns, and the reduction length, of this expert.
  const int mLimit = KIND == kGgDw ? p.k : rows;
  const int nLimit = KIND == kGgDx ? p.k : p.n;
  const int kRed = KIND == kGgForward ? p.k : KIND == kGgDx ? p.n : rows;
  const int numK = (kRed + BK - 1) / BK;
  const int64_t KN = static_cast<int64_t>(p.k) * p.n;

  // Operand bases and leading dimensions.
  const T* aBase;
  int64_t lda;
  const T* bBase;
  int64_t ldb;
  if constexpr (KIND == kGgForward) {
    aBase = p.a + (rowStart + m0) * p.k;  // x rows of the tile, [m][k]
    lda = p.k;
    bBase = p.b + e * KN + n0;  // w[e][k][n0 + .]
    ldb = p.n;
  } else if constexpr (KIND == kGgDx) {
    aBase = p.a + (rowStart + m0) * p.n;  // dy rows, [m][n]
    lda = p.n;
    bBase = p.b + e * KN + static_cast<int64_t>(n0) * p.n;  // w[e][n0 + .][:], K-contiguous over N
    ldb = p.n;
  } else {
    aBase = p.a + rowStart * p.k + m0;  // x[rowStart + r][m0 + .]
    lda = p.k;
    bBase = p.b + rowStart * p.n + n0;  // dy[rowStart + r][n0 + .]
    ldb = p.n;
  }

  const int tid = static_cast<int>(threadIdx.x);
  CopyPlan ca, cb;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int id = tid + i * THREADS;
    if constexpr (kAmn) {
      ca.row[i] = id >> 4;
      ca.chunk[i] = id & 15;
      ca.src[i] = aBase + ca.row[i] * lda + ca.chunk[i] * 8;
      ca.smem[i] = mc_offset(ca.row[i], ca.chunk[i]);
      ca.fixedOk[i] = m0 + ca.chunk[i] * 8 < mLimit;
    } else {
      ca.row[i] = id >> 2;
      ca.chunk[i] = id & 3;
      ca.src[i] = aBase + ca.row[i] * lda + ca.chunk[i] * 8;
      ca.smem[i] = kc_offset(ca.row[i], ca.chunk[i]);
      ca.fixedOk[i] = m0 + ca.row[i] < mLimit;
    }
    if constexpr (kBkc) {
      cb.row[i] = id >> 2;
      cb.chunk[i] = id & 3;
      cb.src[i] = bBase + cb.row[i] * ldb + cb.chunk[i] * 8;
      cb.smem[i] = kc_offset(cb.row[i], cb.chunk[i]);
      cb.fixedOk[i] = n0 + cb.row[i] < nLimit;
    } else {
      cb.row[i] = id >> 4;
      cb.chunk[i] = id & 15;
      cb.src[i] = bBase + cb.row[i] * ldb + cb.chunk[i] * 8;
      cb.smem[i] = mc_offset(cb.row[i], cb.chunk[i]);
      cb.fixedOk[i] = n0 + cb.chunk[i] * 8 < nLimit;
    }
  }
  const uint32_t smemBase = smem_addr(smem);
  // Shared addresses in bytes: stage s holds A at s * 2 * TILE_ELEMS elements, B after it.
  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * BK;
    const uint32_t sA = smemBase + static_cast<uint32_t>(stage * 2 * TILE_ELEMS) * 2u;
    const uint32_t sB = sA + static_cast<uint32_t>(TILE_ELEMS) * 2u;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // MN-contiguous operands advance by k0 rows, K-contiguous ones by k0 columns.
      const bool aOk = ca.fixedOk[i] && (kAmn ? ca.row[i] + k0 < kRed : ca.chunk[i] * 8 + k0 < kRed);
      const T* aSrc = static_cast<const T*>(ca.src[i]) + (kAmn ? k0 * lda : k0);
      cp_async_16(sA + ca.smem[i] * 2, aOk ? static_cast<const void*>(aSrc) : p.a, aOk);
      const bool bOk = cb.fixedOk[i] && (kBkc ? cb.chunk[i] * 8 + k0 < kRed : cb.row[i] + k0 < kRed);
      const T* bSrc = static_cast<const T*>(cb.src[i]) + (kBkc ? k0 : k0 * ldb);
      cp_async_16(sB + cb.smem[i] * 2, bOk ? static_cast<const void*>(bSrc) : p.b, bOk);
    }
  };

  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp >> 2;  // 0..1
  const int wn = warp & 3;   // 0..3

  float acc[FRAG_M][FRAG_N][4];
#pragma unroll
  for (int i = 0; i < FRAG_M; ++i)
#pragma unroll
    for (int j = 0; j < FRAG_N; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < numK) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < numK; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt is visible to all; the stage refilled below is no longer read
    const int next = kt + STAGES - 1;
    if (next < numK) load_stage(next % STAGES, next);
    cp_async_commit();

    const int stage = kt % STAGES;
    const uint32_t sA = smemBase + static_cast<uint32_t>(stage * 2 * TILE_ELEMS) * 2u;
    const uint32_t sB = sA + static_cast<uint32_t>(TILE_ELEMS) * 2u;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[FRAG_M][4];
      uint32_t bf[FRAG_N][2];
#pragma unroll
      for (int i = 0; i < FRAG_M; ++i) {
        const int mBase = wm * WARP_M + i * 16;
        if constexpr (kAmn) {
          // Stored [k][m]: matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
          const int kr = kk * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int mc = (mBase >> 3) + ((lane >> 3) & 1);
          ldmatrix_x4_trans(af[i], sA + mc_offset(kr, mc) * 2);
        } else {
          const int r = mBase + (lane & 15);
          const int c = kk * 2 + (lane >> 4);
          ldmatrix_x4(af[i], sA + kc_offset(r, c) * 2);
        }
      }
#pragma unroll
      for (int jj = 0; jj < FRAG_N / 2; ++jj) {
        const int nBase = wn * WARP_N + jj * 16;
        uint32_t r4[4];
        if constexpr (kBkc) {
          // Stored [n][k]: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
          const int r = nBase + (lane & 7) + ((lane >> 4) << 3);
          const int c = kk * 2 + ((lane >> 3) & 1);
          ldmatrix_x4(r4, sB + kc_offset(r, c) * 2);
        } else {
          // Stored [k][n]: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
          const int kr = kk * 16 + (lane & 15);
          const int nc = (nBase >> 3) + (lane >> 4);
          ldmatrix_x4_trans(r4, sB + mc_offset(kr, nc) * 2);
        }
        bf[2 * jj][0] = r4[0];
        bf[2 * jj][1] = r4[1];
        bf[2 * jj + 1][0] = r4[2];
        bf[2 * jj + 1][1] = r4[3];
      }
#pragma unroll
      for (int i = 0; i < FRAG_M; ++i)
#pragma unroll
        for (int j = 0; j < FRAG_N; ++j) mma_16816<T>(acc[i][j], af[i], bf[j]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: accumulator (i, j) holds rows lane / 4 and lane / 4 + 8, columns
  // 2 (lane % 4) and 2 (lane % 4) + 1 of its 16 x 8 block.
  OutT* outBase;
  int64_t ldo;
  const T* bias = nullptr;
  if constexpr (KIND == kGgDw) {
    outBase = p.out + e * KN;
    ldo = p.n;
  } else {
    outBase = p.out + rowStart * (KIND == kGgDx ? p.k : p.n);
    ldo = KIND == kGgDx ? p.k : p.n;
    if (KIND == kGgForward && p.bias != nullptr) bias = p.bias + static_cast<int64_t>(e) * p.n;
  }
#pragma unroll
  for (int i = 0; i < FRAG_M; ++i) {
    const int row = m0 + wm * WARP_M + i * 16 + (lane >> 2);
#pragma unroll
    for (int j = 0; j < FRAG_N; ++j) {
      const int col = n0 + wn * WARP_N + j * 8 + (lane & 3) * 2;
      gg_epilogue_pair<T, OutT>(outBase, ldo, row, col, mLimit, nLimit, acc[i][j][0], acc[i][j][1], bias, p.act);
      gg_epilogue_pair<T, OutT>(outBase, ldo, row + 8, col, mLimit, nLimit, acc[i][j][2], acc[i][j][3], bias, p.act);
    }
  }
}

template <typename T, int KIND, typename OutT>
int launch_typed(const GgArgs& g, cudaStream_t stream) {
  Sm80Params<T, OutT> p;
  static_cast<GgEpilogueParams<T, OutT>&>(p) = gg_epilogue_params<T, OutT>(g);
  p.a = static_cast<const T*>(g.a);
  p.b = static_cast<const T*>(g.b);
  auto kernel = gg_sm80_kernel<T, KIND, OutT>;
  const int smem = static_cast<int>(g.plan.sharedBytes);
  MOE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<static_cast<unsigned>(g.plan.grid), THREADS, smem, stream>>>(p);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

}  // namespace

int gg_launch_sm80(const GgArgs& g, cudaStream_t stream) {
  return gg_dispatch(g, [&](auto t, auto kind, auto out) {
    return launch_typed<typename decltype(t)::type, decltype(kind)::value, typename decltype(out)::type>(g, stream);
  });
}

}  // namespace moe_cuda
