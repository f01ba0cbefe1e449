#include "stream.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "cancel.h"

namespace moe {
namespace {

struct Item {
  Work work;
  StreamOwner owner;
};

class Worker {
 public:
  Worker() : thread_([this] { loop(); }) { thread_.detach(); }

  void submit(Work w, StreamOwner owner) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;  // the process is exiting: the work would never be waited for
      queue_.push_back(Item{std::move(w), owner});
      ++submitted_;
    }
    cv_.notify_all();
  }

  bool run_inline(const Work& w) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (busy_ || stopping_ || !queue_.empty()) return false;
      busy_ = true;  // holds the stream: work queued meanwhile waits for this
      running_owner_ = nullptr;
    }
    w();
    bool queued;
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      queued = !queue_.empty();
    }
    if (queued) cv_.notify_all();  // the thread waits for the stream to be free
    done_cv_.notify_all();
    return true;
  }

  void cancel(StreamOwner owner) {
    std::vector<Item> dropped;  // destroyed outside the lock
    std::unique_lock<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->owner == owner) {
        dropped.push_back(std::move(*it));
        it = queue_.erase(it);
        ++finished_;
      } else {
        ++it;
      }
    }
    if (busy_ && running_owner_ == owner) {
      const uint64_t seq = running_seq_;
      cancel_running_.store(true);
      done_cv_.wait(lock, [&] { return !busy_ || running_seq_ != seq; });
    }
    lock.unlock();
    dropped.clear();
  }

  void synchronize() {
    std::unique_lock<std::mutex> lock(mu_);
    uint64_t target = submitted_;
    done_cv_.wait(lock, [&] { return finished_ >= target || stopping_; });
  }

  void shutdown() {
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    // Never destroyed: queued work may hold state whose owners are gone by now.
    new std::deque<Item>(std::move(queue_));
    queue_.clear();
    cancel_running_.store(true);
    cv_.notify_all();
    // Cancelled work ends within one BLAS call; the bound only guards against work that never checks.
    done_cv_.wait_for(lock, std::chrono::seconds(10), [&] { return !busy_; });
  }

 private:
  void loop() {
    CancelScope scope(&cancel_running_);
    for (;;) {
      Work w;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || (!queue_.empty() && !busy_); });
        if (stopping_) return;
        w = std::move(queue_.front().work);
        running_owner_ = queue_.front().owner;
        queue_.pop_front();
        busy_ = true;
        ++running_seq_;
        cancel_running_.store(false);
      }
      w();
      w = nullptr;  // what the work held goes before the stream reports it done
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_ = false;
        ++finished_;
      }
      done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Item> queue_;
  uint64_t submitted_ = 0, finished_ = 0, running_seq_ = 0;
  bool busy_ = false, stopping_ = false;
  StreamOwner running_owner_ = nullptr;
  std::atomic<bool> cancel_running_{false};
  std::thread thread_;
};

std::atomic<Worker*> started{nullptr};

// Never destroyed: the thread lives as long as the process, and exiting with
// work queued must not run destructors under a running worker.
Worker& worker() {
  static Worker* w = [] {
    Worker* created = new Worker();
    started.store(created);
    std::atexit(cpu_stream_shutdown);
    return created;
  }();
  return *w;
}

}  // namespace

int64_t cpu_stream_inline_limit() {
  static const int64_t limit = [] {
    if (const char* env = std::getenv("MOE_EP_INLINE_WORK")) {
      char* end = nullptr;
      long long v = std::strtoll(env, &end, 10);
      if (end != env && *end == '\0' && v >= 0) return int64_t(v);
    }
    return kInlineWork;
  }();
  return limit;
}

void cpu_stream_submit(Work work, StreamOwner owner) { worker().submit(std::move(work), owner); }
bool cpu_stream_run_inline(int64_t cost, const Work& work) {
  return cost <= cpu_stream_inline_limit() && worker().run_inline(work);
}
void cpu_stream_cancel(StreamOwner owner) {
  if (Worker* w = started.load()) w->cancel(owner);  // nothing to cancel on a stream never started
}
void cpu_stream_synchronize() { worker().synchronize(); }
void cpu_stream_shutdown() {
  if (Worker* w = started.load()) w->shutdown();
}

}  // namespace moe
