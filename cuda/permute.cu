// permute on the GPU (MATH.md: Capacity; Permute and dispatch): the stable
// counting sort of cuda/permute_plan.h, capacity with the "position" and
// "probs" drop policies, padding to capacity, and the row gather.
//
// Determinism: histogram cells have one owner each (no atomics), ranks within
// a warp come from __match_any_sync and lane order, the scans and the
// segmented radix sort are CUB's, on keys that are unique within an expert
// (weight, then position: ties go to the lower flat index). Only the
// integer totals (dropped, bad indices) use atomics, and integer sums do not
// depend on their order.
//
// Status: compiled for sm_80 and sm_90a, NOT YET RUN ON A GPU.
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"
#include "permute_plan.h"

namespace moe_cuda {
namespace {

template <class T>
T* at(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}
template <class T>
const T* at(const void* base, size_t offset) {
  return reinterpret_cast<const T*>(static_cast<const char*>(base) + offset);
}

// The expert of pair i of a run, or -1 past the run's end or for an index
// outside [0, E) (reported when `status` is given).
__device__ __forceinline__ int expert_of(const int32_t* idx, int64_t i, int64_t end, int E, void* status,
                                         unsigned int tag, unsigned long long* badCount) {
  if (i >= end) return -1;
  const int e = idx[i];
  if (e >= 0 && e < E) return e;
  if (status != nullptr) {
    report_status(status, tag, i);
    atomicAdd(badCount, 1ull);
  }
  return -1;
}

// Histogram: cell e·W + w counts the pairs of run w that chose e.
__global__ void __launch_bounds__(kPermuteThreads)
    permute_count_kernel(const int32_t* __restrict__ idx, int64_t pairs, int E, int64_t W, int64_t perWarp,
                         int32_t* __restrict__ counts, unsigned long long* badCount, void* status, unsigned int tag) {
  const int lane = threadIdx.x & 31;
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (w >= W) return;  // warp-uniform
  const int64_t begin = w * perWarp;
  const int64_t end = begin + perWarp < pairs ? begin + perWarp : pairs;
  for (int64_t base = begin; base < end; base += 32) {
    const int e = expert_of(idx, base + lane, end, E, status, tag, badCount);
    const unsigned int peers = __match_any_sync(kFullMask, e);
    if (e >= 0 && lane == __ffs(peers) - 1) counts[static_cast<int64_t>(e) * W + w] += __popc(peers);
    __syncwarp();  // the next step's leader may be another lane
  }
}

// expertStart[e] = scanned cell (e, 0); expertStart[E] = the last cell (valid pairs).
__global__ void permute_starts_kernel(const int32_t* counts, int E, int64_t W, int32_t* expertStart) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e <= E;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    expertStart[e] = counts[e * W];
}

// Walks the runs again: a pair's sorted position is its cell's cursor plus
// its rank among the lanes of this step with the same expert.
__global__ void __launch_bounds__(kPermuteThreads)
    permute_sort_kernel(const int32_t* __restrict__ idx, int64_t pairs, int E, int64_t W, int64_t perWarp,
                        int32_t* __restrict__ cursors, int32_t* __restrict__ sortedPairs) {
  const int lane = threadIdx.x & 31;
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (w >= W) return;
  const int64_t begin = w * perWarp;
  const int64_t end = begin + perWarp < pairs ? begin + perWarp : pairs;
  const unsigned int below = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t i = base + lane;
    const int e = expert_of(idx, i, end, E, nullptr, 0, nullptr);
    const unsigned int peers = __match_any_sync(kFullMask, e);
    const int leader = __ffs(peers) - 1;
    int32_t cursor = 0;
    if (e >= 0 && lane == leader) cursor = cursors[static_cast<int64_t>(e) * W + w];
    cursor = __shfl_sync(kFullMask, cursor, leader);
    if (e >= 0) {
      sortedPairs[cursor + __popc(peers & below)] = static_cast<int32_t>(i);
      if (lane == leader) cursors[static_cast<int64_t>(e) * W + w] = cursor + __popc(peers);
    }
    __syncwarp();
  }
}

// Rows per expert after capacity (and padding); the dropped pairs.
__global__ void permute_experts_kernel(const int32_t* expertStart, int E, int64_t capacity, int pad,
                                       int32_t* rowsPer, int32_t* rowsPerExpert, unsigned long long* dropped) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < E;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t count = expertStart[e + 1] - expertStart[e];
    const int64_t kept = capacity < 0 ? count : (count < capacity ? count : capacity);
    const int32_t rows = static_cast<int32_t>(pad ? capacity : kept);
    rowsPer[e] = rows;
    rowsPerExpert[e] = rows;
    if (count > kept) atomicAdd(dropped, static_cast<unsigned long long>(count - kept));
    if (e == 0) rowsPer[E] = 0;
  }
}

