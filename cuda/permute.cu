// permute on the GPU (docs/math.md#permute): the stable
// counting sort of cuda/permute_plan.h, capacity with the "position" and
// "probs" drop policies, padding to capacity, and the row moves.
//
// Launches, all enqueued at once in two calls, plan then rows (the outputs are
// sized for the most rows the arguments allow, permute_max_rows; the host
// reads R back afterwards when capacity makes it depend on the data):
//   count   per-warp expert histograms (each warp zeroes and fills its own cells);
//   plan    one block: the cells' exclusive scan (CUB's first when there are
//           many), each expert's first sorted position, rows and first row,
//           and the summary { R, dropped, bad indices };
//   sort    the runs again: each pair's sorted position; dropless and
//           "position" assign rows here, "probs" records the sorted pairs;
//   select  ("probs") one block per expert: the C largest weights, ties to the
//           lower flat index, by a radix select on the weight's ordered bits,
//           then rows in (t, j) order among the kept pairs;
//   scatter one warp per token: x[t] read once, written to each of its rows;
//   zero    (padding) the rows no pair fills.
//
// Determinism: histogram cells have one owner each (no atomics); ranks within
// a warp come from __match_any_sync and lane order; the select's histograms
// are integer counts (their atomics give the same totals in any order) and
// its ranks are block scans in position order. Every output is the same bits
// on every run.
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"
#include "permute_plan.h"

