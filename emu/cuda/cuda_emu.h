// The CPU emulator of moe-ep's CUDA kernels: what a .cu file of cuda/ needs,
// after emu/cuda/translate.js, to compile as C++ and run on the host.
//
// Each CUDA thread is a fiber (emu/cuda/scheduler.cpp); the threads of a block
// run one at a time and switch only at barriers (__syncthreads, __syncwarp and
// every warp collective), so shared memory is an ordinary static variable,
// atomics are plain read-modify-writes, and a block's result is what any legal
// schedule of the GPU could give. Blocks run one after another; launches are
// serialised process-wide and finish before the launch call returns, so every
// stream is trivially ordered. Device memory is host memory
// (emu/cuda/runtime.cpp).
//
// What it checks: indexing, bounds, the barrier structure (a barrier that not
// every live thread of the block reaches is reported as a deadlock), launch
// configurations, and the results against the CPU ops. What it cannot check:
// timing, the memory model beyond barriers, and the Hopper GEMM kernel (wgmma,
// TMA and mbarrier PTX). The mma.sync GEMM's PTX is emulated by include/ptx_sm80.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#if !defined(__x86_64__)
#error "the moe-ep CUDA emulator switches fibers with x86-64 code"
#endif

// ---- qualifiers ------------------------------------------------------------------
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __constant__ static
// The threads of a block run on one OS thread, one block at a time, under the
// process-wide launch lock: a static variable is exactly the block's shared memory.
#define __shared__ static
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__

// ---- built-in variables ------------------------------------------------------------
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

// ---- the scheduler (scheduler.cpp) ---------------------------------------------------
struct Config {
  dim3 grid;
  dim3 block;
  size_t shared_bytes;
  cudaStream_t stream;
  const void* kernel;  // for the dynamic shared memory limit (cudaFuncSetAttribute)
};

// Runs `body` once per thread of the grid; configuration errors become the
// thread's last CUDA error (cudaGetLastError), as a failed launch does.
void run_grid(const Config& config, void (*body)(void*), void* context);
// Blocks until every live thread of the block has arrived.
void sync_block();
// Blocks until every live lane of `mask` in the caller's warp has arrived; then
// each may read the others' published values.
void sync_warp(unsigned mask);
// The caller's lane publishes `bits`; after sync_warp, lane(l) reads lane l's.
void publish(uint64_t bits);
uint64_t published(int lane);
// Lanes of the caller's warp that exist and have not returned.
unsigned live_lanes();
int lane_id();
void* dynamic_shared_bytes();

// Dynamic shared memory addressed as the GPU's shared window: 32-bit offsets.
uint32_t shared_offset(const void* p);
unsigned char* shared_at(uint32_t offset);
// cp.async for the calling thread: queued, made at the wait that covers its group.
void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int newest_in_flight);

template <class T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

// kernel<<<grid, block, shared, stream>>>(args) after translate.js:
// ::emu::launch(kernel, grid, block, shared, stream)(args). The arguments are
// converted to the kernel's parameter types once; every thread gets a copy.
template <class... P>
struct Launch {
  void (*fn)(P...);
  Config config;

  template <class... A>
  void operator()(A&&... args) const {
    std::tuple<std::decay_t<P>...> held(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    struct Ctx {
      void (*fn)(P...);
      std::tuple<std::decay_t<P>...>* args;
    } ctx{fn, &held};
    run_grid(
        config,
        [](void* c) {
          Ctx* x = static_cast<Ctx*>(c);
          std::apply(x->fn, *x->args);
        },
        &ctx);
  }
};

template <class... P>
Launch<P...> launch(void (*fn)(P...), dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
  return Launch<P...>{fn, Config{grid, block, shared_bytes, stream, reinterpret_cast<const void*>(fn)}};
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collectives move up to 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}

// One value from lane `src` of the caller's warp (its own value when src is
// not a live lane of `mask`, which is undefined on the GPU).
template <class T>
T exchange(unsigned mask, T v, int src) {
  publish(to_bits(v));
  sync_warp(mask);
  const bool ok = src >= 0 && src < 32 && ((mask & live_lanes()) >> src & 1u);
  const T r = ok ? from_bits<T>(published(src)) : v;
  sync_warp(mask);
  return r;
}

}  // namespace emu

// ---- the runtime's kernel-pointer overloads (cuda_runtime.h has them for nvcc only) --
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), enum cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <class... P>
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, void (*kernel)(P...)) {
  return ::cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(kernel));
}

