// The CPU "stream": one native worker thread per process that runs queued work
// in order, so JavaScript never waits on math on its own thread. It plays the
// part a CUDA stream plays on the GPU.
//
// Work small enough (a cost estimate within the inline limit) runs at once on
// the caller's thread instead, when nothing is queued or running: the stream
// is held for it meanwhile, so the order of work is the same either way.
#pragma once
#include <cstdint>
#include <functional>

namespace moe {

using Work = std::function<void()>;
// Who queued a piece of work (a JS environment, say), so that its work can be
// dropped when it goes away; nullptr for work nobody cancels.
using StreamOwner = const void*;

// Queue work on the CPU stream. Work runs in submission order; it must not throw
// (callers wrap their op and report errors through their own completion).
void cpu_stream_submit(Work work, StreamOwner owner = nullptr);

// Runs `work` now, on the calling thread, if `cost` (Task::cost) is within the
// inline limit and the stream is idle; returns false, without running it,
// otherwise. The limit is MOE_EP_INLINE_WORK steps (0: never inline), else
// kInlineWork. work must not throw.
constexpr int64_t kInlineWork = 32768;
int64_t cpu_stream_inline_limit();
bool cpu_stream_run_inline(int64_t cost, const Work& work);

// Drops the work `owner` queued and, if work of owner's is running, asks it to
// stop (cpp/core/cancel.h) and waits until it has.
void cpu_stream_cancel(StreamOwner owner);

// Block until everything queued so far has run (for the C ABI and tests).
void cpu_stream_synchronize();

// At process exit (registered with atexit when the stream starts): drops what
// is queued, stops the running work early and waits for it, and ends the
// thread, so that nothing runs on the stream (or in OpenBLAS's threads) while
// the libraries' exit handlers tear their state down.
void cpu_stream_shutdown();

}  // namespace moe
