// The row maps' other ops on the GPU (docs/math.md#permute,
// docs/math.md#unpermute): permute's backward (a gather-sum), unpermute (the
// weighted combine, fused) and unpermute's backward (d rows, d weights).
//
// One warp per output row; each lane owns whole columns and sums a token's k
// choices in j order in float32, so every output is the same bits on every
// run. Rows are moved in 16-byte packs where the width allows, several packs
// in flight per lane. unpermute's backward counts each row's readers (integer
// atomics: the totals do not depend on the order) and then, in one pass over
// the pairs, writes d weights and the d rows of every row with exactly one
// reader from the same loads of dy; rows read by none are zeroed, and rows
// read by several sum their readers in flat order. Entries of pair_to_row
// outside [-1, R) are treated as -1 (the host tags them on the status word
// first).
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;

__device__ __forceinline__ int32_t row_of(const int32_t* pairToRow, int64_t i, int64_t rows) {
  const int32_t r = pairToRow[i];
  return (r >= 0 && r < rows) ? r : -1;
}

// Tags (status, tag) with the smallest flat index whose entry lies outside
// [-1, rows), over the k entries of a token (one lane per entry).
__device__ __forceinline__ void check_entries(const int32_t* pairToRow, int64_t pair0, int topK, int64_t rows,
                                              void* status, unsigned int tag) {
  if (status == nullptr) return;
  for (int j = threadIdx.x & 31; j < topK; j += 32) {
    const int32_t v = pairToRow[pair0 + j];
    if (v < -1 || v >= rows) report_status(status, tag, pair0 + j);
  }
}

__device__ __forceinline__ int64_t first_warp() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}
__device__ __forceinline__ int64_t warp_count() { return static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5); }

// Packs of U·32 per lane are in flight at once: each lane issues U independent
// loads before it uses any of them (rows are long, warps few per row).
constexpr int kUnroll = 4;

// dx[t] = Σ_j dRows[pairToRow[t, j]] (or y[t] = Σ_j w[t, j] · rows[...] when weights are given).
// Each element's sum runs over j in order from 0.f, whatever the pack width N.
template <class T, int N, bool WEIGHTED>
__global__ void __launch_bounds__(kRowThreads, 2)
    combine_kernel(const T* __restrict__ src, int64_t numRows, int64_t D, const int32_t* __restrict__ pairToRow,
                   const float* __restrict__ weights, int64_t tokens, int topK, T* __restrict__ out, void* status,
                   unsigned int tag) {
  const int lane = threadIdx.x & 31;
  const int64_t packs = D / N;
  for (int64_t t = first_warp(); t < tokens; t += warp_count()) {
    const int64_t pair0 = t * topK;
    check_entries(pairToRow, pair0, topK, numRows, status, tag);
    T* dst = out + t * D;
    for (int64_t v0 = lane; v0 < packs; v0 += 32 * kUnroll) {
      float acc[kUnroll][N];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int i = 0; i < N; ++i) acc[u][i] = 0.f;
      for (int j = 0; j < topK; ++j) {
        const int32_t r = row_of(pairToRow, pair0 + j, numRows);
        if (r < 0) continue;
        const float w = WEIGHTED ? weights[pair0 + j] : 1.f;
        const T* row = src + static_cast<int64_t>(r) * D;
        float x[kUnroll][N];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (v0 + 32 * u < packs) {
            load_pack<T, N>(row + (v0 + 32 * u) * N, x[u]);
          } else {
#pragma unroll
            for (int i = 0; i < N; ++i) x[u][i] = 0.f;
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
          for (int i = 0; i < N; ++i) acc[u][i] = WEIGHTED ? fmaf(w, x[u][i], acc[u][i]) : acc[u][i] + x[u][i];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (v0 + 32 * u < packs) store_pack<T, N>(dst + (v0 + 32 * u) * N, acc[u]);
    }
  }
}

// Readers of each row: how many pairs read it, and the first of them.
__global__ void row_readers_init_kernel(int64_t numRows, int32_t* readers, int32_t* firstReader) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < numRows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    readers[r] = 0;
    firstReader[r] = INT32_MAX;
  }
}
__global__ void row_readers_kernel(const int32_t* pairToRow, int64_t pairs, int64_t numRows, int32_t* readers,
                                   int32_t* firstReader, void* status, unsigned int tag) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t v = pairToRow[i];
    if (status != nullptr && (v < -1 || v >= numRows)) report_status(status, tag, i);
    const int32_t r = (v >= 0 && v < numRows) ? v : -1;
    if (r < 0) continue;
    atomicAdd(&readers[r], 1);  // integer totals: the same whatever the order
    atomicMin(&firstReader[r], static_cast<int32_t>(i));
  }
}

