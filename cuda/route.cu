// The route op on the GPU (docs/math.md#route): scores, optional
// group-limited top-k selection of s + bias, weights, per-expert counts and the
// statistics of the load-balancing and z losses; and the gradient of the
// logits. A warp owns one token at a time; lane l holds experts l, l + 32, ...
// in registers (see route_plan.h), so loads and stores of a row are coalesced
// and every per-token reduction is a warp butterfly.
//
// Reproducibility: per-token reductions are butterflies in a fixed lane order;
// the sums over tokens go to per-block partials (the grid depends on T only)
// that route_sums_kernel adds in block order, one thread per expert; token
// counts are per-block integer partials too, so no launch needs a zeroed
// output and no global atomics are left but the non-finite token count.
//
// test/cuda-build.test.ts checks, from the SASS, that it compiles for sm_80
// and sm_90a without spills.
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>

#include "common.cuh"
#include "launchers.h"
#include "route_plan.h"

namespace moe_cuda {
namespace {

constexpr int kSoftmax = 0;
constexpr int kSigmoid = 1;
// Added to the sum of the chosen sigmoid scores before renormalising
// (docs/math.md#weights; sigmoid scores can all be ~0, softmax ones cannot).
constexpr float kSigmoidRenormEps = 1e-20f;
constexpr int kNone = INT32_MAX;       // index that ranks after every real expert
constexpr int kFinalizeThreads = 256;  // the loss reductions' width (their bits depend on it)
constexpr int kSumExperts = 4;         // experts per block of route_sums_kernel
constexpr int kSumThreads = 256;

// Unsigned bits ordered as the (non-NaN) floats are, -0 equal to +0; never 0.
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t u = __float_as_uint(v + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct ForwardParams {
  const float* logits;
  const float* bias;
  int64_t tokens;
  int experts;
  int topK;
  int scoreFunction;
  int renormalize;
  int groups;
  int topkGroups;
  int32_t* indices;
  float* weights;
  float* scores;
  float* partialProb;     // [gridDim.x][E]
  float* partialLseSq;    // [gridDim.x]
  int32_t* partialCount;  // [gridDim.x][E]
  int32_t* nonfinite;
};

struct BackwardParams {
  const float* dWeights;
  const int32_t* indices;
  const float* scores;
  const float* logits;
  const int32_t* counts;
  int64_t tokens;
  int experts;
  int topK;
  int scoreFunction;
  int renormalize;
  float auxGrad;
  float zGrad;
  float* dLogits;
};

// Loads one row of logits (-inf beyond E) and returns the row's logsumexp;
// ex[i] = exp(x[i] - max) and sumExp = sum of ex over the row.
template <int EPL>
__device__ __forceinline__ float row_logsumexp(const float* row, int experts, int lane, float (&x)[EPL],
                                               float (&ex)[EPL], float& sumExp) {
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = i * 32 + lane;
    x[i] = e < experts ? row[e] : -INFINITY;
    m = fmaxf(m, x[i]);
  }
  m = warp_max(m);
  float local = 0.f;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = i * 32 + lane;
    ex[i] = e < experts ? expf(x[i] - m) : 0.f;
    local += ex[i];
  }
  sumExp = warp_sum(local);
  return m + logf(sumExp);
}

// Group-limited selection (DeepSeek-V3): a group's score is the sum of its
// top max(1, k / g) keys; only experts of the g best groups (ties to the lower
// group) stay eligible. Returns the eligibility bits of this lane's experts.
// keys/groupScore are this warp's shared scratch, [E] and [G].
template <int EPL>
__device__ unsigned group_limit(const float (&key)[EPL], unsigned eligible, const ForwardParams& p, int lane,
                                float* keys, float* groupScore) {
  const int E = p.experts;
  const int G = p.groups;
  const int groupSize = E / G;
  const int perGroup = max(1, p.topK / p.topkGroups);
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = i * 32 + lane;
    if (e < E) keys[e] = key[i];
  }
  __syncwarp();
  for (int gi = lane; gi < G; gi += 32) {
    const float* gk = keys + gi * groupSize;
    float prevV = INFINITY;
    int prevI = -1;
    float sum = 0.f;
    for (int r = 0; r < perGroup && r < groupSize; ++r) {
      float bv = -INFINITY;
      int bi = kNone;
      for (int j = 0; j < groupSize; ++j) {
        const float v = gk[j];
        if (ranks_before(prevV, prevI, v, j) && ranks_before(v, j, bv, bi)) {
          bv = v;
          bi = j;
        }
      }
      sum += bv;
      prevV = bv;
      prevI = bi;
    }
    groupScore[gi] = isnan(sum) ? -INFINITY : sum;
  }
  __syncwarp();
  // The topkGroups best groups; (thrV, thrI) ends as the last one taken.
  float thrV = INFINITY;
  int thrI = -1;
  for (int r = 0; r < p.topkGroups; ++r) {
    float bv = -INFINITY;
    int bi = kNone;
    for (int gi = lane; gi < G; gi += 32) {
      const float v = groupScore[gi];
      if (ranks_before(thrV, thrI, v, gi) && ranks_before(v, gi, bv, bi)) {
        bv = v;
        bi = gi;
      }
    }
    warp_argmax(bv, bi);
    thrV = bv;
    thrI = bi;
  }
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = i * 32 + lane;
    if (e < E) {
      const int gi = e / groupSize;
      if (ranks_before(thrV, thrI, groupScore[gi], gi)) eligible &= ~(1u << i);
    }
  }
  __syncwarp();  // the scratch is rewritten by the next token
  return eligible;
}

