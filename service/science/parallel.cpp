#include "science/parallel.hpp"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace xanesd::science {
namespace detail {
namespace {

std::int64_t thread_cpu_ns() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// CPU time pool workers spent on this thread's calls (work_cpu_time).
thread_local std::int64_t handed_out_ns = 0;

struct Job {
  int count;
  void (*run)(void*, int);
  void* context;
  std::atomic<int> next{0};  // the next index to take
  std::atomic<std::int64_t> worker_ns{0};  // CPU time of the indices workers ran
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
    drain(job, false);
    std::unique_lock lock(mutex_);
    retire(job);  // no worker takes it from here on; wait for those that did
    done_.wait(lock, [&] { return job.users == 0; });
    handed_out_ns += job.worker_ns.load(std::memory_order_relaxed);
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      has_jobs_.wait(lock, [&] { return !jobs_.empty(); });
      Job& job = *jobs_.front();
      ++job.users;
      lock.unlock();
      drain(job, true);
      lock.lock();
      retire(job);  // all its indices are taken: later workers look at the next job
      if (--job.users == 0) done_.notify_all();
    }
  }

  // Takes indices of `job` until none is left; a worker times its CPU. Called without the lock.
  void drain(Job& job, bool worker) {
    const std::int64_t cpu0 = worker ? thread_cpu_ns() : 0;
    bool took = false;
    for (int i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.count;) {
      took = true;
      try {
        job.run(job.context, i);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!job.error) job.error = std::current_exception();
      }
    }
    if (worker && took) job.worker_ns.fetch_add(thread_cpu_ns() - cpu0, std::memory_order_relaxed);
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

}  // namespace detail

std::chrono::nanoseconds work_cpu_time() { return std::chrono::nanoseconds(detail::thread_cpu_ns() + detail::handed_out_ns); }

namespace detail {

void run_indexed(int count, void (*run)(void*, int), void* context) {
  Job job{count, run, context};
  pool().run(job);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace detail
}  // namespace xanesd::science
