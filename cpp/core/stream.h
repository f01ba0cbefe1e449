// The CPU "stream": one native worker thread per process that runs queued work
// in order, so JavaScript never waits on math on its own thread. It plays the
// part a CUDA stream plays on the GPU.
#pragma once
#include <functional>

namespace moe {

using Work = std::function<void()>;

// Queue work on the CPU stream. Work runs in submission order; it must not throw
// (callers wrap their op and report errors through their own completion).
void cpu_stream_submit(Work work);

// Block until everything queued so far has run (for the C ABI and tests).
void cpu_stream_synchronize();

}  // namespace moe
