#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cancel.h"

namespace moe {
namespace {

// Each parallel region is a Job; helpers hold it by shared_ptr, so a helper
// that wakes late can never touch the next region's state.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  const std::atomic<bool>* cancel = current_cancel_flag();  // the submitting thread's, for the helpers
  int64_t n, chunk;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> pending;
  Job(const std::function<void(int64_t, int64_t)>* f, int64_t n_, int64_t c)
      : fn(f), n(n_), chunk(c), pending((n_ + c - 1) / c) {}
};

class Pool {
 public:
  explicit Pool(int helpers) {
    for (int i = 0; i < helpers; ++i) std::thread([this] { loop(); }).detach();
  }

  void run(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> one_job(run_mu_);  // one parallel region at a time
    auto job = std::make_shared<Job>(&fn, n, chunk);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = job;
      ++generation_;
    }
    cv_.notify_all();
    work(*job);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return job->pending.load() == 0; });
    job_.reset();
  }

 private:
  void work(Job& job) {
    for (;;) {
      int64_t begin = job.next.fetch_add(job.chunk);
      if (begin >= job.n) return;
      (*job.fn)(begin, std::min(job.n, begin + job.chunk));
      if (job.pending.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mu_);
        done_cv_.notify_all();
      }
    }
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen && job_ != nullptr; });
        seen = generation_;
        job = job_;
      }
      CancelScope scope(job->cancel);
      work(*job);
    }
  }

  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool(num_threads() - 1);
  return *p;
}

}  // namespace

int num_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("MOE_EP_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) return std::min(v, 256);
    }
    return std::max(1, int(std::thread::hardware_concurrency()));
  }();
  return n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int threads = num_threads();
  if (threads == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // About four chunks a thread balances uneven rows without much overhead.
  int64_t chunk = std::max(grain, (n + 4 * threads - 1) / (4 * threads));
  pool().run(n, chunk, fn);
}

}  // namespace moe