template <int EPL>
__global__ void __launch_bounds__(kRouteThreadsPerBlock, 4) route_forward_kernel(ForwardParams p) {
  constexpr int W = kRouteWarpsPerBlock;
  extern __shared__ float smem[];
  __shared__ float sLseSq[W];
  __shared__ int sNonfinite;
  const int E = p.experts;
  const int K = p.topK;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  // Layout: route_shared_bytes in route_plan.h.
  float* sProb = smem;                                             // [W][E]
  int* sChosenIdx = reinterpret_cast<int*>(sProb + W * E);         // [W][K]
  float* sChosenW = reinterpret_cast<float*>(sChosenIdx + W * K);  // [W][K]
  int* sHist = reinterpret_cast<int*>(sChosenW + W * K);           // [E]
  float* sKeys = reinterpret_cast<float*>(sHist + E);              // [W][E], groups only
  float* sGroup = sKeys + W * E;                                   // [W][G], groups only

  for (int e = threadIdx.x; e < E; e += blockDim.x) sHist[e] = 0;
  if (threadIdx.x == 0) sNonfinite = 0;
  __syncthreads();

  float bias[EPL];
  float probAcc[EPL];
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = i * 32 + lane;
    bias[i] = (p.bias != nullptr && e < E) ? p.bias[e] : 0.f;
    probAcc[i] = 0.f;
  }
  float lseSqAcc = 0.f;
  int* chosenIdx = sChosenIdx + warp * K;
  float* chosenW = sChosenW + warp * K;

  const int64_t stride = static_cast<int64_t>(gridDim.x) * W;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * W + warp; t < p.tokens; t += stride) {
    const float* row = p.logits + t * E;
    float x[EPL], ex[EPL], s[EPL];
    float sumExp;
    const float lse = row_logsumexp<EPL>(row, E, lane, x, ex, sumExp);
    lseSqAcc += lse * lse;

    bool bad = false;
#pragma unroll
    for (int i = 0; i < EPL; ++i) bad |= (i * 32 + lane < E) && !isfinite(x[i]);
    if (__any_sync(kFullMask, bad) && lane == 0) atomicAdd(&sNonfinite, 1);

    if (p.scoreFunction == kSoftmax) {
#pragma unroll
      for (int i = 0; i < EPL; ++i) s[i] = ex[i] / sumExp;
#pragma unroll
      for (int i = 0; i < EPL; ++i) probAcc[i] += s[i];
    } else {
      float local = 0.f;
#pragma unroll
      for (int i = 0; i < EPL; ++i) {
        s[i] = (i * 32 + lane < E) ? 1.f / (1.f + expf(-x[i])) : 0.f;
        local += s[i];
      }
      // p = s / sum_e s (docs/math.md#load-balancing-loss)
      const float total = warp_sum(local);
#pragma unroll
      for (int i = 0; i < EPL; ++i) probAcc[i] += s[i] / total;
    }
    float* scoreRow = p.scores + t * E;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = i * 32 + lane;
      if (e < E) scoreRow[e] = s[i];
    }

    // Selection keys s + b; NaN ranks last so indices stay valid whatever the
    // input (such tokens are counted in p.nonfinite).
    float key[EPL];
    unsigned eligible = 0;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const float k = s[i] + bias[i];
      key[i] = isnan(k) ? -INFINITY : k;
      if (i * 32 + lane < E) eligible |= 1u << i;
    }
    if (p.groups > 1) eligible = group_limit<EPL>(key, eligible, p, lane, sKeys + warp * E, sGroup + warp * p.groups);

    // k rounds of warp argmax over the eligible keys not yet taken:
    // descending order, ties to the lower expert index. A key's ordered bits
    // (order_key) compare as the floats do, so each round is a lane-local
    // best, then the warp's largest key and the lowest expert holding it.
    uint32_t okey[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) okey[i] = order_key(key[i]);
    float chosenSum = 0.f;
    for (int j = 0; j < K; ++j) {
      uint32_t bk = 0u;  // below every key's ordered bits
      uint32_t be = 0xffffffffu;
#pragma unroll
      for (int i = 0; i < EPL; ++i) {
        if (((eligible >> i) & 1u) && okey[i] > bk) {
          bk = okey[i];
          be = static_cast<uint32_t>(i * 32 + lane);
        }
      }
      const uint32_t top = __reduce_max_sync(kFullMask, bk);
      const int bi = static_cast<int>(__reduce_min_sync(kFullMask, bk == top ? be : 0xffffffffu));
      if (lane == (bi & 31)) eligible &= ~(1u << (bi >> 5));
      const float w = __shfl_sync(kFullMask, select_slot(s, bi >> 5), bi & 31);
      chosenSum += w;
      if (lane == 0) {
        chosenIdx[j] = bi;
        chosenW[j] = w;
      }
    }
    __syncwarp();
    const float denom = chosenSum + (p.scoreFunction == kSigmoid ? kSigmoidRenormEps : 0.f);
    for (int j = lane; j < K; j += 32) {
      const int idx = chosenIdx[j];
      p.indices[t * K + j] = idx;
      p.weights[t * K + j] = p.renormalize ? chosenW[j] / denom : chosenW[j];
      if (idx < E) atomicAdd(&sHist[idx], 1);  // always true when route_plan accepted k
    }
    __syncwarp();
  }

  // Block partials: warps in order, then one global integer add per expert.
  float* myProb = sProb + warp * E;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = i * 32 + lane;
    if (e < E) myProb[e] = probAcc[i];
  }
  if (lane == 0) sLseSq[warp] = lseSqAcc;
  __syncthreads();
  float* partial = p.partialProb + static_cast<int64_t>(blockIdx.x) * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) acc += sProb[w * E + e];
    partial[e] = acc;
    p.partialCount[static_cast<int64_t>(blockIdx.x) * E + e] = sHist[e];
  }
  if (threadIdx.x == 0) {
    float z = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) z += sLseSq[w];
    p.partialLseSq[blockIdx.x] = z;
    if (p.nonfinite != nullptr && sNonfinite != 0) atomicAdd(p.nonfinite, sNonfinite);
  }
}

