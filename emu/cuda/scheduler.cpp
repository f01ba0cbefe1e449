// The fiber scheduler of the CUDA emulator (cuda_emu.h): each thread of a
// block is a fiber with its own stack; the block's fibers run one at a time on
// the launching OS thread and give way only at barriers. When every fiber is
// finished or waiting, the scheduler releases the barriers that are complete:
// a warp barrier when every live lane of its mask waits at one, the block
// barrier when every live thread waits at it. Threads that have returned
// count as arrived, as on the GPU. When nothing can be released the kernel
// has deadlocked: the emulator says where and aborts, since no result of that
// launch could be trusted.
//
// The order in which the threads of a block run between two barriers, and the
// order of the blocks, is MOE_EP_EMU_SCHEDULE: "forward" (thread 0 and block 0
// first, the default), "reverse", or "shuffle" (a fresh permutation for every
// launch, block and round, from a fixed seed). A correct kernel gives the same bits under all three; a kernel that
// reads shared memory another thread writes without a barrier between them
// gives different results under "forward" and "reverse", which is how the
// emulator finds such races.
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "runtime.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// emu_switch(save, next): saves the callee-saved registers and the stack pointer
// into *save, then resumes the context whose stack pointer is `next`.
extern "C" void emu_switch(void** save, void* next);
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace emu {
namespace {

constexpr size_t kStackBytes = 128 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kDefaultSharedLimit = 48 * 1024;
constexpr size_t kMaxSharedLimit = 227 * 1024;

enum class State { Ready, Block, Warp, Done };
enum class Order { Forward, Reverse, Shuffle };

Order schedule_order() {
  static const Order order = [] {
    const char* v = getenv("MOE_EP_EMU_SCHEDULE");
    const std::string s = v ? v : "";
    if (s.empty() || s == "forward") return Order::Forward;
    if (s == "reverse") return Order::Reverse;
    if (s == "shuffle") return Order::Shuffle;
    fprintf(stderr, "moe-ep CUDA emulator: MOE_EP_EMU_SCHEDULE must be forward, reverse or shuffle, not \"%s\"\n",
            s.c_str());
    abort();
  }();
  return order;
}

struct Copy {
  uint32_t dst;
  const void* src;
  int bytes;
  int src_bytes;  // the rest of `bytes` is zero-filled
  int group;
};

struct Fiber {
  std::vector<Copy> copies;  // cp.async in flight
  int open_group = 0;        // the group cp.async adds to; committed groups are below it
  void* sp = nullptr;
  char* stack = nullptr;
  State state = State::Done;
  unsigned mask = 0;  // of a warp barrier
  uint64_t bits = 0;  // the value published for a warp collective
  uint3 tid{0, 0, 0};
};

struct Run {
  std::vector<Fiber> fibers;
  int threads = 0;
  Fiber* current = nullptr;
  void* scheduler_sp = nullptr;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  std::vector<unsigned char> shared;
  std::vector<int> order;  // the threads of the current round, in running order
  std::mt19937 rng{20261128u};
};

std::mutex launch_mutex;  // launches are serialised process-wide
Run run;                  // guarded by launch_mutex

// The running thread's linear index in its block: its fiber's position.
int current_index() { return static_cast<int>(run.current - run.fibers.data()); }

[[noreturn]] void fiber_main() {
  run.body(run.context);
  Fiber* self = run.current;
  self->state = State::Done;
  emu_switch(&self->sp, run.scheduler_sp);
  abort();  // a finished fiber is never resumed
}

void start_fiber(Fiber& f) {
  if (!f.stack) {
    f.stack = static_cast<char*>(aligned_alloc(64, kStackBytes));
    if (!f.stack) {
      fprintf(stderr, "moe-ep CUDA emulator: out of memory for thread stacks\n");
      abort();
    }
  }
  uintptr_t* sp = reinterpret_cast<uintptr_t*>(f.stack + kStackBytes);
  *--sp = 0;                                         // where fiber_main's return address would be
  *--sp = reinterpret_cast<uintptr_t>(&fiber_main);  // emu_switch's ret lands here
  for (int i = 0; i < 6; ++i) *--sp = 0;             // rbp rbx r12 r13 r14 r15
  f.sp = sp;
  f.state = State::Ready;
  f.copies.clear();  // a thread that returned with copies in flight: nothing reads them
  f.open_group = 0;
}

// Back to the scheduler until a barrier releases the caller.
void wait(State why, unsigned mask) {
  Fiber* self = run.current;
  if (!self) {
    fprintf(stderr, "moe-ep CUDA emulator: a barrier outside a kernel\n");
    abort();
  }
  self->state = why;
  self->mask = mask;
  emu_switch(&self->sp, run.scheduler_sp);
}

unsigned live_in_warp(int warp) {
  unsigned m = 0;
  for (int l = 0; l < 32; ++l) {
    const int t = warp * 32 + l;
    if (t < run.threads && run.fibers[size_t(t)].state != State::Done) m |= 1u << l;
  }
  return m;
}

// Releases the complete barriers; false when none was.
bool release() {
  bool released = false;
  const int warps = (run.threads + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    const unsigned live = live_in_warp(w);
    unsigned waiting = 0;
    unsigned wanted = 0;
    for (int l = 0; l < 32; ++l) {
      const int t = w * 32 + l;
      if (t >= run.threads) break;
      const Fiber& f = run.fibers[size_t(t)];
      if (f.state == State::Warp) {
        waiting |= 1u << l;
        wanted |= f.mask;
      }
    }
    if (waiting == 0) continue;
    // Every waiting lane's mask must be covered by waiting (or finished) lanes.
    if ((wanted & live & ~waiting) != 0) continue;
    for (int l = 0; l < 32; ++l)
      if (waiting >> l & 1u) run.fibers[size_t(w * 32 + l)].state = State::Ready;
    released = true;
  }
  if (released) return true;
  bool any = false;
  for (int t = 0; t < run.threads; ++t) {
    const State s = run.fibers[size_t(t)].state;
    if (s == State::Warp || s == State::Ready) return false;
    if (s == State::Block) any = true;
  }
  if (!any) return false;
  for (int t = 0; t < run.threads; ++t)
    if (run.fibers[size_t(t)].state == State::Block) run.fibers[size_t(t)].state = State::Ready;
  return true;
}

[[noreturn]] void deadlock() {
  fprintf(stderr, "moe-ep CUDA emulator: deadlock in block (%u,%u,%u) of a %ux%ux%u grid; threads waiting:", blockIdx.x,
          blockIdx.y, blockIdx.z, gridDim.x, gridDim.y, gridDim.z);
  int shown = 0;
  for (int t = 0; t < run.threads && shown < 16; ++t) {
    const Fiber& f = run.fibers[size_t(t)];
    if (f.state == State::Block || f.state == State::Warp) {
      fprintf(stderr, " %d(%s)", t, f.state == State::Block ? "__syncthreads" : "warp");
      ++shown;
    }
  }
  fprintf(stderr, "\n");
  abort();
}

void run_block() {
  for (int t = 0; t < run.threads; ++t) {
    Fiber& f = run.fibers[size_t(t)];
    f.tid =
        uint3{unsigned(t) % blockDim.x, unsigned(t) / blockDim.x % blockDim.y, unsigned(t) / (blockDim.x * blockDim.y)};
    start_fiber(f);
  }
  run.order.resize(size_t(run.threads));
  std::iota(run.order.begin(), run.order.end(), 0);
  const Order how = schedule_order();
  if (how == Order::Reverse) std::reverse(run.order.begin(), run.order.end());
  for (;;) {
    if (how == Order::Shuffle) std::shuffle(run.order.begin(), run.order.end(), run.rng);
    for (int t : run.order) {
      Fiber& f = run.fibers[size_t(t)];
      if (f.state != State::Ready) continue;
      run.current = &f;
      threadIdx = f.tid;
      emu_switch(&run.scheduler_sp, f.sp);
    }
    run.current = nullptr;
    bool done = true;
    for (int t = 0; t < run.threads && done; ++t) done = run.fibers[size_t(t)].state == State::Done;
    if (done) return;
    if (!release()) deadlock();
  }
}

}  // namespace

void run_grid(const Config& c, void (*body)(void*), void* context) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  const size_t limit = std::max(kDefaultSharedLimit, shared_limit(c.kernel));
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.y > 65535 || c.grid.z > 65535 || threads == 0 ||
      threads > kMaxThreads || c.block.z > 64 || c.shared_bytes > std::min(limit, kMaxSharedLimit)) {
    set_last_error(threads > kMaxThreads || threads == 0  ? cudaErrorInvalidConfiguration
                   : c.shared_bytes > kDefaultSharedLimit ? cudaErrorInvalidValue
                                                          : cudaErrorInvalidConfiguration);
    return;
  }
  if (!stream_valid(c.stream)) {
    set_last_error(cudaErrorInvalidResourceHandle);
    return;
  }
  std::lock_guard<std::mutex> lock(launch_mutex);
  run.threads = static_cast<int>(threads);
  if (run.fibers.size() < threads) run.fibers.resize(threads);
  run.body = body;
  run.context = context;
  // Uninitialised on the GPU: filled with a pattern so that reads before writes show.
  run.shared.assign(c.shared_bytes + 16, 0xcd);
  blockDim = c.block;
  gridDim = c.grid;
  // Blocks one after another, in the schedule's order too: a kernel must not
  // depend on which of its blocks runs first.
  const uint64_t blocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  const Order how = schedule_order();
  std::vector<uint64_t> shuffled;
  if (how == Order::Shuffle) {
    shuffled.resize(blocks);
    std::iota(shuffled.begin(), shuffled.end(), uint64_t(0));
    std::shuffle(shuffled.begin(), shuffled.end(), run.rng);
  }
  for (uint64_t i = 0; i < blocks; ++i) {
    const uint64_t b = how == Order::Forward ? i : how == Order::Reverse ? blocks - 1 - i : shuffled[i];
    blockIdx =
        uint3{unsigned(b % c.grid.x), unsigned(b / c.grid.x % c.grid.y), unsigned(b / (uint64_t(c.grid.x) * c.grid.y))};
    run_block();
  }
  run.current = nullptr;
}