__global__ void permute_summary_kernel(const int32_t* rowStart, int E, int64_t* summary) {
  summary[0] = rowStart[E];
}

// probs: one key per sorted position, unique within an expert, whose
// descending order is "larger weight first, then lower flat index": the
// weight's bits made order-preserving as unsigned (after -0 -> +0, so the two
// zeros tie as the CPU's comparison has them), then the complement of the
// position (positions follow (t, j) order within an expert). Unique keys make
// the result independent of the sort's stability.
__device__ __forceinline__ unsigned long long probs_key(float w, int64_t pos) {
  unsigned int bits = __float_as_uint(w + 0.0f);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(bits) << 32) | (0xffffffffull - static_cast<unsigned long long>(pos));
}

__global__ void permute_keys_kernel(const int32_t* sortedPairs, const int32_t* expertStart, int E,
                                    const float* weights, int64_t pairs, unsigned long long* keys, int32_t* posIn) {
  const int32_t valid = expertStart[E];
  for (int64_t pos = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; pos < pairs;
       pos += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[pos] = pos < valid ? probs_key(weights[sortedPairs[pos]], pos) : 0ull;
    posIn[pos] = static_cast<int32_t>(pos);
  }
}

// probs: within each expert's segment, sorted by weight descending, the first
// C are kept; keep[pos] flags them at their (t, j)-ordered position.
__global__ void permute_keep_kernel(const int32_t* posOut, const int32_t* sortedPairs, const int32_t* idx,
                                    const int32_t* expertStart, int E, int64_t pairs, int64_t capacity,
                                    int32_t* keep) {
  const int32_t valid = expertStart[E];
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < pairs;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (q >= valid) continue;
    const int32_t pos = posOut[q];
    const int e = idx[sortedPairs[pos]];
    keep[pos] = (q - expertStart[e]) < capacity ? 1 : 0;
  }
}

// Each kept pair's row: its expert's first row plus its rank among the kept
// pairs of that expert in (t, j) order.
__global__ void permute_assign_kernel(const int32_t* sortedPairs, const int32_t* idx, const int32_t* expertStart,
                                      const int32_t* rowStart, const int32_t* keepScan, int E, int64_t pairs,
                                      int64_t capacity, int64_t rows, int32_t* pairToRow, int32_t* rowToPair) {
  const int32_t valid = expertStart[E];
  for (int64_t pos = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; pos < pairs;
       pos += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (pos >= valid) continue;
    const int32_t p = sortedPairs[pos];
    const int e = idx[p];
    int64_t j = pos - expertStart[e];
    if (keepScan != nullptr) {
      if (keepScan[pos + 1] == keepScan[pos]) continue;  // dropped by weight
      j = keepScan[pos] - keepScan[expertStart[e]];
    } else if (capacity >= 0 && j >= capacity) {
      continue;  // dropped by position
    }
    const int64_t row = rowStart[e] + j;
    if (row >= rows) continue;  // only when the host's R disagrees with the plan
    pairToRow[p] = static_cast<int32_t>(row);
    rowToPair[row] = p;
  }
}

// One warp per row: a copy of x[token] in vectors of V, or zeros for padding.
template <class V>
__global__ void __launch_bounds__(kPermuteThreads)
    permute_gather_kernel(const char* __restrict__ x, int64_t rowBytes, const int32_t* __restrict__ rowToPair,
                          int topK, int64_t rows, char* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t nv = rowBytes / static_cast<int64_t>(sizeof(V));
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
    const int32_t p = rowToPair[r];
    V* dst = reinterpret_cast<V*>(out + r * rowBytes);
    if (p < 0) {
      const V zero{};
      for (int64_t v = lane; v < nv; v += 32) dst[v] = zero;
    } else {
      const V* src = reinterpret_cast<const V*>(x + static_cast<int64_t>(p / topK) * rowBytes);
      for (int64_t v = lane; v < nv; v += 32) dst[v] = src[v];
    }
  }
}