// Per expert: its probability sum (the per-block partials added in block
// order, one thread per expert, from shared memory, sixteen loads ahead of
// their adds) and its token count (integer partials, summed in any order).
// kSumExperts experts per block; the partials of a block's experts come in
// with all their loads in flight at once.
__global__ void __launch_bounds__(kSumThreads)
    route_sums_kernel(const float* __restrict__ partialProb, const int32_t* __restrict__ partialCount, int blocks,
                      int experts, float* __restrict__ probSum, int32_t* __restrict__ counts) {
  __shared__ float sProb[kRouteMaxBlocks * kSumExperts];
  __shared__ int32_t sCount[kRouteMaxBlocks * kSumExperts];
  const int tid = threadIdx.x;
  const int e0 = blockIdx.x * kSumExperts;
  const int g = experts - e0 < kSumExperts ? experts - e0 : kSumExperts;
  const int n = blocks * g;
  for (int i = tid; i < n; i += kSumThreads) {
    const int b = i / g;
    const int64_t at = static_cast<int64_t>(b) * experts + e0 + (i - b * g);
    sProb[i] = partialProb[at];
    sCount[i] = partialCount[at];
  }
  __syncthreads();
  const int warp = tid >> 5;
  const int lane = tid & 31;
  if (warp == 0) {
    if (lane < g) {
      float acc = 0.f;
      int b = 0;
      for (; b + 16 <= blocks; b += 16) {
        float v[16];
#pragma unroll
        for (int u = 0; u < 16; ++u) v[u] = sProb[(b + u) * g + lane];
#pragma unroll
        for (int u = 0; u < 16; ++u) acc += v[u];
      }
      for (; b < blocks; ++b) acc += sProb[b * g + lane];
      probSum[e0 + lane] = acc;
    }
  } else if (warp - 1 < g) {
    const int j = warp - 1;
    int32_t c = 0;
    for (int b = lane; b < blocks; b += 32) c += sCount[b * g + j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(kFullMask, c, o);
    if (lane == 0) counts[e0 + j] = c;
  }
}

// One block: the aux and z losses (Switch / GShard load balancing; ST-MoE
// z-loss) without coefficients, from the sums above and the per-block lse²
// partials, in a fixed 256-wide order.
__global__ void __launch_bounds__(kFinalizeThreads)
    route_finalize_kernel(const float* __restrict__ probSum, const float* __restrict__ partialLseSq, int blocks,
                          const int32_t* __restrict__ counts, int64_t tokens, int experts, int topK,
                          float* __restrict__ lseSqSum, float* __restrict__ losses) {
  __shared__ float sAux[kFinalizeThreads];
  __shared__ float sZ[kFinalizeThreads];
  const int tid = threadIdx.x;
  const float T = static_cast<float>(tokens);
  float aux = 0.f;
  for (int e = tid; e < experts; e += kFinalizeThreads)
    if (tokens > 0) aux += (static_cast<float>(counts[e]) / (T * static_cast<float>(topK))) * (probSum[e] / T);
  float z = 0.f;
  for (int b = tid; b < blocks; b += kFinalizeThreads) z += partialLseSq[b];
  sAux[tid] = aux;
  sZ[tid] = z;
  __syncthreads();
#pragma unroll
  for (int half = kFinalizeThreads / 2; half > 0; half >>= 1) {
    if (tid < half) {
      sAux[tid] += sAux[tid + half];
      sZ[tid] += sZ[tid + half];
    }
    __syncthreads();
  }
  if (tid == 0) {
    *lseSqSum = sZ[0];
    if (losses != nullptr) {
      losses[0] = tokens > 0 ? static_cast<float>(experts) * sAux[0] : 0.f;
      losses[1] = tokens > 0 ? sZ[0] / T : 0.f;
    }
  }
}

// Calls f(idx, dw, s[idx]) for the k choices of a token in order j = 0..k-1,
// the same in every lane. Out-of-range indices are skipped.
template <int EPL, typename F>
__device__ __forceinline__ void for_each_choice(const int32_t* idxRow, const float* dwRow, int K, int E, int lane,
                                                const float (&s)[EPL], F&& f) {
  for (int j0 = 0; j0 < K; j0 += 32) {
    const int jj = j0 + lane;
    const int myIdx = jj < K ? idxRow[jj] : -1;
    const float myDw = jj < K ? dwRow[jj] : 0.f;
    const int n = min(32, K - j0);
    for (int jl = 0; jl < n; ++jl) {
      const int idx = __shfl_sync(kFullMask, myIdx, jl);
      const float dw = __shfl_sync(kFullMask, myDw, jl);
      if (idx < 0 || idx >= E) continue;
      const float sj = __shfl_sync(kFullMask, select_slot(s, idx >> 5), idx & 31);
      f(idx, dw, sj);
    }
  }
}

template <int EPL>
__global__ void __launch_bounds__(kRouteThreadsPerBlock) route_backward_kernel(BackwardParams p) {
  constexpr int W = kRouteWarpsPerBlock;
  const int E = p.experts;
  const int K = p.topK;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const float T = static_cast<float>(p.tokens);
  const bool useAux = p.auxGrad != 0.f;

  // d aux / d p[t, e] = E * f_e / T, f_e = count_e / (T k), times d loss / d aux.
  // Recomputed per token from the (cached) counts rather than held in registers.
  const float auxScale = useAux ? p.auxGrad * static_cast<float>(E) : 0.f;
  const float fScale = T * static_cast<float>(K);

  const int64_t stride = static_cast<int64_t>(gridDim.x) * W;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * W + warp; t < p.tokens; t += stride) {
    float s[EPL], ds[EPL];
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = i * 32 + lane;
      s[i] = e < E ? p.scores[t * E + e] : 0.f;
      ds[i] = 0.f;
    }

    if (p.dWeights != nullptr) {
      const int32_t* idxRow = p.indices + t * K;
      const float* dwRow = p.dWeights + t * K;
      float denom = 1.f;
      float dot = 0.f;
      if (p.renormalize) {
        // w_j = s_j / S: ds_j = (dw_j - sum_i dw_i w_i) / S
        float S = 0.f;
        for_each_choice<EPL>(idxRow, dwRow, K, E, lane, s, [&](int, float, float sj) { S += sj; });
        denom = S + (p.scoreFunction == kSigmoid ? kSigmoidRenormEps : 0.f);
        for_each_choice<EPL>(idxRow, dwRow, K, E, lane, s, [&](int, float dw, float sj) { dot += dw * (sj / denom); });
      }
      const bool renorm = p.renormalize != 0;
      for_each_choice<EPL>(idxRow, dwRow, K, E, lane, s, [&](int idx, float dw, float) {
        const float g = renorm ? (dw - dot) / denom : dw;
        const int slot = idx >> 5;
        if (lane == (idx & 31)) {
#pragma unroll
          for (int i = 0; i < EPL; ++i)
            if (i == slot) ds[i] += g;
        }
      });
    }

    if (useAux) {
      float dAux[EPL];
#pragma unroll
      for (int i = 0; i < EPL; ++i) {
        const int e = i * 32 + lane;
        dAux[i] = e < E ? auxScale * (static_cast<float>(p.counts[e]) / fScale) / T : 0.f;
      }
      if (p.scoreFunction == kSoftmax) {
#pragma unroll
        for (int i = 0; i < EPL; ++i) ds[i] += dAux[i];
      } else {
        // p = s / Z: ds_e = (dp_e - sum_i dp_i p_i) / Z
        float local = 0.f;
#pragma unroll
        for (int i = 0; i < EPL; ++i) local += s[i];
        const float Z = warp_sum(local);
        float pd = 0.f;
#pragma unroll
        for (int i = 0; i < EPL; ++i) pd += dAux[i] * (s[i] / Z);
        pd = warp_sum(pd);
#pragma unroll
        for (int i = 0; i < EPL; ++i) ds[i] += (dAux[i] - pd) / Z;
      }
    }

    // Through the score function; ds becomes d logits.
    if (p.scoreFunction == kSoftmax) {
      float local = 0.f;
#pragma unroll
      for (int i = 0; i < EPL; ++i) local += s[i] * ds[i];
      const float sd = warp_sum(local);
#pragma unroll
      for (int i = 0; i < EPL; ++i) ds[i] = s[i] * (ds[i] - sd);
    } else {
#pragma unroll
      for (int i = 0; i < EPL; ++i) ds[i] = ds[i] * s[i] * (1.f - s[i]);
    }

    if (p.zGrad != 0.f) {
      // z = mean_t lse_t^2: d z / d logits[t, e] = 2 lse_t softmax(logits[t])_e / T
      float x[EPL], ex[EPL];
      float sumExp;
      const float lse = row_logsumexp<EPL>(p.logits + t * E, E, lane, x, ex, sumExp);
      const float c = p.zGrad * 2.f * lse / T;
#pragma unroll
      for (int i = 0; i < EPL; ++i) ds[i] += c * (ex[i] / sumExp);
    }

    float* out = p.dLogits + t * E;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = i * 32 + lane;
      if (e < E) out[e] = ds[i];
    }
  }
}

