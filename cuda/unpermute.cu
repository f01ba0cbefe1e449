// The row maps' other ops on the GPU (MATH.md: Permute; Combine and
// unpermute; Backward): permute's backward (a gather-sum), unpermute (the
// weighted combine, fused) and unpermute's backward (d rows, d weights).
//
// One warp per output row; each lane owns whole columns and sums a token's k
// choices in j order in float32, so every output is the same bits on every
// run. The d rows of unpermute's backward visit each row's readers in flat
// order: a CUB radix sort of the keys (row << 32 | pair), unique, so the order
// does not depend on the sort's stability. Entries of pair_to_row outside
// [-1, R) are treated as -1 (the host tags them on the status word first).
//
// Status: compiled for sm_80 and sm_90a, NOT YET RUN ON A GPU.
#include <cub/device/device_radix_sort.cuh>
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

__device__ __forceinline__ int64_t first_warp() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}
__device__ __forceinline__ int64_t warp_count() { return static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5); }

// dx[t] = Σ_j dRows[pairToRow[t, j]] (or y[t] = Σ_j w[t, j] · rows[...] when weights are given).
template <class T, int N, bool WEIGHTED>
__global__ void __launch_bounds__(kRowThreads)
    combine_kernel(const T* __restrict__ src, int64_t numRows, int64_t D, const int32_t* __restrict__ pairToRow,
                   const float* __restrict__ weights, int64_t tokens, int topK, T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t packs = D / N;
  for (int64_t t = first_warp(); t < tokens; t += warp_count()) {
    const int64_t pair0 = t * topK;
    for (int64_t v = lane; v < packs; v += 32) {
      float acc[N];
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] = 0.f;
      for (int j = 0; j < topK; ++j) {
        const int32_t r = row_of(pairToRow, pair0 + j, numRows);
        if (r < 0) continue;
        float x[N];
        load_pack<T, N>(src + static_cast<int64_t>(r) * D + v * N, x);
        const float w = WEIGHTED ? weights[pair0 + j] : 1.f;
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = WEIGHTED ? fmaf(w, x[i], acc[i]) : acc[i] + x[i];
      }
      store_pack<T, N>(out + t * D + v * N, acc);
    }
  }
}

// dWeights[i] = ⟨dy[i / k], rows[pairToRow[i]]⟩: one warp per pair, a fixed butterfly.
template <class TDy, class TR, int N>
__global__ void __launch_bounds__(kRowThreads)
    d_weights_kernel(const TDy* __restrict__ dy, const TR* __restrict__ rows, int64_t numRows, int64_t D,
                     const int32_t* __restrict__ pairToRow, int64_t pairs, int topK, float* __restrict__ dWeights) {
  const int lane = threadIdx.x & 31;
  const int64_t packs = D / N;
  for (int64_t i = first_warp(); i < pairs; i += warp_count()) {
    const int32_t r = row_of(pairToRow, i, numRows);
    float acc = 0.f;
    if (r >= 0) {
      const TDy* g = dy + (i / topK) * D;
      const TR* x = rows + static_cast<int64_t>(r) * D;
      for (int64_t v = lane; v < packs; v += 32) {
        float a[N], b[N];
        load_pack<TDy, N>(g + v * N, a);
        load_pack<TR, N>(x + v * N, b);
#pragma unroll
        for (int e = 0; e < N; ++e) acc = fmaf(a[e], b[e], acc);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) dWeights[i] = acc;
  }
}

// Keys (row << 32 | pair), with dropped or invalid pairs keyed past the last row.
__global__ void row_keys_kernel(const int32_t* pairToRow, int64_t pairs, int64_t numRows,
                                unsigned long long* keys) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t r = row_of(pairToRow, i, numRows);
    const unsigned long long row = r < 0 ? static_cast<unsigned long long>(numRows) : static_cast<unsigned long long>(r);
    keys[i] = (row << 32) | static_cast<unsigned long long>(i);
  }
}

// rowFirst[r] = the first sorted position whose key has row r (-1 stays for rows no pair reads).
__global__ void row_first_kernel(const unsigned long long* sorted, int64_t pairs, int64_t numRows,
                                 int32_t* rowFirst) {
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < pairs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const unsigned long long row = sorted[q] >> 32;
    if (row < static_cast<unsigned long long>(numRows) && (q == 0 || (sorted[q - 1] >> 32) != row))
      rowFirst[row] = static_cast<int32_t>(q);
  }
}

