// One way to split independent work over threads: [0, n) cut into equal contiguous ranges, one
// per thread, at least `grain` items each (small jobs stay on the calling thread).
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace xanesd::science {

// How many ranges parallel_ranges cuts [0, n) into: per-range results can be sized by it.
inline int range_count(std::size_t n, int threads, std::size_t grain) {
  return std::max(1, std::min<int>(threads, static_cast<int>(n / std::max<std::size_t>(grain, 1)) + 1));
}

// Calls fn(t, begin, end) for each range t < range_count(n, threads, grain); returns when all
// are done.
template <class Fn>
void parallel_ranges(std::size_t n, int threads, std::size_t grain, Fn&& fn) {
  const int t = range_count(n, threads, grain);
  if (t == 1) return fn(0, std::size_t{0}, n);
  std::vector<std::jthread> pool;
  for (int i = 0; i < t; ++i) pool.emplace_back(fn, i, n * static_cast<std::size_t>(i) / t, n * static_cast<std::size_t>(i + 1) / t);
}

}  // namespace xanesd::science