namespace moe_cuda {
namespace {

constexpr int kPlanThreads = 1024;
constexpr int kSelectThreads = 1024;
constexpr int kMoveThreads = 256;
constexpr int kMoveUnroll = 4;  // 16-byte vectors in flight per lane

template <class T>
T* at(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

__device__ __forceinline__ int64_t first_warp() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}
__device__ __forceinline__ int64_t warp_count() { return static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5); }

// The expert of pair i of a run, or -1 past the run's end or for an index
// outside [0, E) (reported when `status` is given).
__device__ __forceinline__ int expert_of(const int32_t* idx, int64_t i, int64_t end, int E, void* status,
                                         unsigned int tag) {
  if (i >= end) return -1;
  const int e = idx[i];
  if (e >= 0 && e < E) return e;
  if (status != nullptr) report_status(status, tag, i);
  return -1;
}

// Exclusive sum over the block (THREADS threads, all of which call it) and
// the block's total. sWarp: 33 ints of shared memory.
template <int THREADS>
__device__ __forceinline__ int32_t block_exclusive_sum(int32_t v, int32_t* sWarp, int32_t& total) {
  constexpr int kWarps = THREADS / 32;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int32_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t n = __shfl_up_sync(kFullMask, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();  // sWarp's previous use is over
  if (lane == 31) sWarp[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const int32_t w = lane < kWarps ? sWarp[lane] : 0;
    int32_t winc = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t n = __shfl_up_sync(kFullMask, winc, o);
      if (lane >= o) winc += n;
    }
    sWarp[lane] = winc - w;
    if (lane == 31) sWarp[32] = winc;
  }
  __syncthreads();
  total = sWarp[32];
  return sWarp[warp] + inc - v;
}

// Histogram: cell e·W + w counts the pairs of run w that chose e. With
// zeroCells the warp clears its own cells first (and warp 0 the last cell).
__global__ void __launch_bounds__(kPermuteThreads)
    permute_count_kernel(const int32_t* __restrict__ idx, int64_t pairs, int E, int64_t W, int64_t perWarp,
                         int zeroCells, int32_t* __restrict__ counts, void* status, unsigned int tag) {
  const int lane = threadIdx.x & 31;
  const int64_t w = first_warp();
  if (w >= W) return;  // warp-uniform
  if (zeroCells) {
    for (int64_t e = lane; e < E; e += 32) counts[e * W + w] = 0;
    if (w == 0 && lane == 0) counts[static_cast<int64_t>(E) * W] = 0;
    __syncwarp();
  }
  const int64_t begin = w * perWarp;
  const int64_t end = begin + perWarp < pairs ? begin + perWarp : pairs;
  for (int64_t base = begin; base < end; base += 32) {
    const int e = expert_of(idx, base + lane, end, E, status, tag);
    const unsigned int peers = __match_any_sync(kFullMask, e);
    if (e >= 0 && lane == __ffs(peers) - 1) counts[static_cast<int64_t>(e) * W + w] += __popc(peers);
    __syncwarp();  // the next step's leader may be another lane
  }
}

// One block: the cells' exclusive scan (unless CUB did it), expertStart[e] =
// scanned cell (e, 0) (expertStart[E] = valid pairs), rows per expert after
// capacity and padding, their exclusive scan rowStart (rowStart[E] = R), and
// summary = { R, dropped, bad indices } (with statusCopy, also the status word
// as the checks before this kernel left it).
__global__ void __launch_bounds__(kPlanThreads, 1)
    permute_plan_kernel(int32_t* counts, int64_t cells, int scanCells, int E, int64_t W, int64_t pairs,
                        int64_t capacity, int pad, int32_t* expertStart, int32_t* rowStart, int32_t* rowsPerExpert,
                        int64_t* summary, const void* status, int64_t* statusCopy) {
  __shared__ int32_t sWarp[33];
  const int tid = threadIdx.x;
  if (scanCells) {
    constexpr int kItems = 4;
    int32_t carry = 0;
    for (int64_t base = 0; base < cells; base += int64_t(kPlanThreads) * kItems) {
      const int64_t first = base + int64_t(tid) * kItems;
      int32_t v[kItems];
      int32_t local = 0;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        v[k] = first + k < cells ? counts[first + k] : 0;
        local += v[k];
      }
      int32_t total;
      int32_t ex = block_exclusive_sum<kPlanThreads>(local, sWarp, total) + carry;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        if (first + k < cells) counts[first + k] = ex;
        ex += v[k];
      }
      carry += total;
    }
    __syncthreads();
  }
  for (int64_t e = tid; e <= E; e += kPlanThreads) expertStart[e] = counts[e * W];
  __syncthreads();
  int32_t carry = 0, dropped = 0;
  for (int64_t base = 0; base < E; base += kPlanThreads) {
    const int64_t e = base + tid;
    int32_t rows = 0, drop = 0;
    if (e < E) {
      const int32_t count = expertStart[e + 1] - expertStart[e];
      const int32_t kept = capacity < 0 ? count : static_cast<int32_t>(count < capacity ? count : capacity);
      rows = pad ? static_cast<int32_t>(capacity) : kept;
      drop = count - kept;
      rowsPerExpert[e] = rows;
    }
    int32_t total, dropTotal;
    const int32_t ex = block_exclusive_sum<kPlanThreads>(rows, sWarp, total) + carry;
    if (e < E) rowStart[e] = ex;
    carry += total;
    block_exclusive_sum<kPlanThreads>(drop, sWarp, dropTotal);
    dropped += dropTotal;
  }
  if (tid == 0) {
    rowStart[E] = carry;
    summary[0] = carry;
    summary[1] = dropped;
    summary[2] = pairs - expertStart[E];
    if (statusCopy != nullptr) {
      const Status* st = static_cast<const Status*>(status);
      statusCopy[0] = st->tag;
      statusCopy[1] = st->detail;
    }
  }
}