// Scores alone, with the forward's arithmetic (row_logsumexp, then the same
// division or sigmoid), so the backward sees the forward's values bit for bit.
template <int EPL>
__global__ void __launch_bounds__(kRouteThreadsPerBlock)
    route_scores_kernel(const float* logits, int64_t tokens, int experts, int scoreFunction, float* scores) {
  constexpr int W = kRouteWarpsPerBlock;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * W;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * W + warp; t < tokens; t += stride) {
    float x[EPL], ex[EPL];
    float sumExp;
    row_logsumexp<EPL>(logits + t * experts, experts, lane, x, ex, sumExp);
    float* out = scores + t * experts;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = i * 32 + lane;
      if (e < experts) out[e] = scoreFunction == kSoftmax ? ex[i] / sumExp : 1.f / (1.f + expf(-x[i]));
    }
  }
}

}  // namespace
}  // namespace moe_cuda

extern "C" int moe_cuda_route_scores(const float* logits, int64_t num_tokens, int num_experts, int score_function,
                                     float* scores, void* stream) {
  using namespace moe_cuda;
  const RoutePlan plan = route_plan(num_tokens, num_experts, 1, 1, 1);
  if (plan.status != 0) return plan.status;
  if (score_function != kSoftmax && score_function != kSigmoid) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (plan.blocks == 0) return 0;
  if (!logits || !scores) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  MOE_SWITCH_POW2_16(plan.expertsPerLane, EPL,
                     route_scores_kernel<EPL>
                     <<<grid, plan.threads, 0, s>>>(logits, num_tokens, num_experts, score_function, scores));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" size_t moe_cuda_route_workspace_bytes(int64_t num_tokens, int num_experts) {
  return moe_cuda::route_workspace_bytes(num_tokens, num_experts);
}

