// One way to split independent work over threads: [0, n) cut into equal contiguous ranges, one
// per thread, at least `grain` items each (small jobs stay on the calling thread).
//
// The ranges run on the calling thread and on a pool of workers started once per process. A
// live cycle makes a dozen such calls; creating and joining two threads per call took about
// 0.1 ms on a 2-core VM, and each new thread waited to be scheduled behind whatever else ran.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>

namespace xanesd::science {

// How many ranges parallel_ranges cuts [0, n) into: per-range results can be sized by it.
inline int range_count(std::size_t n, int threads, std::size_t grain) {
  return std::max(1, std::min<int>(threads, static_cast<int>(n / std::max<std::size_t>(grain, 1)) + 1));
}

namespace detail {
// Runs run(context, i) for every i < count, on the calling thread and on idle pool workers;
// returns when all are done. The caller takes indices too, so a call never waits for a busy
// pool (nested and concurrent calls make progress). The first exception thrown by any index
// is rethrown here once every index has ended.
void run_indexed(int count, void (*run)(void*, int), void* context);
}  // namespace detail

// CPU time of the calling thread plus what pool workers spent on the ranges of its calls: the
// CPU cost of what this thread has done so far, wherever it ran.
std::chrono::nanoseconds work_cpu_time();

// Calls fn(t, begin, end) for each range t < range_count(n, threads, grain); returns when all
// are done. Ranges may run on any thread, in any order.
template <class Fn>
void parallel_ranges(std::size_t n, int threads, std::size_t grain, Fn&& fn) {
  const int t = range_count(n, threads, grain);
  if (t == 1) return fn(0, std::size_t{0}, n);
  struct Context {
    Fn& fn;
    std::size_t n;
    int t;
  } context{fn, n, t};
  detail::run_indexed(
      t,
      [](void* c, int i) {
        auto& x = *static_cast<Context*>(c);
        x.fn(i, x.n * static_cast<std::size_t>(i) / x.t, x.n * static_cast<std::size_t>(i + 1) / x.t);
      },
      &context);
}

}  // namespace xanesd::science
