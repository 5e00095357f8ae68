#include "science/parallel.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace xanesd::science::detail {
namespace {

struct Job {
  int count;
  void (*run)(void*, int);
  void* context;
  std::atomic<int> next{0};  // the next index to take
  int users = 0;             // workers that took the job and have not finished; guarded by Pool::mutex_
  std::exception_ptr error;  // the first exception of any index; guarded by Pool::mutex_
};

// hardware_concurrency − 1 workers: with the calling thread, one thread per core. Started at
// the first parallel call and never stopped (the process's exit ends them where they wait).
class Pool {
 public:
  Pool() {
    const int n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1);
    for (int i = 0; i < n; ++i) {
      std::thread worker([this] { work(); });
      pthread_setname_np(worker.native_handle(), "xanesd-worker");  // visible in top -H, perf, gdb
      worker.detach();
    }
    workers_ = n;
  }

  void run(Job& job) {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(&job);
    }
    for (int i = 1; i < std::min(job.count, workers_ + 1); ++i) has_jobs_.notify_one();
    drain(job);
    std::unique_lock lock(mutex_);
    retire(job);  // no worker takes it from here on; wait for those that did
    done_.wait(lock, [&] { return job.users == 0; });
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      has_jobs_.wait(lock, [&] { return !jobs_.empty(); });
      Job& job = *jobs_.front();
      ++job.users;
      lock.unlock();
      drain(job);
      lock.lock();
      retire(job);  // all its indices are taken: later workers look at the next job
      if (--job.users == 0) done_.notify_all();
    }
  }

  // Takes indices of `job` until none is left. Called without the lock.
  void drain(Job& job) {
    for (int i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.count;) {
      try {
        job.run(job.context, i);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!job.error) job.error = std::current_exception();
      }
    }
  }

  // Removes `job` from the queue if it is still there. Called with the lock held.
  void retire(Job& job) {
    if (const auto it = std::find(jobs_.begin(), jobs_.end(), &job); it != jobs_.end()) jobs_.erase(it);
  }

  std::mutex mutex_;
  std::condition_variable has_jobs_, done_;
  std::deque<Job*> jobs_;
  int workers_ = 0;
};

Pool& pool() {
  static Pool* const p = new Pool;  // never destroyed: a static's destructor must not race a late call
  return *p;
}

}  // namespace

void run_indexed(int count, void (*run)(void*, int), void* context) {
  Job job{count, run, context};
  pool().run(job);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace xanesd::science::detail