extern "C" int moe_cuda_route_forward(const float* logits, const float* expert_bias, int64_t num_tokens,
                                      int num_experts, int top_k, int score_function, int renormalize, int num_groups,
                                      int topk_groups, int32_t* indices, float* weights, float* scores,
                                      int32_t* tokens_per_expert, float* prob_sum, float* lse_sq_sum, float* losses,
                                      int32_t* nonfinite_tokens, void* workspace, size_t workspace_bytes,
                                      void* stream) {
  using namespace moe_cuda;
  const RoutePlan plan = route_plan(num_tokens, num_experts, top_k, num_groups, topk_groups);
  if (plan.status != 0) return plan.status;
  if (score_function != kSoftmax && score_function != kSigmoid) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (tokens_per_expert == nullptr || prob_sum == nullptr || lse_sq_sum == nullptr)
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (num_tokens > 0 &&
      (logits == nullptr || indices == nullptr || weights == nullptr || scores == nullptr || workspace == nullptr))
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (workspace_bytes < plan.workspaceBytes) return MOE_CUDA_ERR_INVALID_ARGUMENT;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (nonfinite_tokens != nullptr) MOE_CUDA_TRY(cudaMemsetAsync(nonfinite_tokens, 0, sizeof(int32_t), s));

  // Workspace (route_plan.h): partialProb [blocks][E], partialLseSq [blocks], partialCount [blocks][E].
  float* partialProb = static_cast<float*>(workspace);
  float* partialLseSq = plan.blocks > 0 ? partialProb + plan.blocks * num_experts : nullptr;
  int32_t* partialCount = plan.blocks > 0 ? reinterpret_cast<int32_t*>(partialLseSq + plan.blocks) : nullptr;
  if (plan.blocks > 0) {
    const ForwardParams p{logits,      expert_bias,    num_tokens,   num_experts,
                          top_k,       score_function, renormalize,  num_groups > 1 ? num_groups : 1,
                          topk_groups, indices,        weights,      scores,
                          partialProb, partialLseSq,   partialCount, nonfinite_tokens};
    const dim3 grid(static_cast<unsigned>(plan.blocks));
    MOE_SWITCH_POW2_16(plan.expertsPerLane, EPL,
                       route_forward_kernel<EPL><<<grid, plan.threads, plan.sharedBytes, s>>>(p));
    MOE_CUDA_TRY_LAUNCH();
  }
  const unsigned sumBlocks = static_cast<unsigned>((num_experts + kSumExperts - 1) / kSumExperts);
  route_sums_kernel<<<sumBlocks, kSumThreads, 0, s>>>(partialProb, partialCount, static_cast<int>(plan.blocks),
                                                      num_experts, prob_sum, tokens_per_expert);
  MOE_CUDA_TRY_LAUNCH();
  route_finalize_kernel<<<1, kFinalizeThreads, 0, s>>>(prob_sum, partialLseSq, static_cast<int>(plan.blocks),
                                                       tokens_per_expert, num_tokens, num_experts, top_k, lse_sq_sum,
                                                       losses);
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}

