#include "science/masks.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <memory>

#include "science/parallel.hpp"

namespace xanesd::science {
namespace {

// Maps are cut over threads in ranges of at least this many pixels (smaller: one thread).
constexpr std::size_t kGrain = 65536;

// A float as an unsigned key in the same order (negative values flipped, −0 just below +0, NaN
// above +∞): the top bits of the key then bin the values in order.
std::uint32_t order_key(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace

std::optional<float> quantile(std::span<const float> values, const std::uint8_t* include, double q, int threads) {
  // Two passes instead of nth_element over a copy (tens of ms at 2048², every cycle): a
  // histogram of the keys' top 16 bits finds the bin that holds the k-th value, then only that
  // bin's values are selected among. Exact: the same value nth_element gives.
  constexpr std::size_t kBins = 65536;
  const std::size_t n = values.size();
  const int T = range_count(n, threads, kGrain);
  std::vector<std::unique_ptr<std::array<std::uint32_t, kBins>>> hist(static_cast<std::size_t>(T));
  parallel_ranges(n, T, kGrain, [&](int t, std::size_t p0, std::size_t p1) {
    auto h = std::make_unique<std::array<std::uint32_t, kBins>>();
    h->fill(0);
    for (std::size_t p = p0; p < p1; ++p)
      if (!include || include[p]) ++(*h)[order_key(values[p]) >> 16];
    hist[static_cast<std::size_t>(t)] = std::move(h);
  });
  std::size_t count = 0;
  for (const auto& h : hist)
    for (auto c : *h) count += c;
  if (count == 0) return std::nullopt;
  const auto k = static_cast<std::size_t>(static_cast<double>(count - 1) * q);
  std::size_t below = 0, bin = 0;
  for (;; ++bin) {
    std::size_t in_bin = 0;
    for (const auto& h : hist) in_bin += (*h)[bin];
    if (below + in_bin > k) break;
    below += in_bin;
  }
  std::vector<std::vector<float>> found(static_cast<std::size_t>(T));
  parallel_ranges(n, T, kGrain, [&](int t, std::size_t p0, std::size_t p1) {
    auto& f = found[static_cast<std::size_t>(t)];
    for (std::size_t p = p0; p < p1; ++p)
      if ((!include || include[p]) && (order_key(values[p]) >> 16) == bin) f.push_back(values[p]);
  });
  std::vector<float> candidates;
  for (auto& f : found) candidates.insert(candidates.end(), f.begin(), f.end());
  const auto at = candidates.begin() + static_cast<std::ptrdiff_t>(k - below);
  std::nth_element(candidates.begin(), at, candidates.end(),
                   [](float a, float b) { return order_key(a) < order_key(b); });
  return *at;
}

void update_quality_mask(QualityMask& m, const LcfMaps& maps, const MaskSettings& s, const ImagePart& part, int threads) {
  const std::size_t P = maps.thickness.size();
  m.thickness_threshold = s.thickness_min;
  if (s.thickness_min_relative > 0) {
    std::optional<float> top;
    if (part.gather) {  // the whole image's fitted pixels, gathered from every part in pixel order
      std::vector<float> t;
      const std::size_t own0 = std::min(part.begin, P), own1 = std::min(part.end, P);
      t.reserve(own1 - own0);
      for (std::size_t p = own0; p < own1; ++p)
        if (maps.fitted[p]) t.push_back(maps.thickness[p]);
      t = part.gather(std::move(t));
      top = quantile(t, nullptr, 0.99, threads);
    } else {
      top = quantile(maps.thickness, maps.fitted.data(), 0.99, threads);
    }
    if (top) m.thickness_threshold = std::max(m.thickness_threshold, s.thickness_min_relative * static_cast<double>(*top));
  }
  m.valid.resize(P);
  // The thresholds as floats that compare with a float map exactly as the double does: x ≥ t
  // ⇔ x ≥ the least float ≥ t, x ≤ t ⇔ x ≤ the greatest float ≤ t. All-float compares vectorize.
  auto at_least = [](double t) {
    float f = static_cast<float>(t);
    return static_cast<double>(f) < t ? std::nextafter(f, HUGE_VALF) : f;
  };
  auto at_most = [](double t) {
    float f = static_cast<float>(t);
    return static_cast<double>(f) > t ? std::nextafter(f, -HUGE_VALF) : f;
  };
  const bool by_thickness = m.thickness_threshold > 0, by_residual = s.residual_max > 0, by_rfactor = s.rfactor_max > 0;
  const float thick_min = at_least(m.thickness_threshold), residual_max = at_most(s.residual_max),
              rfactor_max = at_most(s.rfactor_max);
  const int T = range_count(P, threads, kGrain);
  std::vector<std::size_t> n_valid(static_cast<std::size_t>(T), 0);
  parallel_ranges(P, T, kGrain, [&](int t, std::size_t p0, std::size_t p1) {
    const std::uint8_t* __restrict fitted = maps.fitted.data();
    const float *__restrict thick = maps.thickness.data(), *__restrict resid = maps.residual.data(),
                *__restrict rfac = maps.rfactor.data();
    std::uint8_t* __restrict valid = m.valid.data();
    // Local copies: the loop then reads nothing through the lambda's captures, so it vectorizes.
    const bool no_t = !by_thickness, no_r = !by_residual, no_f = !by_rfactor;
    const float t_min = thick_min, r_max = residual_max, f_max = rfactor_max;
    for (std::size_t p = p0; p < p1; ++p)  // & not &&: branch-free
      valid[p] = (fitted[p] != 0) & (no_t | (thick[p] >= t_min)) & (no_r | (resid[p] <= r_max)) & (no_f | (rfac[p] <= f_max));
    n_valid[static_cast<std::size_t>(t)] = static_cast<std::size_t>(std::count(valid + p0, valid + p1, std::uint8_t{1}));
  });
  m.n_valid = 0;
  for (auto n : n_valid) m.n_valid += n;
}

void apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid, std::span<float> out, int threads) {
  const std::size_t P = valid.size();
  if (P == 0) return;
  const std::size_t K = per_pixel_k.size() / P;
  parallel_ranges(P, threads, kGrain, [&](int, std::size_t p0, std::size_t p1) {
    for (std::size_t k = 0; k < K; ++k) {
      const float* __restrict in = per_pixel_k.data() + k * P;
      float* __restrict o = out.data() + k * P;
      for (std::size_t p = p0; p < p1; ++p) {  // a bit mask, not a branch: it vectorizes
        const std::uint32_t keep = 0u - static_cast<std::uint32_t>(valid[p] != 0);
        o[p] = std::bit_cast<float>(std::bit_cast<std::uint32_t>(in[p]) & keep);
      }
    }
  });
}

std::vector<float> apply_mask(std::span<const float> per_pixel_k, const std::vector<std::uint8_t>& valid) {
  std::vector<float> out(per_pixel_k.size());
  apply_mask(per_pixel_k, valid, out);
  return out;
}

}  // namespace xanesd::science
