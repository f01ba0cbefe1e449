// Checks of the CUDA emulator itself (emu/cuda/), built from this .cu file the
// way the emulated build builds cuda/*.cu. Each check computes a result that a
// GPU would give and compares it with a formula; the program prints one line
// per check and exits 1 if any differs.
//
//   selftest            every check
//   selftest race       prints the result of a kernel that reads shared memory
//                       without a barrier (differs between MOE_EP_EMU_SCHEDULE
//                       forward and reverse: how the emulator exposes races)
//   selftest deadlock   a kernel whose barriers cannot all complete (the
//                       emulator reports it and aborts)
//   selftest order      prints the blocks of a launch in the order they ran
//   selftest overrun    a kernel that writes one element past the end of its
//                       buffer (the guard page after it faults)
//   selftest freed      a kernel that writes to a buffer already freed (faults)
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace {

constexpr int kLanes = 32;

// Per lane: [0] butterfly sum, [1] inclusive scan (shfl_up), [2] lane 7's
// value, [3] ballot, [4] match_any, [5] reduce_min, [6] any / all, [7] shfl_down.
__global__ void warp_ops_kernel(int* out) {
  const int lane = threadIdx.x & 31;
  const int v = lane * 3 + 1;
  int s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  int scan = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int u = __shfl_up_sync(0xffffffffu, scan, o);
    if (lane >= o) scan += u;
  }
  int* o = out + (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  o[0] = s;
  o[1] = scan;
  o[2] = __shfl_sync(0xffffffffu, v, 7);
  o[3] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[4] = static_cast<int>(__match_any_sync(0xffffffffu, lane / 4));
  o[5] = static_cast<int>(__reduce_min_sync(0xffffffffu, static_cast<unsigned>(100 - lane)));
  o[6] = __any_sync(0xffffffffu, lane == 5) * 2 + __all_sync(0xffffffffu, lane < 31);
  o[7] = __shfl_down_sync(0xffffffffu, v, 1);
}

// A shared-memory tree sum over a 256-thread block, then every thread reads the total.
__global__ void block_sum_kernel(const int* in, int* out) {
  __shared__ int sh[256];
  sh[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  out[blockIdx.x * 256 + threadIdx.x] = sh[0];
}

// Dynamic shared memory: each thread writes its slot, then reads its neighbour's.
__global__ void dynamic_shared_kernel(int* out) {
  extern __shared__ int dyn[];
  const int n = static_cast<int>(blockDim.x);
  dyn[threadIdx.x] = static_cast<int>(threadIdx.x) * 10 + static_cast<int>(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * n + threadIdx.x] = dyn[(threadIdx.x + 1) % n];
}

// Threads of a 2-D block that return early do not hold up the barrier of the others.
__global__ void early_exit_kernel(int* out) {
  __shared__ int sh[64];
  const int t = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  if (t % 2 == 1) return;
  sh[t] = t;
  __syncthreads();
  out[t] = sh[(t + 2) % 64];
}

// No barrier between the write and the read of the neighbour's slot: a race.
__global__ void race_kernel(int* out) {
  __shared__ int sh[64];
  sh[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  out[threadIdx.x] = sh[(threadIdx.x + 1) % 64];
}

// Thread 0 waits at the block barrier while the rest of its warp waits for it
// at a warp barrier: neither can complete.
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0)
    __syncthreads();
  else
    __syncwarp();
  out[threadIdx.x] = 1;
}

__global__ void nothing_kernel(int* out) { out[0] = 1; }

// Each block takes the next slot of a global log (an order-dependent atomic:
// what a kernel must not let into its results, and here the point).
__global__ void block_order_kernel(int* next, int* log) {
  if (threadIdx.x == 0) log[atomicAdd(next, 1)] = static_cast<int>(blockIdx.x);
}

// Thread t writes element t: one thread too many for the buffer.
__global__ void overrun_kernel(int* out) { out[threadIdx.x] = 1; }

int failures = 0;

void expect(bool ok, const char* what) {
  printf("%s %s\n", ok ? "ok" : "FAIL", what);
  if (!ok) ++failures;
}

void check_warp_ops() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 2 * kLanes * 8 * sizeof(int));
  warp_ops_kernel<<<2, kLanes>>>(d);
  const cudaError_t err = cudaGetLastError();
  int h[2 * kLanes * 8];
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  cudaFree(d);
  bool sum = true, scan = true, bcast = true, ballot = true, match = true, rmin = true, anyall = true, down = true;
  unsigned want_ballot = 0;
  for (int l = 0; l < 32; ++l) want_ballot |= (l % 3 == 0) ? 1u << l : 0u;
  for (int t = 0; t < 2 * kLanes; ++t) {
    const int lane = t % 32;
    const int* o = h + t * 8;
    sum &= o[0] == 3 * (31 * 32 / 2) + 32;
    scan &= o[1] == 3 * (lane * (lane + 1) / 2) + lane + 1;
    bcast &= o[2] == 22;
    ballot &= static_cast<unsigned>(o[3]) == want_ballot;
    match &= static_cast<unsigned>(o[4]) == 0xfu << (lane / 4 * 4);
    rmin &= o[5] == 69;
    anyall &= o[6] == 2;
    down &= o[7] == (lane < 31 ? (lane + 1) * 3 + 1 : lane * 3 + 1);
  }
  expect(err == cudaSuccess, "warp kernel launches");
  expect(sum, "__shfl_xor_sync butterfly sums the warp");
  expect(scan, "__shfl_up_sync gives the inclusive prefix sum");
  expect(bcast, "__shfl_sync broadcasts lane 7");
  expect(ballot, "__ballot_sync sets the bits of the lanes whose predicate holds");
  expect(match, "__match_any_sync groups lanes with equal values");
  expect(rmin, "__reduce_min_sync gives the warp minimum");
  expect(anyall, "__any_sync and __all_sync");
  expect(down, "__shfl_down_sync reads lane + 1, and its own value past the end");
}

