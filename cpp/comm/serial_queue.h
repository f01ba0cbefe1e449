// A queue of work run in order on one thread of its own: the CPU stream's
// pattern (cpp/core/stream.cpp), one per process group, so that a group's
// collectives run one after another and never on the JS thread or libuv's pool.
#pragma once
#include <functional>
#include <memory>

namespace moe::comm {

class SerialQueue {
 public:
  SerialQueue();
  // Closes the queue: work already queued still runs, then the thread ends.
  // Never joins, so it may run on the queue's own thread (from inside work).
  ~SerialQueue();
  SerialQueue(const SerialQueue&) = delete;
  SerialQueue& operator=(const SerialQueue&) = delete;

  // Queues work; it must not throw.
  void submit(std::function<void()> work);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace moe::comm
