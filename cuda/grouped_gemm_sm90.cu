// Grouped GEMM for Hopper (sm_90a): warpgroup MMAs (wgmma.mma_async
// m64n128k16, bf16 / f16 inputs, float32 accumulators) reading both operands
// from shared memory, fed by the tensor memory accelerator (cp.async.bulk.tensor
// with CUtensorMaps encoded on the host) through an mbarrier pipeline.
//
// CTA tile 128 x 128 x 64, 4 stages of 32 KB, 384 threads in three warpgroups:
//   warpgroup 0: producer; one thread waits for a free stage (empty barrier),
//                announces its bytes (arrive.expect_tx on the full barrier) and
//                issues the bulk tensor copies;
//   warpgroups 1, 2: consumers of 64 output rows each; they wait on the full
//                barrier, issue four wgmmas per stage, keep one wgmma group in
//                flight and release the stage it read (empty barrier).
// Shared operands use the 128-byte swizzle that the TMA writes and wgmma reads
// (PTX ISA, "Shared Memory Matrix Layout"): each TMA box is 64 elements (128
// bytes) wide, 8-row groups are 1024 bytes apart (the descriptor's stride byte
// offset), stage buffers are 1024-byte aligned (base offset 0).
//   K-major operand (x or dy rows: A of forward and dx; w[e] as [K][N] rows: B of dx):
//       [rows][64] per box; k16 step = +32 bytes on the descriptor start address.
//   MN-major operand (w[e] [K][N]: B of forward; x and dy rows read transposed: dw):
//       boxes of [64 reduction rows][64 MN], one per 64 MN columns, 8 KB apart
//       (the leading byte offset); k16 step = +16 rows = +2048 bytes; imm-trans = 1.
// Tiles are rasterized in groups of kGgGroupM tile rows (gg_tile_coords) so
// that the CTAs resident at once reuse their operand slices in L2.
// Bounds: the TMA zero-fills whatever lies outside the tensor, which covers the
// reduction tail of forward and dx (w is addressed as a 3-D [L][K][N] tensor,
// so no tile reads into the next expert's weights). Output rows that belong to
// the next expert are computed and dropped by the epilogue. For dw the
// reduction runs over the expert's rows, so in its last partial stage the
// consumers zero the rows past the expert before any wgmma reads them
// (generic stores, then fence.proxy.async for the async proxy).
//
// The kernel body exists only where __CUDA_ARCH_FEAT_SM90_ALL is defined (the
// sm_90a target); other targets compile an empty stub. gg_sm90_available()
// tells them apart at run time by the kernel's static shared memory (its
// mbarriers), so a build without sm_90a never selects the stub.
//
// test/cuda-gemm-build.test.ts checks that it compiles for sm_90a without
// spills, with wgmma and TMA instructions in its PTX. Its inline PTX has no
// CPU emulation.
#include <cuda.h>  // CUtensorMap and its enums only: libcuda is reached through cudaGetDriverEntryPoint*
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include <type_traits>

#include "common.cuh"
#include "grouped_gemm.cuh"
#include "grouped_gemm_plan.h"

namespace moe_cuda {
namespace {

constexpr int BM = kGgBlockM;
constexpr int BN = kGgBlockN;
constexpr int BK = kGgSm90BlockK;
constexpr int THREADS = kGgSm90Threads;
constexpr uint32_t kBoxRowBytes = 128;              // 64 bf16 / f16: one swizzle row
constexpr uint32_t kAtomBytes = 64 * kBoxRowBytes;  // one [64][64] box
constexpr uint32_t kTileBytes = BM * BK * 2;        // A tile; the B tile has the same size
constexpr uint32_t kStageBytes = 2 * kTileBytes;
static_assert(BM == BN && kTileBytes == 2 * kAtomBytes, "two 64-wide boxes per operand tile");
static_assert(kStageBytes == gg_sm90_stage_bytes(), "plan and kernel agree");
static_assert(BK * 2 == static_cast<int>(kBoxRowBytes), "BLOCK_K spans one 128-byte swizzle row");

template <typename T, typename OutT>
using Sm90Params = GgEpilogueParams<T, OutT>;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int STAGES = kGgSm90Stages;
constexpr int kConsumerThreads = 256;               // warpgroups 1 and 2
constexpr uint32_t kGroupBytes = 8 * kBoxRowBytes;  // 8-row group: the stride byte offset

// ---- PTX wrappers (sm_90a) --------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Blocks until the phase with parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}

__device__ __forceinline__ void tma_prefetch(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// Coordinates innermost first; completion counted in bytes on `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator registers across the asynchronous
// region between a wgmma and the wait that completes it.
__device__ __forceinline__ void pin_registers(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"):
// start address, leading and stride byte offsets (all >> 4), 128-byte swizzle.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t leadingBytes, uint32_t strideBytes) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((leadingBytes & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((strideBytes & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

#define MOE_GG_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define MOE_GG_D16(i) MOE_GG_D4(i), MOE_GG_D4(i + 4), MOE_GG_D4(i + 8), MOE_GG_D4(i + 12)
#define MOE_GG_D64 MOE_GG_D16(0), MOE_GG_D16(16), MOE_GG_D16(32), MOE_GG_D16(48)
#define MOE_GG_D64_REGS                                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d[64 x 128] += A[64 x 16] · B[16 x 128] for the warpgroup; TA / TB: 1 when
// that operand is MN-major in shared memory.
template <typename T, int TA, int TB>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t descA, uint64_t descB) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " MOE_GG_D64_REGS
        ", %64, %65, p, 1, 1, %67, %68;\n"
        "}\n"
        : MOE_GG_D64
        : "l"(descA), "l"(descB), "r"(1), "n"(TA), "n"(TB));
  } else {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " MOE_GG_D64_REGS
        ", %64, %65, p, 1, 1, %67, %68;\n"
        "}\n"
        : MOE_GG_D64
        : "l"(descA), "l"(descB), "r"(1), "n"(TA), "n"(TB));
  }
}