// A weight as unsigned bits whose order is the weights' order (after -0 -> +0,
// so the two zeros tie as the CPU's comparison has them).
__device__ __forceinline__ uint32_t weight_key(float w) {
  const uint32_t bits = __float_as_uint(w + 0.0f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Walks the runs again: a pair's sorted position is its cell's cursor plus
// its rank among the lanes of this step with the same expert. PROBS: records
// the pair and its weight key at that position; else assigns its row (the
// first C of each expert when capacity >= 0). Pairs without a row get -1.
template <bool PROBS>
__global__ void __launch_bounds__(kPermuteThreads)
    permute_sort_kernel(const int32_t* __restrict__ idx, const float* __restrict__ weights, int64_t pairs, int E,
                        int64_t W, int64_t perWarp, int32_t* __restrict__ cursors,
                        const int32_t* __restrict__ expertStart, const int32_t* __restrict__ rowStart, int64_t capacity,
                        int32_t* __restrict__ sortedPairs, uint32_t* __restrict__ sortedKeys,
                        int32_t* __restrict__ pairToRow, int32_t* __restrict__ rowToPair) {
  const int lane = threadIdx.x & 31;
  const int64_t w = first_warp();
  if (w >= W) return;
  const int64_t begin = w * perWarp;
  const int64_t end = begin + perWarp < pairs ? begin + perWarp : pairs;
  const unsigned int below = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t i = base + lane;
    const int e = expert_of(idx, i, end, E, nullptr, 0);
    const unsigned int peers = __match_any_sync(kFullMask, e);
    const int leader = __ffs(peers) - 1;
    int32_t cursor = 0;
    if (e >= 0 && lane == leader) cursor = cursors[static_cast<int64_t>(e) * W + w];
    cursor = __shfl_sync(kFullMask, cursor, leader);
    if (e >= 0) {
      const int32_t pos = cursor + __popc(peers & below);
      if (PROBS) {
        sortedPairs[pos] = static_cast<int32_t>(i);
        sortedKeys[pos] = weight_key(weights[i]);
      } else {
        const int64_t j = pos - expertStart[e];
        if (capacity < 0 || j < capacity) {
          const int32_t row = rowStart[e] + static_cast<int32_t>(j);
          pairToRow[i] = row;
          rowToPair[row] = static_cast<int32_t>(i);
        } else {
          pairToRow[i] = -1;
        }
      }
      if (lane == leader) cursors[static_cast<int64_t>(e) * W + w] = cursor + __popc(peers);
    } else if (i < end) {
      pairToRow[i] = -1;
    }
    __syncwarp();
  }
}

// probs: one block per expert. An expert within capacity keeps every pair.
// Else the C-th largest key (radix select, 8 bits a pass) is the threshold:
// keys above it are kept, and of the keys equal to it the first ones in
// position order, C in all; kept pairs take the expert's rows in (t, j) order.
__global__ void __launch_bounds__(kSelectThreads, 1)
    permute_select_kernel(const int32_t* __restrict__ sortedPairs, const uint32_t* __restrict__ sortedKeys,
                          const int32_t* __restrict__ expertStart, const int32_t* __restrict__ rowStart, int E,
                          int64_t capacity, int32_t* __restrict__ pairToRow, int32_t* __restrict__ rowToPair) {
  __shared__ int32_t sWarp[33];
  __shared__ uint32_t sHist[256];
  __shared__ uint32_t sPick[2];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  for (int e = blockIdx.x; e < E; e += gridDim.x) {
    const int32_t start = expertStart[e];
    const int32_t n = expertStart[e + 1] - start;
    const int32_t base = rowStart[e];
    if (n <= capacity) {
      for (int32_t q = tid; q < n; q += kSelectThreads) {
        const int32_t p = sortedPairs[start + q];
        pairToRow[p] = base + q;
        rowToPair[base + q] = p;
      }
      continue;
    }
    uint32_t thr = 0xffffffffu, needEq = 0;  // capacity 0: nothing is kept
    if (capacity > 0) {
      uint32_t prefix = 0, kth = static_cast<uint32_t>(capacity);
      for (int shift = 24; shift >= 0; shift -= 8) {
        __syncthreads();  // the previous pass's sHist and sPick are read
        for (int b = tid; b < 256; b += kSelectThreads) sHist[b] = 0;
        __syncthreads();
        const uint32_t hiMask = shift == 24 ? 0u : ~((1u << (shift + 8)) - 1u);
        for (int32_t q0 = 0; q0 < n; q0 += kSelectThreads) {
          const int32_t q = q0 + tid;
          const uint32_t key = q < n ? sortedKeys[start + q] : 0u;
          const bool match = q < n && ((key ^ prefix) & hiMask) == 0u;
          const int digit = match ? static_cast<int>((key >> shift) & 255u) : -1;
          const unsigned int peers = __match_any_sync(kFullMask, digit);
          if (match && lane == __ffs(peers) - 1) atomicAdd(&sHist[digit], static_cast<uint32_t>(__popc(peers)));
        }
        __syncthreads();
        if (warp == 0) {
          // Lane l holds digits 255 - 8l .. 248 - 8l, largest first.
          uint32_t h[8];
          uint32_t sum = 0;
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            h[k] = sHist[255 - (lane * 8 + k)];
            sum += h[k];
          }
          uint32_t inc = sum;
#pragma unroll
          for (int o = 1; o < 32; o <<= 1) {
            const uint32_t v = __shfl_up_sync(kFullMask, inc, o);
            if (lane >= o) inc += v;
          }
          const uint32_t before = inc - sum;
          const unsigned int here = __ballot_sync(kFullMask, before < kth && inc >= kth);
          if (lane == __ffs(here) - 1) {
            uint32_t cum = before;
            int digit = 255 - (lane * 8 + 7);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
              if (cum + h[k] >= kth) {
                digit = 255 - (lane * 8 + k);
                break;
              }
              cum += h[k];
            }
            sPick[0] = static_cast<uint32_t>(digit);
            sPick[1] = kth - cum;
          }
        }
        __syncthreads();
        prefix |= sPick[0] << shift;
        kth = sPick[1];
      }
      thr = prefix;
      needEq = kth;
    }
    int32_t carryEq = 0, carryKeep = 0;
    for (int32_t q0 = 0; q0 < n; q0 += kSelectThreads) {
      const int32_t q = q0 + tid;
      const bool in = q < n;
      const uint32_t key = in ? sortedKeys[start + q] : 0u;
      const bool eq = in && key == thr;
      int32_t eqTotal, keepTotal;
      const int32_t eqRank = block_exclusive_sum<kSelectThreads>(eq ? 1 : 0, sWarp, eqTotal) + carryEq;
      const bool keep = in && (key > thr || (eq && static_cast<uint32_t>(eqRank) < needEq));
      const int32_t keepRank = block_exclusive_sum<kSelectThreads>(keep ? 1 : 0, sWarp, keepTotal) + carryKeep;
      if (in) {
        const int32_t p = sortedPairs[start + q];
        if (keep) {
          pairToRow[p] = base + keepRank;
          rowToPair[base + keepRank] = p;
        } else {
          pairToRow[p] = -1;
        }
      }
      carryEq += eqTotal;
      carryKeep += keepTotal;
    }
  }
}