void check_block_sum() {
  const int blocks = 3;
  int h[blocks * 256];
  for (int i = 0; i < blocks * 256; ++i) h[i] = i;
  int *in = nullptr, *out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&in), sizeof h);
  cudaMalloc(reinterpret_cast<void**>(&out), sizeof h);
  cudaMemcpy(in, h, sizeof h, cudaMemcpyHostToDevice);
  block_sum_kernel<<<blocks, 256>>>(in, out);
  cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost);
  bool ok = true;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < 256; ++t) ok &= h[b * 256 + t] == 256 * b * 256 + 255 * 256 / 2;
  cudaFree(in);
  cudaFree(out);
  expect(ok, "__syncthreads orders a shared-memory tree sum in every block");
}

void check_dynamic_shared() {
  const int n = 96;
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 2 * n * sizeof(int));
  dynamic_shared_kernel<<<2, n, n * sizeof(int)>>>(d);
  const cudaError_t err = cudaGetLastError();
  int h[2 * n];
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  cudaFree(d);
  bool ok = err == cudaSuccess;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < n; ++t) ok &= h[b * n + t] == ((t + 1) % n) * 10 + b;
  expect(ok, "extern __shared__ is the launch's dynamic shared memory");
}

void check_early_exit() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 64 * sizeof(int));
  cudaMemset(d, 0xff, 64 * sizeof(int));
  early_exit_kernel<<<1, dim3(16, 4)>>>(d);
  int h[64];
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  cudaFree(d);
  bool ok = true;
  for (int t = 0; t < 64; ++t) ok &= t % 2 == 1 ? h[t] == -1 : h[t] == (t + 2) % 64;
  expect(ok, "threads that returned count as arrived at __syncthreads");
}

void check_launch_errors() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), sizeof(int));
  nothing_kernel<<<1, 2048>>>(d);
  expect(cudaGetLastError() == cudaErrorInvalidConfiguration, "a block of 2048 threads is refused");
  expect(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
  nothing_kernel<<<1, 32, 64 * 1024>>>(d);
  expect(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB of dynamic shared memory needs the attribute");
  cudaFuncSetAttribute(reinterpret_cast<const void*>(&nothing_kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                       64 * 1024);
  nothing_kernel<<<1, 32, 64 * 1024>>>(d);
  expect(cudaGetLastError() == cudaSuccess, "and runs once the attribute allows it");
  nothing_kernel<<<dim3(1, 70000), 32>>>(d);
  expect(cudaGetLastError() == cudaErrorInvalidConfiguration, "gridDim.y above 65535 is refused");
  cudaFree(d);
}

void check_fresh_memory() {
  unsigned char* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 1000);
  unsigned char h[1000];
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  cudaFree(d);
  bool ok = true;
  for (unsigned char b : h) ok &= b == 0xff;
  expect(ok, "fresh device memory holds all-ones bytes, not zeros");
  expect(reinterpret_cast<uintptr_t>(d) % 256 == 0, "device allocations are 256-byte aligned");
}

int run_overrun() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 64 * sizeof(int));  // 256 bytes: no rounding slack
  overrun_kernel<<<1, 65>>>(d);
  printf("overrun: the launch returned\n");
  return 0;
}

int run_freed() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 64 * sizeof(int));
  cudaFree(d);
  nothing_kernel<<<1, 1>>>(d);
  printf("freed: the launch returned\n");
  return 0;
}

int run_order() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 9 * sizeof(int));
  cudaMemset(d, 0, sizeof(int));
  block_order_kernel<<<8, 32>>>(d, d + 1);
  int h[9];
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  cudaFree(d);
  printf("order:");
  for (int i = 1; i < 9; ++i) printf(" %d", h[i]);
  printf("\n");
  return 0;
}

int run_race() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 64 * sizeof(int));
  race_kernel<<<1, 64>>>(d);
  int h[64];
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  cudaFree(d);
  int written = 0;
  for (int t = 0; t < 64; ++t) written += h[t] == (t + 1) % 64 + 1;
  printf("race: %d of 64 threads read their neighbour's write\n", written);
  return 0;
}

int run_deadlock() {
  int* d = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&d), 64 * sizeof(int));
  deadlock_kernel<<<1, 64>>>(d);
  printf("deadlock: the launch returned\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  if (argc > 1 && strcmp(argv[1], "race") == 0) return run_race();
  if (argc > 1 && strcmp(argv[1], "deadlock") == 0) return run_deadlock();
  if (argc > 1 && strcmp(argv[1], "overrun") == 0) return run_overrun();
  if (argc > 1 && strcmp(argv[1], "order") == 0) return run_order();
  if (argc > 1 && strcmp(argv[1], "freed") == 0) return run_freed();
  check_warp_ops();
  check_block_sum();
  check_dynamic_shared();
  check_early_exit();
  check_launch_errors();
  check_fresh_memory();
  printf("%d failed\n", failures);
  return failures ? 1 : 0;
}