#undef MOE_GG_D4
#undef MOE_GG_D16
#undef MOE_GG_D64
#undef MOE_GG_D64_REGS

template <typename T, int KIND, typename OutT>
__device__ __forceinline__ void sm90_body(const CUtensorMap* tmA, const CUtensorMap* tmB,
                                          const Sm90Params<T, OutT>& p) {
  constexpr bool kAmn = KIND == kGgDw;  // A read MN-major (x transposed)
  constexpr bool kBkm = KIND == kGgDx;  // B read K-major (w[e] rows)
  __shared__ __align__(8) uint64_t fullBar[STAGES];
  __shared__ __align__(8) uint64_t emptyBar[STAGES];
  extern __shared__ __align__(16) uint8_t smemRaw[];

  const int32_t* ws = p.ws;
  if (ws[0] != 0) return;  // invalid counts: the schedule asked for nothing
  const int32_t* rowStartOf = gg_ws_row_start(ws);
  const int tile = static_cast<int>(blockIdx.x);
  int e, mt, nt;
  if constexpr (KIND == kGgDw) {
    const int perExpert = p.tilesM * p.tilesN;
    e = tile / perExpert;
    gg_tile_coords(tile - e * perExpert, p.tilesM, p.tilesN, mt, nt);
  } else {
    const int32_t* tileStart = gg_ws_tile_start(ws, p.experts);
    e = gg_find_expert(tileStart, p.experts, tile);
    if (e < 0) return;
    gg_tile_coords(tile - tileStart[e], (tileStart[e + 1] - tileStart[e]) / p.tilesN, p.tilesN, mt, nt);
  }
  const int rowStart = rowStartOf[e];
  const int rows = rowStartOf[e + 1] - rowStart;
  const int m0 = mt * BM;
  const int n0 = nt * BN;
  const int mLimit = KIND == kGgDw ? p.k : rows;
  const int nLimit = KIND == kGgDx ? p.k : p.n;
  const int kRed = KIND == kGgForward ? p.k : KIND == kGgDx ? p.n : rows;
  const int numK = (kRed + BK - 1) / BK;

  const uint32_t rawAddr = smem_addr(smemRaw);
  const uint32_t base = (rawAddr + 1023u) & ~1023u;
  uint8_t* baseGeneric = smemRaw + (base - rawAddr);
  const int tid = static_cast<int>(threadIdx.x);
  const int warpgroup = tid / 128;

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(smem_addr(&fullBar[s]), 1);
      mbar_init(smem_addr(&emptyBar[s]), kConsumerThreads / 128);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warpgroup == 0) {
    // Producer: one thread drives the TMA; the rest of the warpgroup is idle.
    if (tid != 0) return;
    tma_prefetch(tmA);
    tma_prefetch(tmB);
    for (int kt = 0; kt < numK; ++kt) {
      const int s = kt % STAGES;
      if (kt >= STAGES) mbar_wait(smem_addr(&emptyBar[s]), static_cast<uint32_t>((kt / STAGES - 1) & 1));
      const uint32_t full = smem_addr(&fullBar[s]);
      mbar_arrive_expect_tx(full, kStageBytes);
      const uint32_t sA = base + s * kStageBytes;
      const uint32_t sB = sA + kTileBytes;
      const int k0 = kt * BK;
      if constexpr (KIND == kGgForward) {
        tma_load_2d(sA, tmA, full, k0, rowStart + m0);  // x[rows][k0 .. k0 + 64)
        tma_load_3d(sB, tmB, full, n0, k0, e);          // w[e][k0 .. + 64][n0 .. + 64)
        tma_load_3d(sB + kAtomBytes, tmB, full, n0 + 64, k0, e);
      } else if constexpr (KIND == kGgDx) {
        tma_load_2d(sA, tmA, full, k0, rowStart + m0);  // dy[rows][k0 .. k0 + 64)
        tma_load_3d(sB, tmB, full, k0, n0, e);          // w[e][n0 .. + 128][k0 .. + 64)
      } else {
        tma_load_2d(sA, tmA, full, m0, rowStart + k0);  // x[rowStart + k0 ..][m0 .. + 64)
        tma_load_2d(sA + kAtomBytes, tmA, full, m0 + 64, rowStart + k0);
        tma_load_2d(sB, tmB, full, n0, rowStart + k0);  // dy[rowStart + k0 ..][n0 .. + 64)
        tma_load_2d(sB + kAtomBytes, tmB, full, n0 + 64, rowStart + k0);
      }
    }
    return;
  }

  // Consumers: warpgroup c = 1, 2 computes output rows m0 + 64 (c - 1) .. + 64.
  const int c = warpgroup - 1;
  const int ctid = tid - 128;  // 0..255 over both consumer warpgroups
  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;

  for (int kt = 0; kt < numK; ++kt) {
    const int s = kt % STAGES;
    mbar_wait(smem_addr(&fullBar[s]), static_cast<uint32_t>((kt / STAGES) & 1));
    const uint32_t sA = base + s * kStageBytes;
    const uint32_t sB = sA + kTileBytes;
    if constexpr (KIND == kGgDw) {
      const int valid = kRed - kt * BK;
      if (valid < BK) {
        // Rows valid .. 63 of the four boxes hold the next expert's rows (or
        // TMA zeros): clear them. A swizzled row stays inside its 128 bytes.
        const int perBox = (BK - valid) * 8;  // 16-byte chunks per box
        uint8_t* stage = baseGeneric + s * kStageBytes;
        for (int idx = ctid; idx < 4 * perBox; idx += kConsumerThreads) {
          const int box = idx / perBox;
          const int rem = idx - box * perBox;
          uint8_t* at = stage + box * kAtomBytes + (valid + rem / 8) * kBoxRowBytes + (rem % 8) * 16;
          *reinterpret_cast<uint4*>(at) = make_uint4(0u, 0u, 0u, 0u);
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerThreads) : "memory");
      }
    }
    // 64 rows of this warpgroup: K-major rows 64c.. start 64 * 128 bytes in;
    // MN-major box c (columns 64c..) starts kAtomBytes in: the same offset.
    const uint32_t aBase = sA + static_cast<uint32_t>(c) * kAtomBytes;
    pin_registers(d);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      const uint64_t descA = kAmn ? smem_desc(aBase + kk * 16 * kBoxRowBytes, kAtomBytes, kGroupBytes)
                                  : smem_desc(aBase + kk * 32, 16, kGroupBytes);
      const uint64_t descB = kBkm ? smem_desc(sB + kk * 32, 16, kGroupBytes)
                                  : smem_desc(sB + kk * 16 * kBoxRowBytes, kAtomBytes, kGroupBytes);
      wgmma_m64n128k16<T, kAmn ? 1 : 0, kBkm ? 0 : 1>(d, descA, descB);
    }
    wgmma_commit();
    wgmma_wait<1>();  // the group of stage kt - 1 has finished reading it
    pin_registers(d);
    if (kt > 0 && (tid & 127) == 0) mbar_arrive(smem_addr(&emptyBar[(kt - 1) % STAGES]));
  }
  wgmma_wait<0>();
  pin_registers(d);

  // Epilogue. Accumulator layout of m64nNk16 (per warp w of the warpgroup):
  // d[4j + 0, 1] at row 16w + lane / 4, columns 8j + 2 (lane % 4) + {0, 1};
  // d[4j + 2, 3] at row + 8.
  const int lane = tid & 31;
  const int w = (tid & 127) >> 5;
  const int row = m0 + c * 64 + w * 16 + (lane >> 2);
  OutT* outBase;
  int64_t ldo;
  const T* bias = nullptr;
  if constexpr (KIND == kGgDw) {
    outBase = p.out + static_cast<int64_t>(e) * p.k * p.n;
    ldo = p.n;
  } else {
    ldo = KIND == kGgDx ? p.k : p.n;
    outBase = p.out + static_cast<int64_t>(rowStart) * ldo;
    if (KIND == kGgForward && p.bias != nullptr) bias = p.bias + static_cast<int64_t>(e) * p.n;
  }
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int col = n0 + j * 8 + (lane & 3) * 2;
    gg_epilogue_pair<T, OutT>(outBase, ldo, row, col, mLimit, nLimit, d[4 * j], d[4 * j + 1], bias, p.act);
    gg_epilogue_pair<T, OutT>(outBase, ldo, row + 8, col, mLimit, nLimit, d[4 * j + 2], d[4 * j + 3], bias, p.act);
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int KIND, typename OutT>
__global__ void __launch_bounds__(THREADS, 1)
    gg_sm90_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                   const Sm90Params<T, OutT> p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  sm90_body<T, KIND, OutT>(&tmA, &tmB, p);