void sync_block() { wait(State::Block, 0); }

void sync_warp(unsigned mask) {
  // The caller's own lane is always part of its barrier.
  wait(State::Warp, mask | (1u << lane_id()));
}

void publish(uint64_t bits) { run.current->bits = bits; }

uint64_t published(int lane) {
  const int t = (current_index() & ~31) + lane;
  return run.fibers[size_t(t)].bits;
}

unsigned live_lanes() { return live_in_warp(current_index() / 32); }

int lane_id() { return current_index() & 31; }

uint32_t shared_offset(const void* p) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(dynamic_shared_bytes());
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  if (at < base || at - base >= run.shared.size()) {
    fprintf(stderr, "moe-ep CUDA emulator: a shared address outside the block's dynamic shared memory\n");
    abort();
  }
  return static_cast<uint32_t>(at - base);
}

unsigned char* shared_at(uint32_t offset) {
  if (offset >= run.shared.size() - 16) {
    fprintf(stderr, "moe-ep CUDA emulator: shared offset %u past the %zu bytes of dynamic shared memory\n", offset,
            run.shared.size() - 16);
    abort();
  }
  return static_cast<unsigned char*>(dynamic_shared_bytes()) + offset;
}

void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes) {
  shared_at(dst + uint32_t(bytes) - 1);  // bounds
  run.current->copies.push_back(Copy{dst, src, bytes, src_bytes, run.current->open_group});
}

void cp_async_commit() { ++run.current->open_group; }

void cp_async_wait(int newest_in_flight) {
  Fiber& f = *run.current;
  const int done_below = f.open_group - newest_in_flight;  // groups below this one must have landed
  size_t kept = 0;
  for (const Copy& c : f.copies) {
    if (c.group < done_below) {
      unsigned char* d = shared_at(c.dst);
      if (c.src_bytes > 0) memcpy(d, c.src, size_t(c.src_bytes));
      memset(d + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
    } else {
      f.copies[kept++] = c;
    }
  }
  f.copies.resize(kept);
}

void* dynamic_shared_bytes() {
  uintptr_t p = reinterpret_cast<uintptr_t>(run.shared.data());
  return reinterpret_cast<void*>((p + 15) & ~uintptr_t(15));
}

}  // namespace emu
