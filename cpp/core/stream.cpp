#include "stream.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace moe {
namespace {

class Worker {
 public:
  Worker() : thread_([this] { loop(); }) { thread_.detach(); }

  void submit(Work w) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(w));
      ++submitted_;
    }
    cv_.notify_all();
  }

  void synchronize() {
    std::unique_lock<std::mutex> lock(mu_);
    uint64_t target = submitted_;
    done_cv_.wait(lock, [&] { return finished_ >= target; });
  }

 private:
  void loop() {
    for (;;) {
      Work w;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        w = std::move(queue_.front());
        queue_.pop_front();
      }
      w();
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++finished_;
      }
      done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Work> queue_;
  uint64_t submitted_ = 0, finished_ = 0;
  std::thread thread_;
};

// Never destroyed: the thread lives as long as the process, and exiting with
// work queued must not run destructors under a running worker.
Worker& worker() {
  static Worker* w = new Worker();
  return *w;
}

}  // namespace

void cpu_stream_submit(Work work) { worker().submit(std::move(work)); }
void cpu_stream_synchronize() { worker().synchronize(); }

}  // namespace moe