template <class V>
int launch_gather(const void* x, int64_t rowBytes, const int32_t* rowToPair, int topK, int64_t rows, void* out,
                  cudaStream_t s) {
  const unsigned int grid = grid_for(rows, kPermuteWarpsPerBlock, 1 << 16);
  permute_gather_kernel<V><<<grid, kPermuteThreads, 0, s>>>(static_cast<const char*>(x), rowBytes, rowToPair, topK,
                                                             rows, static_cast<char*>(out));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

// CUB's temporary storage for every CUB call of one permute.
int cub_bytes(const PermuteLayout& l, int64_t pairs, int experts, size_t* bytes) {
  size_t need = 0, b = 0;
  MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, b, static_cast<int32_t*>(nullptr), static_cast<int>(l.cells)));
  need = b > need ? b : need;
  b = 0;
  MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, b, static_cast<const int32_t*>(nullptr),
                                             static_cast<int32_t*>(nullptr), experts + 1));
  need = b > need ? b : need;
  if (l.byProbs) {
    b = 0;
    MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, b, static_cast<int32_t*>(nullptr),
                                               static_cast<int>(pairs + 1)));
    need = b > need ? b : need;
    b = 0;
    MOE_CUDA_TRY(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, b, static_cast<const unsigned long long*>(nullptr), static_cast<unsigned long long*>(nullptr),
        static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(pairs), experts,
        static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(nullptr)));
    need = b > need ? b : need;
  }
  *bytes = need;
  return 0;
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_permute_workspace_bytes(int64_t pairs, int num_experts, int drop_policy, int64_t capacity,
                                                size_t* bytes) {
  using namespace moe_cuda;
  if (!bytes) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const PermuteLayout l = permute_layout(pairs, num_experts, drop_policy, capacity);
  if (l.status != 0) return l.status;
  size_t cub = 0;
  const int rc = cub_bytes(l, pairs, num_experts, &cub);
  if (rc != 0) return rc;
  *bytes = l.cub + align_up(cub);
  return 0;
}

extern "C" int moe_cuda_permute_plan(const int32_t* indices, const float* weights, int64_t pairs, int num_experts,
                                     int64_t capacity, int drop_policy, int pad_to_capacity, int32_t* rows_per_expert,
                                     int64_t* summary, void* status, uint32_t tag, void* workspace,
                                     size_t workspace_bytes, void* stream) {
  using namespace moe_cuda;
  const PermuteLayout l = permute_layout(pairs, num_experts, drop_policy, capacity);
  if (l.status != 0) return l.status;
  if (pad_to_capacity && capacity < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (!rows_per_expert || !summary || !status || tag == 0 || !workspace) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (pairs > 0 && (!indices || (l.byProbs && !weights))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  size_t cubNeed = 0;
  int rc = cub_bytes(l, pairs, num_experts, &cubNeed);
  if (rc != 0) return rc;
  if (workspace_bytes < l.cub + cubNeed) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  void* cubTemp = at<char>(workspace, l.cub);
  size_t cubSize = workspace_bytes - l.cub;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int E = num_experts;
  const int64_t W = l.warps;
  int32_t* counts = at<int32_t>(workspace, l.counts);
  int32_t* expertStart = at<int32_t>(workspace, l.expertStart);
  int32_t* sortedPairs = at<int32_t>(workspace, l.sortedPairs);
  int32_t* rowsPer = at<int32_t>(workspace, l.rowsPer);
  int32_t* rowStart = at<int32_t>(workspace, l.rowStart);
  unsigned long long* dropped = reinterpret_cast<unsigned long long*>(summary + 1);
  unsigned long long* bad = reinterpret_cast<unsigned long long*>(summary + 2);

  MOE_CUDA_TRY(cudaMemsetAsync(summary, 0, 3 * sizeof(int64_t), s));
  MOE_CUDA_TRY(cudaMemsetAsync(counts, 0, 4 * static_cast<size_t>(l.cells), s));
  if (pairs > 0) {
    permute_count_kernel<<<static_cast<unsigned>(l.blocks), kPermuteThreads, 0, s>>>(
        indices, pairs, E, W, l.pairsPerWarp, counts, bad, status, tag);
    MOE_CUDA_TRY_LAUNCH();
  }
  MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(cubTemp, cubSize, counts, static_cast<int>(l.cells), s));
  permute_starts_kernel<<<grid_for(E + 1, 256, 4096), 256, 0, s>>>(counts, E, W, expertStart);
  MOE_CUDA_TRY_LAUNCH();
  if (pairs > 0) {
    permute_sort_kernel<<<static_cast<unsigned>(l.blocks), kPermuteThreads, 0, s>>>(indices, pairs, E, W,
                                                                                    l.pairsPerWarp, counts,
                                                                                    sortedPairs);
    MOE_CUDA_TRY_LAUNCH();
  }
  permute_experts_kernel<<<grid_for(E, 256, 4096), 256, 0, s>>>(expertStart, E, capacity, pad_to_capacity, rowsPer,
                                                                 rows_per_expert, dropped);
  MOE_CUDA_TRY_LAUNCH();
  MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(cubTemp, cubSize, rowsPer, rowStart, E + 1, s));
  permute_summary_kernel<<<1, 1, 0, s>>>(rowStart, E, summary);
  MOE_CUDA_TRY_LAUNCH();

  if (l.byProbs) {
    unsigned long long* keys = at<unsigned long long>(workspace, l.keys);
    unsigned long long* keysOut = at<unsigned long long>(workspace, l.keysOut);
    int32_t* posIn = at<int32_t>(workspace, l.posIn);
    int32_t* posOut = at<int32_t>(workspace, l.posOut);
    int32_t* keep = at<int32_t>(workspace, l.keep);
    MOE_CUDA_TRY(cudaMemsetAsync(keep, 0, 4 * (static_cast<size_t>(pairs) + 1), s));
    if (pairs > 0) {
      const unsigned int grid = grid_for(pairs, 256, 1 << 16);
      permute_keys_kernel<<<grid, 256, 0, s>>>(sortedPairs, expertStart, E, weights, pairs, keys, posIn);
      MOE_CUDA_TRY_LAUNCH();
      MOE_CUDA_TRY(cub::DeviceSegmentedRadixSort::SortPairsDescending(
          cubTemp, cubSize, keys, keysOut, posIn, posOut, static_cast<int>(pairs), E, expertStart, expertStart + 1,
          0, 64, s));
      permute_keep_kernel<<<grid, 256, 0, s>>>(posOut, sortedPairs, indices, expertStart, E, pairs, capacity, keep);
      MOE_CUDA_TRY_LAUNCH();
    }
    MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(cubTemp, cubSize, keep, static_cast<int>(pairs + 1), s));
  }
  return 0;
}