// One warp per pair: dWeights[i] = ⟨dy[i / k], rows[pairToRow[i]]⟩ (lane l sums
// packs l, l + 32, ... in order, then a fixed butterfly); and when the pair is
// its row's only reader, dRows of that row = w · dy (from the same loads).
template <class TDy, class TR, int N>
__global__ void __launch_bounds__(kRowThreads, 2)
    unpermute_bwd_pairs_kernel(const TDy* __restrict__ dy, const TR* __restrict__ rows, int64_t numRows, int64_t D,
                               const int32_t* __restrict__ pairToRow, const float* __restrict__ weights, int64_t pairs,
                               int topK, const int32_t* __restrict__ readers, float* __restrict__ dWeights,
                               TR* __restrict__ dRows) {
  const int lane = threadIdx.x & 31;
  const int64_t packs = D / N;
  for (int64_t i = first_warp(); i < pairs; i += warp_count()) {
    const int32_t r = row_of(pairToRow, i, numRows);
    float acc = 0.f;
    if (r >= 0) {
      const bool only = readers[r] == 1;
      const float w = weights[i];
      const TDy* g = dy + (i / topK) * D;
      const TR* x = rows + static_cast<int64_t>(r) * D;
      TR* o = dRows + static_cast<int64_t>(r) * D;
      for (int64_t v0 = lane; v0 < packs; v0 += 32 * kUnroll) {
        float a[kUnroll][N], b[kUnroll][N];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (v0 + 32 * u < packs) {
            load_pack<TDy, N>(g + (v0 + 32 * u) * N, a[u]);
            load_pack<TR, N>(x + (v0 + 32 * u) * N, b[u]);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (v0 + 32 * u < packs) {
#pragma unroll
            for (int e = 0; e < N; ++e) acc = fmaf(a[u][e], b[u][e], acc);
            if (only) {
              float d[N];
#pragma unroll
              for (int e = 0; e < N; ++e) d[e] = fmaf(w, a[u][e], 0.f);
              store_pack<TR, N>(o + (v0 + 32 * u) * N, d);
            }
          }
        }
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) dWeights[i] = acc;
  }
}

// dRows of the rows that do not have exactly one reader: zero when none reads
// them; else Σ over the readers in flat order (found by walking pairToRow up
// from the first reader) of w · dy[t]. A warp takes 32 rows at a time.
template <class TDy, class TR, int N>
__global__ void __launch_bounds__(kRowThreads, 2)
    unpermute_bwd_rows_kernel(const TDy* __restrict__ dy, int64_t D, const float* __restrict__ weights, int topK,
                              const int32_t* __restrict__ pairToRow, int64_t pairs, int64_t numRows,
                              const int32_t* __restrict__ readers, const int32_t* __restrict__ firstReader,
                              TR* __restrict__ dRows) {
  const int lane = threadIdx.x & 31;
  const int64_t packs = D / N;
  for (int64_t r0 = first_warp() * 32; r0 < numRows; r0 += warp_count() * 32) {
    const int32_t mine = r0 + lane < numRows ? readers[r0 + lane] : 1;
    unsigned int todo = __ballot_sync(kFullMask, mine != 1);
    while (todo != 0u) {
      const int l = __ffs(todo) - 1;
      todo &= todo - 1u;
      const int64_t r = r0 + l;
      const int32_t count = __shfl_sync(kFullMask, mine, l);
      TR* o = dRows + r * D;
      const int64_t first = count > 0 ? firstReader[r] : pairs;
      // Every lane runs every step (the ballots below need the whole warp).
      for (int64_t c0 = 0; c0 < packs; c0 += 32 * kUnroll) {
        const int64_t v0 = c0 + lane;
        float acc[kUnroll][N];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
          for (int e = 0; e < N; ++e) acc[u][e] = 0.f;
        int32_t left = count;
        for (int64_t base = first; left > 0 && base < pairs; base += 32) {
          const bool hit = base + lane < pairs && row_of(pairToRow, base + lane, numRows) == r;
          unsigned int hits = __ballot_sync(kFullMask, hit);
          while (hits != 0u && left > 0) {
            const int64_t pair = base + __ffs(hits) - 1;
            hits &= hits - 1u;
            --left;
            const float w = weights[pair];
            const TDy* g = dy + (pair / topK) * D;
            float x[kUnroll][N];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              if (v0 + 32 * u < packs) {
                load_pack<TDy, N>(g + (v0 + 32 * u) * N, x[u]);
              } else {
#pragma unroll
                for (int e = 0; e < N; ++e) x[u][e] = 0.f;
              }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u)
#pragma unroll
              for (int e = 0; e < N; ++e) acc[u][e] = fmaf(w, x[u][e], acc[u][e]);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (v0 + 32 * u < packs) store_pack<TR, N>(o + (v0 + 32 * u) * N, acc[u]);
      }
    }
  }
}

unsigned int warps_grid(int64_t items) { return grid_for(items, kRowWarps, 1 << 16); }

// Elements per pack: 16 bytes when D allows, else 4 elements, else 1.
template <class T>
int pack_width(int64_t D) {
  constexpr int wide = 16 / static_cast<int>(sizeof(T));
  return D % wide == 0 ? wide : (D % 4 == 0 ? 4 : 1);
}

template <bool WEIGHTED>
int launch_combine(const void* src, int dtype, int64_t numRows, int64_t D, const int32_t* pairToRow,
                   const float* weights, int64_t tokens, int topK, void* out, void* status, unsigned int tag,
                   cudaStream_t s) {
  const unsigned int grid = warps_grid(tokens);
  MOE_SWITCH_FLOAT(dtype, T, {
    const int n = pack_width<T>(D);
    if (n == 8)
      combine_kernel<T, 8, WEIGHTED><<<grid, kRowThreads, 0, s>>>(
          static_cast<const T*>(src), numRows, D, pairToRow, weights, tokens, topK, static_cast<T*>(out), status, tag);
    else if (n == 4)
      combine_kernel<T, 4, WEIGHTED><<<grid, kRowThreads, 0, s>>>(
          static_cast<const T*>(src), numRows, D, pairToRow, weights, tokens, topK, static_cast<T*>(out), status, tag);
    else
      combine_kernel<T, 1, WEIGHTED><<<grid, kRowThreads, 0, s>>>(
          static_cast<const T*>(src), numRows, D, pairToRow, weights, tokens, topK, static_cast<T*>(out), status, tag);
  });
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

struct BackwardLayout {
  size_t readers, firstReader, end;
};

BackwardLayout backward_layout(int64_t numRows) {
  BackwardLayout l{};
  l.readers = 0;
  l.firstReader = align_up(4 * static_cast<size_t>(numRows));
  l.end = l.firstReader + align_up(4 * static_cast<size_t>(numRows));
  return l;
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_permute_backward(const void* d_rows, int dtype, int64_t num_rows, int64_t d_model,
                                         const int32_t* pair_to_row, int64_t tokens, int top_k, void* dx, void* status,
                                         uint32_t tag, void* stream) {
  using namespace moe_cuda;
  if (num_rows < 0 || d_model < 0 || tokens < 0 || top_k < 1) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (tokens == 0 || d_model == 0) return 0;
  if (!dx || !pair_to_row || (num_rows > 0 && !d_rows)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (status != nullptr && tag == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  return launch_combine<false>(d_rows, dtype, num_rows, d_model, pair_to_row, nullptr, tokens, top_k, dx, status, tag,
                               static_cast<cudaStream_t>(stream));
}

extern "C" int moe_cuda_unpermute_forward(const void* rows, int dtype, int64_t num_rows, int64_t d_model,
                                          const int32_t* pair_to_row, const float* weights, int64_t tokens, int top_k,
                                          void* y, void* status, uint32_t tag, void* stream) {
  using namespace moe_cuda;
  if (num_rows < 0 || d_model < 0 || tokens < 0 || top_k < 1) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (tokens == 0 || d_model == 0) return 0;
  if (!y || !pair_to_row || !weights || (num_rows > 0 && !rows)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (status != nullptr && tag == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  return launch_combine<true>(rows, dtype, num_rows, d_model, pair_to_row, weights, tokens, top_k, y, status, tag,
                              static_cast<cudaStream_t>(stream));
}

extern "C" int moe_cuda_unpermute_backward_workspace_bytes(int64_t pairs, int64_t num_rows, size_t* bytes) {
  using namespace moe_cuda;
  if (!bytes || pairs < 0 || pairs > INT32_MAX || num_rows < 0 || num_rows > INT32_MAX)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  *bytes = backward_layout(num_rows).end;
  return 0;
}

extern "C" int moe_cuda_unpermute_backward(const void* dy, int dy_dtype, const void* rows, int rows_dtype,
                                           int64_t num_rows, int64_t d_model, const int32_t* pair_to_row,
                                           const float* weights, int64_t tokens, int top_k, void* d_rows,
                                           float* d_weights, void* workspace, size_t workspace_bytes, void* status,
                                           uint32_t tag, void* stream) {
  using namespace moe_cuda;
  if (num_rows < 0 || num_rows > INT32_MAX || d_model < 0 || tokens < 0 || top_k < 1)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t pairs = tokens * top_k;
  if (pairs > INT32_MAX) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const BackwardLayout l = backward_layout(num_rows);
  if (num_rows > 0 && (!workspace || workspace_bytes < l.end)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if ((pairs > 0 && (!pair_to_row || !weights || !d_weights)) || (num_rows > 0 && d_model > 0 && !d_rows))
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (pairs > 0 && d_model > 0 && (!dy || (num_rows > 0 && !rows))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (status != nullptr && tag == 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  // d weights keep 4-element packs (lane l sums elements 4l.., 4(l + 32).., ...): the
  // butterfly's inputs, and so its bits, follow from that split.
  const int N = d_model % 4 == 0 ? 4 : 1;

  if (pairs > 0 && (d_model == 0 || num_rows == 0)) {
    MOE_CUDA_TRY(cudaMemsetAsync(d_weights, 0, 4 * static_cast<size_t>(pairs), s));
    return 0;
  }
  if (num_rows == 0 || d_model == 0) return 0;

  int32_t* readers = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) + l.readers);
  int32_t* firstReader = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) + l.firstReader);
  row_readers_init_kernel<<<grid_for(num_rows, 256, 1 << 16), 256, 0, s>>>(num_rows, readers, firstReader);
  MOE_CUDA_TRY_LAUNCH();
  if (pairs > 0) {
    row_readers_kernel<<<grid_for(pairs, 256, 1 << 16), 256, 0, s>>>(pair_to_row, pairs, num_rows, readers, firstReader,
                                                                     status, tag);
    MOE_CUDA_TRY_LAUNCH();
    const unsigned int grid = warps_grid(pairs);
    MOE_SWITCH_FLOAT(dy_dtype, TDy, MOE_SWITCH_FLOAT(rows_dtype, TR, {
                       if (N == 4)
                         unpermute_bwd_pairs_kernel<TDy, TR, 4><<<grid, kRowThreads, 0, s>>>(
                             static_cast<const TDy*>(dy), static_cast<const TR*>(rows), num_rows, d_model, pair_to_row,
                             weights, pairs, top_k, readers, d_weights, static_cast<TR*>(d_rows));
                       else
                         unpermute_bwd_pairs_kernel<TDy, TR, 1><<<grid, kRowThreads, 0, s>>>(
                             static_cast<const TDy*>(dy), static_cast<const TR*>(rows), num_rows, d_model, pair_to_row,
                             weights, pairs, top_k, readers, d_weights, static_cast<TR*>(d_rows));
                     }));
    MOE_CUDA_TRY_LAUNCH();
  }
  const unsigned int grid = warps_grid((num_rows + 31) / 32);
  MOE_SWITCH_FLOAT(dy_dtype, TDy, MOE_SWITCH_FLOAT(rows_dtype, TR, {
                     if (N == 4)
                       unpermute_bwd_rows_kernel<TDy, TR, 4><<<grid, kRowThreads, 0, s>>>(
                           static_cast<const TDy*>(dy), d_model, weights, top_k, pair_to_row, pairs, num_rows, readers,
                           firstReader, static_cast<TR*>(d_rows));
                     else
                       unpermute_bwd_rows_kernel<TDy, TR, 1><<<grid, kRowThreads, 0, s>>>(
                           static_cast<const TDy*>(dy), d_model, weights, top_k, pair_to_row, pairs, num_rows, readers,
                           firstReader, static_cast<TR*>(d_rows));
                   }));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