extern "C" int moe_cuda_route_backward(const float* d_weights, const int32_t* indices, const float* scores,
                                       const float* logits, const int32_t* tokens_per_expert, int64_t num_tokens,
                                       int num_experts, int top_k, int score_function, int renormalize,
                                       float aux_loss_grad, float z_loss_grad, float* d_logits, void* stream) {
  using namespace moe_cuda;
  const RoutePlan plan = route_plan(num_tokens, num_experts, top_k, 1, 1);
  if (plan.status != 0) return plan.status;
  if (score_function != kSoftmax && score_function != kSigmoid) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (plan.blocks == 0) return 0;
  if (d_logits == nullptr || scores == nullptr || (d_weights != nullptr && indices == nullptr) ||
      (z_loss_grad != 0.f && logits == nullptr) || (aux_loss_grad != 0.f && tokens_per_expert == nullptr))
    return MOE_CUDA_ERR_INVALID_ARGUMENT;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const BackwardParams p{d_weights,     indices,     scores,  logits,         tokens_per_expert,
                         num_tokens,    num_experts, top_k,   score_function, renormalize,
                         aux_loss_grad, z_loss_grad, d_logits};
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  MOE_SWITCH_POW2_16(plan.expertsPerLane, EPL, route_backward_kernel<EPL><<<grid, plan.threads, 0, s>>>(p));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