extern "C" int moe_cuda_permute_scatter(const void* x, int dtype, int64_t d_model, int top_k,
                                        const int32_t* indices, int64_t pairs, int num_experts, int64_t capacity,
                                        int drop_policy, const void* workspace, size_t workspace_bytes, int64_t rows,
                                        int32_t* pair_to_row, int32_t* row_to_pair, void* out_rows, void* stream) {
  using namespace moe_cuda;
  const PermuteLayout l = permute_layout(pairs, num_experts, drop_policy, capacity);
  if (l.status != 0) return l.status;
  if (top_k < 1 || d_model < 0 || rows < 0 || rows > INT32_MAX || pairs % top_k != 0)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (dtype != MOE_CUDA_F32 && dtype != MOE_CUDA_BF16 && dtype != MOE_CUDA_F16) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (!workspace || workspace_bytes < l.cub) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if ((pairs > 0 && (!indices || !pair_to_row)) || (rows > 0 && !row_to_pair)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t elem = dtype == MOE_CUDA_F32 ? 4 : 2;
  const int64_t rowBytes = d_model * elem;
  if (rows > 0 && rowBytes > 0 && (!out_rows || (pairs > 0 && !x))) return MOE_CUDA_ERR_INVALID_ARGUMENT;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int32_t* sortedPairs = at<int32_t>(workspace, l.sortedPairs);
  const int32_t* expertStart = at<int32_t>(workspace, l.expertStart);
  const int32_t* rowStart = at<int32_t>(workspace, l.rowStart);
  const int32_t* keepScan = l.byProbs ? at<int32_t>(workspace, l.keep) : nullptr;

  MOE_CUDA_TRY(cudaMemsetAsync(pair_to_row, 0xff, 4 * static_cast<size_t>(pairs), s));  // -1
  MOE_CUDA_TRY(cudaMemsetAsync(row_to_pair, 0xff, 4 * static_cast<size_t>(rows), s));
  if (pairs > 0) {
    permute_assign_kernel<<<grid_for(pairs, 256, 1 << 16), 256, 0, s>>>(sortedPairs, indices, expertStart, rowStart,
                                                                       keepScan, num_experts, pairs, capacity, rows,
                                                                       pair_to_row, row_to_pair);
    MOE_CUDA_TRY_LAUNCH();
  }
  if (rows == 0 || rowBytes == 0) return 0;
  // The widest vector that divides a row (rows start at multiples of rowBytes
  // from 256-byte aligned allocations).
  if (rowBytes % 16 == 0) return launch_gather<uint4>(x, rowBytes, row_to_pair, top_k, rows, out_rows, s);
  if (rowBytes % 8 == 0) return launch_gather<uint2>(x, rowBytes, row_to_pair, top_k, rows, out_rows, s);
  if (rowBytes % 4 == 0) return launch_gather<uint32_t>(x, rowBytes, row_to_pair, top_k, rows, out_rows, s);
  return launch_gather<uint16_t>(x, rowBytes, row_to_pair, top_k, rows, out_rows, s);
}
