// Cooperative cancellation of work nobody will wait for any more: the work of
// a JS environment that is shutting down, or anything running while the
// process exits. Long loops (moe::sgemm) ask work_cancelled() and stop early;
// a cancelled op's results are unspecified and never reach anyone.
#pragma once
#include <atomic>

namespace moe {

// Whether the work on this thread was asked to stop.
bool work_cancelled();

// The flag that work_cancelled() reads on this thread (nullptr: never cancelled).
const std::atomic<bool>* current_cancel_flag();

// Makes `flag` this thread's cancel flag for the scope's lifetime.
class CancelScope {
 public:
  explicit CancelScope(const std::atomic<bool>* flag);
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  const std::atomic<bool>* saved_;
};

}  // namespace moe