// One warp per token: x[t] read once, U vectors per lane at a time, and
// written to each row its pairs were given.
template <class V>
__global__ void __launch_bounds__(kMoveThreads)
    permute_scatter_kernel(const V* __restrict__ x, int64_t nv, const int32_t* __restrict__ pairToRow, int topK,
                           int64_t tokens, int64_t maxRows, V* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  for (int64_t t = first_warp(); t < tokens; t += warp_count()) {
    const V* src = x + t * nv;
    const int32_t* map = pairToRow + t * topK;
    for (int64_t v0 = lane; v0 < nv; v0 += 32 * kMoveUnroll) {
      V buf[kMoveUnroll];
#pragma unroll
      for (int u = 0; u < kMoveUnroll; ++u)
        if (v0 + 32 * u < nv) buf[u] = src[v0 + 32 * u];
      for (int j = 0; j < topK; ++j) {
        const int32_t r = map[j];
        if (r < 0 || r >= maxRows) continue;
        V* dst = out + static_cast<int64_t>(r) * nv;
#pragma unroll
        for (int u = 0; u < kMoveUnroll; ++u)
          if (v0 + 32 * u < nv) dst[v0 + 32 * u] = buf[u];
      }
    }
  }
}

// Padding: zeros in every row whose rowToPair is -1 (a warp checks 32 rows at a time).
template <class V>
__global__ void __launch_bounds__(kMoveThreads)
    permute_zero_kernel(const int32_t* __restrict__ rowToPair, int64_t rows, int64_t nv, V* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  for (int64_t r0 = first_warp() * 32; r0 < rows; r0 += warp_count() * 32) {
    const bool empty = r0 + lane < rows && rowToPair[r0 + lane] < 0;
    unsigned int todo = __ballot_sync(kFullMask, empty);
    while (todo != 0u) {
      const int l = __ffs(todo) - 1;
      todo &= todo - 1u;
      V* dst = out + (r0 + l) * nv;
      const V zero{};
      for (int64_t v = lane; v < nv; v += 32) dst[v] = zero;
    }
  }
}