// dRows[r] = Σ over the readers of r (flat order) of w · dy[t]; zero when none.
template <class TDy, class TR, int N>
__global__ void __launch_bounds__(kRowThreads)
    d_rows_kernel(const TDy* __restrict__ dy, int64_t D, const float* __restrict__ weights, int topK,
                  const unsigned long long* __restrict__ sorted, int64_t pairs, const int32_t* __restrict__ rowFirst,
                  int64_t numRows, TR* __restrict__ dRows) {
  const int lane = threadIdx.x & 31;
  const int64_t packs = D / N;
  for (int64_t r = first_warp(); r < numRows; r += warp_count()) {
    const int32_t q0 = rowFirst[r];
    for (int64_t v = lane; v < packs; v += 32) {
      float acc[N];
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] = 0.f;
      for (int64_t q = q0; q >= 0 && q < pairs && (sorted[q] >> 32) == static_cast<unsigned long long>(r); ++q) {
        const int64_t pair = static_cast<int64_t>(sorted[q] & 0xffffffffull);
        const float w = weights[pair];
        float g[N];
        load_pack<TDy, N>(dy + (pair / topK) * D + v * N, g);
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = fmaf(w, g[i], acc[i]);
      }
      store_pack<TR, N>(dRows + r * D + v * N, acc);
    }
  }
}

unsigned int warps_grid(int64_t items) { return grid_for(items, kRowWarps, 1 << 16); }

