#include "blocking.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace moe::comm {
namespace {

class BlockingPool {
 public:
  void submit(std::function<void()> work) {
    std::unique_lock<std::mutex> lock(mu_);
    queue_.push_back(std::move(work));
    if (idle_ >= queue_.size()) {
      cv_.notify_one();
      return;
    }
    lock.unlock();
    std::thread([this] { loop(); }).detach();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (queue_.empty()) {
        ++idle_;
        bool woke = cv_.wait_for(lock, std::chrono::seconds(5), [&] { return !queue_.empty(); });
        --idle_;
        if (!woke) return;
      }
      std::function<void()> work = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      work();
      work = nullptr;
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t idle_ = 0;
};

// Never destroyed: detached threads may still wait on it while the process exits.
BlockingPool& pool() {
  static BlockingPool* p = new BlockingPool();
  return *p;
}

}  // namespace

void run_blocking(std::function<void()> work) { pool().submit(std::move(work)); }

}  // namespace moe::comm
