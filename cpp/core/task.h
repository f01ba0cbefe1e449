// Deferred work. Ops check their arguments when called, on the caller's
// thread, and hand back a Task: the math itself, to run on the device's stream
// (or at once, from C). Process groups and the benchmarks hand back their
// collectives and measurements the same way, to run on their own threads.
#pragma once
#include <cstdint>
#include <functional>

namespace moe {

// A Task's cost when nobody estimated it: such work always runs on the stream's thread.
constexpr int64_t kUnknownCost = INT64_MAX;

template <class T>
class Task : public std::function<T()> {
 public:
  using std::function<T()>::function;
  Task() = default;

  // Estimated work in elementary steps (about a nanosecond each on one core).
  // The CPU stream runs small enough work at once on the caller's thread
  // (cpp/core/stream.h); work of unknown size always goes to its thread.
  int64_t cost = kUnknownCost;
};

}  // namespace moe
