// One way to split independent work over threads: [0, n) cut into equal contiguous ranges, one
// per thread, at least `grain` items each (small jobs stay on the calling thread).
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace xanesd::science {

// Calls fn(t, begin, end) for each range t; returns when all are done.
template <class Fn>
void parallel_ranges(std::size_t n, int threads, std::size_t grain, Fn&& fn) {
  const int t = std::max(1, std::min<int>(threads, static_cast<int>(n / std::max<std::size_t>(grain, 1)) + 1));
  if (t == 1) return fn(0, std::size_t{0}, n);
  std::vector<std::jthread> pool;
  for (int i = 0; i < t; ++i) pool.emplace_back(fn, i, n * static_cast<std::size_t>(i) / t, n * static_cast<std::size_t>(i + 1) / t);
}

}  // namespace xanesd::science