template <class V>
int launch_moves(const void* x, int64_t rowBytes, const int32_t* pairToRow, int topK, int64_t tokens,
                 const int32_t* rowToPair, int64_t maxRows, bool pad, void* out, cudaStream_t s) {
  const int64_t nv = rowBytes / static_cast<int64_t>(sizeof(V));
  if (tokens > 0) {
    permute_scatter_kernel<V><<<grid_for(tokens, kMoveThreads / 32, 1 << 16), kMoveThreads, 0, s>>>(
        static_cast<const V*>(x), nv, pairToRow, topK, tokens, maxRows, static_cast<V*>(out));
    MOE_CUDA_TRY_LAUNCH();
  }
  if (pad && maxRows > 0) {
    permute_zero_kernel<V><<<grid_for((maxRows + 31) / 32, kMoveThreads / 32, 1 << 16), kMoveThreads, 0, s>>>(
        rowToPair, maxRows, nv, static_cast<V*>(out));
    MOE_CUDA_TRY_LAUNCH();
  }
  return 0;
}

// CUB's temporary storage for the scan of many cells.
int cub_bytes(const PermuteLayout& l, size_t* bytes) {
  size_t b = 0;
  if (l.cubScan)
    MOE_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, b, static_cast<int32_t*>(nullptr), static_cast<int>(l.cells)));
  *bytes = b;
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
  const int rc = cub_bytes(l, &cub);
  if (rc != 0) return rc;
  *bytes = l.cub + align_up(cub);
  return 0;
}

extern "C" int moe_cuda_permute_plan(const int32_t* indices, const float* weights, int64_t pairs, int num_experts,
                                     int64_t capacity, int drop_policy, int pad_to_capacity, int32_t* rows_per_expert,
                                     int64_t* summary, void* status, uint32_t tag, void* workspace,
                                     size_t workspace_bytes, int64_t* status_copy, void* summary_event, void* stream) {
  using namespace moe_cuda;
  const PermuteLayout l = permute_layout(pairs, num_experts, drop_policy, capacity);
  if (l.status != 0) return l.status;
  if (pad_to_capacity && capacity < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (!rows_per_expert || !summary || !status || tag == 0 || !workspace) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (pairs > 0 && (!indices || (l.byProbs && !weights))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  size_t cubNeed = 0;
  int rc = cub_bytes(l, &cubNeed);
  if (rc != 0) return rc;
  if (workspace_bytes < l.cub + cubNeed) return MOE_CUDA_ERR_INVALID_ARGUMENT;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int32_t* counts = at<int32_t>(workspace, l.counts);
  if (l.cubScan) MOE_CUDA_TRY(cudaMemsetAsync(counts, 0, 4 * static_cast<size_t>(l.cells), s));
  permute_count_kernel<<<static_cast<unsigned>(l.blocks), kPermuteThreads, 0, s>>>(
      indices, pairs, num_experts, l.warps, l.pairsPerWarp, l.cubScan ? 0 : 1, counts, status, tag);
  MOE_CUDA_TRY_LAUNCH();
  if (l.cubScan) {
    size_t cubSize = workspace_bytes - l.cub;
    MOE_CUDA_TRY(
        cub::DeviceScan::ExclusiveSum(at<char>(workspace, l.cub), cubSize, counts, static_cast<int>(l.cells), s));
  }
  permute_plan_kernel<<<1, kPlanThreads, 0, s>>>(counts, l.cells, l.cubScan ? 0 : 1, num_experts, l.warps, pairs,
                                                 capacity, pad_to_capacity, at<int32_t>(workspace, l.expertStart),
                                                 at<int32_t>(workspace, l.rowStart), rows_per_expert, summary, status,
                                                 status_copy);
  MOE_CUDA_TRY_LAUNCH();
  if (summary_event != nullptr) MOE_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(summary_event), s));
  return 0;
}

