// chunkTranspose on the GPU (cpp/ops/chunks.h): rows held as A·B chunks in
// a-major order, copied to b-major order. The counts live on the device, so
// one small kernel plans the chunk offsets (and checks the counts) and a
// second copies, each chunk's bytes split over a row of blocks. Pure copies,
// so the result does not depend on scheduling.
#include <cuda_runtime.h>

#include <stdint.h>

#include "common.cuh"

namespace moe_cuda {
namespace {

constexpr int kCopyThreads = 256;
constexpr int kCopyBlocksPerChunk = 32;

// Workspace: int64 src[A·B], int64 dst[A·B], int32 ok. One thread: A·B is
// ranks × local experts (small).
__global__ void chunk_plan_kernel(const int32_t* __restrict__ counts, int64_t A, int64_t B, int64_t rows,
                                  int64_t* __restrict__ src, int64_t* __restrict__ dst, int32_t* __restrict__ ok,
                                  void* status, uint32_t neg_tag, uint32_t sum_tag) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  *ok = 0;
  int64_t off = 0;
  for (int64_t i = 0; i < A * B; ++i) {
    if (counts[i] < 0) {
      report_status(status, neg_tag, static_cast<long long>(i));
      return;
    }
    src[i] = off;
    off += counts[i];
  }
  if (off != rows) {
    report_status(status, sum_tag, static_cast<long long>(off));
    return;
  }
  int64_t d = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t a = 0; a < A; ++a) {
      dst[a * B + b] = d;
      d += counts[a * B + b];
    }
  *ok = 1;
}

// blockIdx.y: chunk (a-major index); the chunk's words split over gridDim.x blocks.
template <class W>
__global__ void __launch_bounds__(kCopyThreads)
    chunk_copy_kernel(const W* __restrict__ x, const int32_t* __restrict__ counts, const int64_t* __restrict__ src,
                      const int64_t* __restrict__ dst, const int32_t* __restrict__ ok, int64_t row_words,
                      W* __restrict__ out) {
  if (*ok == 0) return;
  const int64_t k = blockIdx.y;
  const int64_t words = static_cast<int64_t>(counts[k]) * row_words;
  const W* in = x + src[k] * row_words;
  W* o = out + dst[k] * row_words;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += stride) o[i] = in[i];
}

}  // namespace
}  // namespace moe_cuda

extern "C" size_t moe_cuda_chunk_transpose_workspace_bytes(int64_t chunks) {
  if (chunks < 0) chunks = 0;
  return moe_cuda::align_up(2 * static_cast<size_t>(chunks) * sizeof(int64_t)) + 256;
}

extern "C" int moe_cuda_chunk_transpose(const void* x, int64_t rows, size_t row_bytes, const int32_t* counts, int64_t a,
                                        int64_t b, void* out, void* status, uint32_t neg_tag, uint32_t sum_tag,
                                        void* workspace, size_t workspace_bytes, void* stream) {
  using namespace moe_cuda;
  if (rows < 0 || a < 0 || b < 0) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  const int64_t chunks = a * b;
  if (chunks == 0 && rows == 0) return 0;
  if (!counts || !status || !workspace || workspace_bytes < moe_cuda_chunk_transpose_workspace_bytes(chunks))
    return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (rows > 0 && row_bytes > 0 && (!x || !out)) return MOE_CUDA_ERR_INVALID_ARGUMENT;
  if (chunks > 65535) return MOE_CUDA_ERR_UNSUPPORTED;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int64_t* src = static_cast<int64_t*>(workspace);
  int64_t* dst = src + chunks;
  int32_t* ok =
      reinterpret_cast<int32_t*>(static_cast<char*>(workspace) + align_up(2 * size_t(chunks) * sizeof(int64_t)));
  chunk_plan_kernel<<<1, 1, 0, s>>>(counts, a, b, rows, src, dst, ok, status, neg_tag, sum_tag);
  MOE_CUDA_TRY_LAUNCH();
  if (chunks == 0 || row_bytes == 0) return 0;
  const dim3 grid(kCopyBlocksPerChunk, static_cast<unsigned int>(chunks));
  const uintptr_t align = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out) | row_bytes;
  if (align % 16 == 0)
    chunk_copy_kernel<uint4><<<grid, kCopyThreads, 0, s>>>(static_cast<const uint4*>(x), counts, src, dst, ok,
                                                           int64_t(row_bytes / 16), static_cast<uint4*>(out));
  else if (align % 4 == 0)
    chunk_copy_kernel<uint32_t><<<grid, kCopyThreads, 0, s>>>(static_cast<const uint32_t*>(x), counts, src, dst, ok,
                                                              int64_t(row_bytes / 4), static_cast<uint32_t*>(out));
  else
    chunk_copy_kernel<uint8_t><<<grid, kCopyThreads, 0, s>>>(static_cast<const uint8_t*>(x), counts, src, dst, ok,
                                                             int64_t(row_bytes), static_cast<uint8_t*>(out));
  MOE_CUDA_TRY_LAUNCH();
  return 0;
}