template <bool WEIGHTED>
int launch_combine(const void* src, int dtype, int64_t numRows, int64_t D, const int32_t* pairToRow,
                   const float* weights, int64_t tokens, int topK, void* out, cudaStream_t s) {
  const unsigned int grid = warps_grid(tokens);
  MOE_SWITCH_FLOAT(dtype, T, {
    if (D % 4 == 0)
      combine_kernel<T, 4, WEIGHTED><<<grid, kRowThreads, 0, s>>>(static_cast<const T*>(src), numRows, D, pairToRow,
                                                                   weights, tokens, topK, static_cast<T*>(out));
    else
      combine_kernel<T, 1, WEIGHTED><<<grid, kRowThreads, 0, s>>>(static_cast<const T*>(src), numRows, D, pairToRow,
                                                                   weights, tokens, topK, static_cast<T*>(out));
  });
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

struct BackwardLayout {
  size_t keys, sorted, rowFirst, cub;
};

BackwardLayout backward_layout(int64_t pairs, int64_t numRows) {
  BackwardLayout l{};
  size_t at = 0;
  l.keys = at;
  at += align_up(8 * static_cast<size_t>(pairs));
  l.sorted = at;
  at += align_up(8 * static_cast<size_t>(pairs));
  l.rowFirst = at;
  at += align_up(4 * static_cast<size_t>(numRows));
  l.cub = at;
  return l;
}

// Bits that hold every key: 32 for the pair, then enough for rows 0..numRows.
int key_bits(int64_t numRows) {
  int bits = 1;
  while (bits < 31 && (int64_t(1) << bits) <= numRows) ++bits;
  return 32 + bits;
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_permute_backward(const void* d_rows, int dtype, int64_t num_rows, int64_t d_model,
                                         const int32_t* pair_to_row, int64_t tokens, int top_k, void* dx,
                                         void* stream) {
  using namespace moe_cuda;
  if (num_rows < 0 || d_model < 0 || tokens < 0 || top_k < 1) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (tokens == 0 || d_model == 0) return 0;
  if (!dx || !pair_to_row || (num_rows > 0 && !d_rows)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  return launch_combine<false>(d_rows, dtype, num_rows, d_model, pair_to_row, nullptr, tokens, top_k, dx,
                               static_cast<cudaStream_t>(stream));
}

extern "C" int moe_cuda_unpermute_forward(const void* rows, int dtype, int64_t num_rows, int64_t d_model,
                                          const int32_t* pair_to_row, const float* weights, int64_t tokens,
                                          int top_k, void* y, void* stream) {
  using namespace moe_cuda;
  if (num_rows < 0 || d_model < 0 || tokens < 0 || top_k < 1) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (tokens == 0 || d_model == 0) return 0;
  if (!y || !pair_to_row || !weights || (num_rows > 0 && !rows)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  return launch_combine<true>(rows, dtype, num_rows, d_model, pair_to_row, weights, tokens, top_k, y,
                              static_cast<cudaStream_t>(stream));
}

extern "C" int moe_cuda_unpermute_backward_workspace_bytes(int64_t pairs, int64_t num_rows, size_t* bytes) {
  using namespace moe_cuda;
  if (!bytes || pairs < 0 || pairs > INT32_MAX || num_rows < 0 || num_rows > INT32_MAX)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const BackwardLayout l = backward_layout(pairs, num_rows);
  size_t cub = 0;
  MOE_CUDA_TRY(cub::DeviceRadixSort::SortKeys(nullptr, cub, static_cast<const unsigned long long*>(nullptr),
                                              static_cast<unsigned long long*>(nullptr), static_cast<int>(pairs), 0,
                                              key_bits(num_rows)));
  *bytes = l.cub + align_up(cub);
  return 0;
}

extern "C" int moe_cuda_unpermute_backward(const void* dy, int dy_dtype, const void* rows, int rows_dtype,
                                           int64_t num_rows, int64_t d_model, const int32_t* pair_to_row,
                                           const float* weights, int64_t tokens, int top_k, void* d_rows,
                                           float* d_weights, void* workspace, size_t workspace_bytes, void* stream) {
  using namespace moe_cuda;
  if (num_rows < 0 || num_rows > INT32_MAX || d_model < 0 || tokens < 0 || top_k < 1)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t pairs = tokens * top_k;
  if (pairs > INT32_MAX) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const BackwardLayout l = backward_layout(pairs, num_rows);
  if (!workspace || workspace_bytes < l.cub) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if ((pairs > 0 && (!pair_to_row || !weights || !d_weights)) || (num_rows > 0 && d_model > 0 && !d_rows))
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (pairs > 0 && d_model > 0 && (!dy || (num_rows > 0 && !rows))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int N = d_model % 4 == 0 ? 4 : 1;

  // d weights
  if (pairs > 0) {
    if (d_model == 0) {
      MOE_CUDA_TRY(cudaMemsetAsync(d_weights, 0, 4 * static_cast<size_t>(pairs), s));
    } else {
      const unsigned int grid = warps_grid(pairs);
      MOE_SWITCH_FLOAT(dy_dtype, TDy, MOE_SWITCH_FLOAT(rows_dtype, TR, {
        if (N == 4)
          d_weights_kernel<TDy, TR, 4><<<grid, kRowThreads, 0, s>>>(
              static_cast<const TDy*>(dy), static_cast<const TR*>(rows), num_rows, d_model, pair_to_row, pairs, top_k,
              d_weights);
        else
          d_weights_kernel<TDy, TR, 1><<<grid, kRowThreads, 0, s>>>(
              static_cast<const TDy*>(dy), static_cast<const TR*>(rows), num_rows, d_model, pair_to_row, pairs, top_k,
              d_weights);
      }));
      MOE_CUDA_TRY_LAUNCH();
    }
  }
  if (num_rows == 0 || d_model == 0) return 0;

  // d rows: readers of each row in flat order.
  unsigned long long* keys = reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) + l.keys);
  unsigned long long* sorted = reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) + l.sorted);
  int32_t* rowFirst = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) + l.rowFirst);
  MOE_CUDA_TRY(cudaMemsetAsync(rowFirst, 0xff, 4 * static_cast<size_t>(num_rows), s));  // -1
  if (pairs > 0) {
    const unsigned int grid = grid_for(pairs, 256, 1 << 16);
    row_keys_kernel<<<grid, 256, 0, s>>>(pair_to_row, pairs, num_rows, keys);
    MOE_CUDA_TRY_LAUNCH();
    size_t cubSize = workspace_bytes - l.cub;
    MOE_CUDA_TRY(cub::DeviceRadixSort::SortKeys(static_cast<char*>(workspace) + l.cub, cubSize, keys, sorted,
                                                static_cast<int>(pairs), 0, key_bits(num_rows), s));
    row_first_kernel<<<grid, 256, 0, s>>>(sorted, pairs, num_rows, rowFirst);
    MOE_CUDA_TRY_LAUNCH();
  }
  const unsigned int grid = warps_grid(num_rows);
  MOE_SWITCH_FLOAT(dy_dtype, TDy, MOE_SWITCH_FLOAT(rows_dtype, TR, {
    if (N == 4)
      d_rows_kernel<TDy, TR, 4><<<grid, kRowThreads, 0, s>>>(static_cast<const TDy*>(dy), d_model, weights, top_k,
                                                              sorted, pairs, rowFirst, num_rows,
                                                              static_cast<TR*>(d_rows));
    else
      d_rows_kernel<TDy, TR, 1><<<grid, kRowThreads, 0, s>>>(static_cast<const TDy*>(dy), d_model, weights, top_k,
                                                              sorted, pairs, rowFirst, num_rows,
                                                              static_cast<TR*>(d_rows));
  }));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
