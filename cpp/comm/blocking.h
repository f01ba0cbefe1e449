// Threads for calls that block on peers (store get/wait, rendezvous). Unlike
// the CPU stream, these calls may wait for minutes and depend on each other
// (a get waits for a set issued later), so each call gets a thread of its own:
// an idle one when there is one, else a new one. Idle threads end after a few
// seconds. Nothing here runs on libuv's shared pool.
#pragma once
#include <functional>

namespace moe::comm {

// Runs work on a pool thread; work must not throw.
void run_blocking(std::function<void()> work);

}  // namespace moe::comm