#endif
}

// ---- host: tensor maps through the driver entry point --------------------------------

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = []() -> PFN_cuTensorMapEncodeTiled_v12000 {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
    if (err != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A row-major tensor of `rank` (2 or 3) dimensions, innermost first, read in
// boxes of `box` elements with the 128-byte swizzle; out-of-bounds reads are zeros.
int encode_map(CUtensorMap* map, int dtype, const void* ptr, int rank, const uint64_t* dims, const uint32_t* box) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = encode_tiled_fn();
  if (encode == nullptr) return static_cast<int>(cudaErrorNotSupported);
  cuuint64_t gdim[3];
  cuuint64_t gstride[2];  // bytes, of dimensions 1..rank-1
  cuuint32_t boxDim[3];
  cuuint32_t elemStride[3] = {1, 1, 1};
  uint64_t stride = 2;
  for (int i = 0; i < rank; ++i) {
    gdim[i] = dims[i];
    boxDim[i] = box[i];
    if (i > 0) gstride[i - 1] = stride;
    stride *= dims[i];
  }
  const CUresult r =
      encode(map, dtype == MOE_CUDA_GG_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
             static_cast<cuuint32_t>(rank), const_cast<void*>(ptr), gdim, gstride, boxDim, elemStride,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? 0 : static_cast<int>(cudaErrorInvalidValue);
}

template <typename T, int KIND, typename OutT>
int launch_typed(const GgArgs& g, cudaStream_t stream) {
  const uint64_t R = static_cast<uint64_t>(g.totalRows);
  const uint64_t K = static_cast<uint64_t>(g.k);
  const uint64_t N = static_cast<uint64_t>(g.n);
  const uint64_t L = static_cast<uint64_t>(g.experts);
  CUtensorMap tmA, tmB;
  if constexpr (KIND == kGgForward) {
    const uint64_t dA[2] = {K, R}, dB[3] = {N, K, L};
    const uint32_t bA[2] = {64, BM}, bB[3] = {64, BK, 1};
    if (int r = encode_map(&tmA, g.dtype, g.a, 2, dA, bA)) return r;
    if (int r = encode_map(&tmB, g.dtype, g.b, 3, dB, bB)) return r;
  } else if constexpr (KIND == kGgDx) {
    const uint64_t dA[2] = {N, R}, dB[3] = {N, K, L};
    const uint32_t bA[2] = {64, BM}, bB[3] = {64, BN, 1};
    if (int r = encode_map(&tmA, g.dtype, g.a, 2, dA, bA)) return r;
    if (int r = encode_map(&tmB, g.dtype, g.b, 3, dB, bB)) return r;
  } else {
    const uint64_t dA[2] = {K, R}, dB[2] = {N, R};
    const uint32_t bA[2] = {64, BK}, bB[2] = {64, BK};
    if (int r = encode_map(&tmA, g.dtype, g.a, 2, dA, bA)) return r;
    if (int r = encode_map(&tmB, g.dtype, g.b, 2, dB, bB)) return r;
  }
  const Sm90Params<T, OutT> p = gg_epilogue_params<T, OutT>(g);
  auto kernel = gg_sm90_kernel<T, KIND, OutT>;
  const int smem = static_cast<int>(g.plan.sharedBytes);
  MOE_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<static_cast<unsigned>(g.plan.grid), THREADS, smem, stream>>>(tmA, tmB, p);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

}  // namespace

bool gg_sm90_available(int* error) {
  *error = 0;
  int device = 0;
  int major = 0;
  int minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess) {
    *error = static_cast<int>(err);
    return false;
  }
  // sm_90a code runs on compute capability 9.0 only.
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes fa;
  err = cudaFuncGetAttributes(&fa, gg_sm90_kernel<__nv_bfloat16, kGgForward, __nv_bfloat16>);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  // The stub compiled for other targets declares no shared memory.
  return fa.sharedSizeBytes > 0 && encode_tiled_fn() != nullptr;
}

int gg_launch_sm90(const GgArgs& g, cudaStream_t stream) {
  return gg_dispatch(g, [&](auto t, auto kind, auto out) {
    return launch_typed<typename decltype(t)::type, decltype(kind)::value, typename decltype(out)::type>(g, stream);
  });
}

}  // namespace moe_cuda