// ---- synchronisation and warp collectives -------------------------------------------
inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::sync_warp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = emu::lane_id();
  return emu::exchange(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = emu::lane_id();
  const int src = lane ^ lane_mask;
  return emu::exchange(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::lane_id();
  const int in = lane & (width - 1);
  return emu::exchange(mask, v, in >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::lane_id();
  const int in = lane & (width - 1);
  return emu::exchange(mask, v, in + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane);
}

namespace emu {
// f(lane, bits) over the live lanes of mask, after every one has published.
template <class F>
void over_lanes(unsigned mask, uint64_t mine, F f) {
  publish(mine);
  sync_warp(mask);
  const unsigned lanes = mask & live_lanes();
  for (int l = 0; l < 32; ++l)
    if (lanes >> l & 1u) f(l, published(l));
  sync_warp(mask);
}
// Every live lane's value, indexed by lane (0 for lanes that are not live).
inline void gather_warp(uint64_t mine, uint64_t (&all)[32]) {
  for (uint64_t& v : all) v = 0;
  over_lanes(0xffffffffu, mine, [&](int l, uint64_t b) { all[l] = b; });
}
}  // namespace emu

inline unsigned __ballot_sync(unsigned mask, int pred) {
  unsigned r = 0;
  emu::over_lanes(mask, pred != 0, [&](int l, uint64_t b) { r |= b ? 1u << l : 0u; });
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == (mask & emu::live_lanes()); }
template <class T>
unsigned __match_any_sync(unsigned mask, T v) {
  unsigned r = 0;
  const uint64_t mine = emu::to_bits(v);
  emu::over_lanes(mask, mine, [&](int l, uint64_t b) { r |= b == mine ? 1u << l : 0u; });
  return r;
}
namespace emu {
template <class T, class Pick>
T reduce_lanes(unsigned mask, T v, Pick pick) {
  bool first = true;
  T r = v;
  over_lanes(mask, to_bits(v), [&](int, uint64_t b) {
    r = first ? from_bits<T>(b) : pick(r, from_bits<T>(b));
    first = false;
  });
  return r;
}
}  // namespace emu

namespace emu {
template <class T>
T lane_min(T a, T b) {
  return std::min(a, b);
}
template <class T>
T lane_max(T a, T b) {
  return std::max(a, b);
}
}  // namespace emu
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  return emu::reduce_lanes(mask, v, emu::lane_min<unsigned>);
}
inline int __reduce_min_sync(unsigned mask, int v) { return emu::reduce_lanes(mask, v, emu::lane_min<int>); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  return emu::reduce_lanes(mask, v, emu::lane_max<unsigned>);
}
inline int __reduce_max_sync(unsigned mask, int v) { return emu::reduce_lanes(mask, v, emu::lane_max<int>); }
inline unsigned __activemask() { return emu::live_lanes(); }

// ---- atomics: one thread runs at a time, so a plain read-modify-write is atomic ------
namespace emu {
template <class T, class F>
T read_modify_write(T* p, F update) {
  const T old = *p;
  *p = update(old);
  return old;
}
}  // namespace emu
template <class T>
T atomicAdd(T* p, T v) {
  return emu::read_modify_write(p, [&](T old) { return T(old + v); });
}
inline unsigned long long atomicAdd(unsigned long long* p, long long v) {
  return atomicAdd(p, static_cast<unsigned long long>(v));
}
template <class T>
T atomicMin(T* p, T v) {
  return emu::read_modify_write(p, [&](T old) { return v < old ? v : old; });
}
template <class T>
T atomicMax(T* p, T v) {
  return emu::read_modify_write(p, [&](T old) { return v > old ? v : old; });
}
template <class T>
T atomicOr(T* p, T v) {
  return emu::read_modify_write(p, [&](T old) { return T(old | v); });
}
template <class T>
T atomicAnd(T* p, T v) {
  return emu::read_modify_write(p, [&](T old) { return T(old & v); });
}
template <class T>
T atomicExch(T* p, T v) {
  return emu::read_modify_write(p, [&](T) { return v; });
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
  return emu::read_modify_write(p, [&](T old) { return old == compare ? v : old; });
}

// ---- arithmetic intrinsics (the translation units are built with -ffp-contract=off,
// so a * b + c rounds twice, as the GPU's _rn intrinsics do) ----------------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline double cospi(double x) { return cos(M_PI * x); }
inline double sinpi(double x) { return sin(M_PI * x); }
inline float cospif(float x) { return cosf(static_cast<float>(M_PI) * x); }
inline float sinpif(float x) { return sinf(static_cast<float>(M_PI) * x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline unsigned __float_as_uint(float v) { return emu::from_bits<unsigned>(emu::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return emu::from_bits<float>(emu::to_bits(v)); }
inline int __float_as_int(float v) { return emu::from_bits<int>(emu::to_bits(v)); }
inline float __int_as_float(int v) { return emu::from_bits<float>(emu::to_bits(v)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}
template <class T>
T __ldg(const T* p) {
  return *p;
}

// CUDA's integer min / max overloads.
using std::max;
using std::min;
inline long long min(long long a, int b) { return a < b ? a : b; }
inline long long min(int a, long long b) { return a < b ? a : b; }
inline long long max(long long a, int b) { return a > b ? a : b; }
inline long long max(int a, long long b) { return a > b ? a : b; }
