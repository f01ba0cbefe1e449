// Deferred work. Ops check their arguments when called, on the caller's
// thread, and hand back a Task: the math itself, to run on the device's stream
// (or at once, from C). Process groups and the benchmarks hand back their
// collectives and measurements the same way, to run on their own threads.
#pragma once
#include <functional>

namespace moe {

template <class T>
using Task = std::function<T()>;

}  // namespace moe
