#include "serial_queue.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace moe::comm {

struct SerialQueue::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> queue;
  bool closed = false;
};

SerialQueue::SerialQueue() : state_(std::make_shared<State>()) {
  // The thread owns a reference to the state, so it outlives the queue object.
  std::thread([state = state_] {
    std::unique_lock<std::mutex> lock(state->mu);
    for (;;) {
      state->cv.wait(lock, [&] { return state->closed || !state->queue.empty(); });
      if (state->queue.empty()) return;  // closed and drained
      std::function<void()> work = std::move(state->queue.front());
      state->queue.pop_front();
      lock.unlock();
      work();
      work = nullptr;  // what the work held is released here, before the next item
      lock.lock();
    }
  }).detach();
}

SerialQueue::~SerialQueue() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closed = true;
  }
  state_->cv.notify_all();
}

void SerialQueue::submit(std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->queue.push_back(std::move(work));
  }
  state_->cv.notify_all();
}

}  // namespace moe::comm
