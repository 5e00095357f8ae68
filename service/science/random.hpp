// Random numbers a seed reproduces on any platform: std::mt19937_64's bits are specified by the
// standard, its distributions are not, so the few draws the science needs are written out here
// (energy-selection mixtures, the segmentation's pixel sample, k-means++ seeding).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>

namespace xanesd::science {

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : eng_(seed) {}
  std::uint64_t bits() { return eng_(); }
  double uniform() { return static_cast<double>(eng_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int below(int n) { return std::min(n - 1, static_cast<int>(uniform() * n)); }  // [0, n)
  std::uint64_t below(std::uint64_t n) { return eng_() % n; }                  // [0, n), n ≪ 2⁶⁴
  double exponential() { return -std::log1p(-uniform()); }
  double normal() {  // Box–Muller, both values used
    if (has_spare_) return has_spare_ = false, spare_;
    const double r = std::sqrt(-2.0 * std::log1p(-uniform())), t = 2.0 * std::numbers::pi * uniform();
    spare_ = r * std::sin(t), has_spare_ = true;
    return r * std::cos(t);
  }

 private:
  std::mt19937_64 eng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace xanesd::science