extern "C" int moe_cuda_permute_rows(const void* x, int dtype, int64_t d_model, int top_k, const int32_t* indices,
                                     const float* weights, int64_t pairs, int num_experts, int64_t capacity,
                                     int drop_policy, int pad_to_capacity, const void* workspace,
                                     size_t workspace_bytes, int64_t max_rows, int32_t* pair_to_row,
                                     int32_t* row_to_pair, void* out_rows, void* stream) {
  using namespace moe_cuda;
  const PermuteLayout l = permute_layout(pairs, num_experts, drop_policy, capacity);
  if (l.status != 0) return l.status;
  if (pad_to_capacity && capacity < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (top_k < 1 || d_model < 0 || pairs % top_k != 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (max_rows != permute_max_rows(pairs, num_experts, capacity, pad_to_capacity != 0) || max_rows > INT32_MAX)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (dtype != MOE_CUDA_F32 && dtype != MOE_CUDA_BF16 && dtype != MOE_CUDA_F16) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (!workspace || workspace_bytes < l.cub) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (pairs > 0 && (!indices || !pair_to_row || (l.byProbs && !weights))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t elem = dtype == MOE_CUDA_F32 ? 4 : 2;
  const int64_t rowBytes = d_model * elem;
  if (max_rows > 0 && (!row_to_pair || (rowBytes > 0 && !out_rows))) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (pairs > 0 && rowBytes > 0 && !x) return MOE_CUDA_ERR_INVALID_ARGUMENT;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  void* ws = const_cast<void*>(workspace);
  const int E = num_experts;
  const int64_t W = l.warps;
  int32_t* counts = at<int32_t>(ws, l.counts);
  const int32_t* expertStart = at<int32_t>(ws, l.expertStart);
  const int32_t* rowStart = at<int32_t>(ws, l.rowStart);
  int32_t* sortedPairs = l.byProbs ? at<int32_t>(ws, l.sortedPairs) : nullptr;
  uint32_t* sortedKeys = l.byProbs ? at<uint32_t>(ws, l.sortedKeys) : nullptr;
  const int64_t tokens = pairs / top_k;

  if (pad_to_capacity && max_rows > 0)
    MOE_CUDA_TRY(cudaMemsetAsync(row_to_pair, 0xff, 4 * static_cast<size_t>(max_rows), s));  // -1: padding
  if (pairs > 0) {
    if (l.byProbs) {
      permute_sort_kernel<true><<<static_cast<unsigned>(l.blocks), kPermuteThreads, 0, s>>>(
          indices, weights, pairs, E, W, l.pairsPerWarp, counts, expertStart, rowStart, capacity, sortedPairs,
          sortedKeys, pair_to_row, row_to_pair);
      MOE_CUDA_TRY_LAUNCH();
      permute_select_kernel<<<grid_for(E, 1, 1 << 16), kSelectThreads, 0, s>>>(
          sortedPairs, sortedKeys, expertStart, rowStart, E, capacity, pair_to_row, row_to_pair);
      MOE_CUDA_TRY_LAUNCH();
    } else {
      permute_sort_kernel<false><<<static_cast<unsigned>(l.blocks), kPermuteThreads, 0, s>>>(
          indices, weights, pairs, E, W, l.pairsPerWarp, counts, expertStart, rowStart, capacity, sortedPairs,
          sortedKeys, pair_to_row, row_to_pair);
      MOE_CUDA_TRY_LAUNCH();
    }
  }
  if (max_rows == 0 || rowBytes == 0) return 0;
  // The widest vector that divides a row (rows start at multiples of rowBytes
  // from 256-byte aligned allocations).
  const bool pad = pad_to_capacity != 0;
  if (rowBytes % 16 == 0)
    return launch_moves<uint4>(x, rowBytes, pair_to_row, top_k, tokens, row_to_pair, max_rows, pad, out_rows, s);
  if (rowBytes % 8 == 0)
    return launch_moves<uint2>(x, rowBytes, pair_to_row, top_k, tokens, row_to_pair, max_rows, pad, out_rows, s);
  if (rowBytes % 4 == 0)
    return launch_moves<uint32_t>(x, rowBytes, pair_to_row, top_k, tokens, row_to_pair, max_rows, pad, out_rows, s);
  return launch_moves<uint16_t>(x, rowBytes, pair_to_row, top_k, tokens, row_to_pair, max_rows, pad, out_rows, s);
}
