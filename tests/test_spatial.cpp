// Edge-preserving spatial estimation (science/spatial_fit, fit.spatial) against known truth on
// the simulator's scene layout (domains with smooth drift, a thin disk, a one-pixel stripe of
// another species, empty border; I0 in ion-chamber units), and calibrated uncertainties.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "config/config.hpp"
#include "scan/scan.hpp"
#include "simulate/simulate.hpp"
#include "science_support.hpp"

using namespace xanesd;
using namespace xanesd::science;
using test::default_settings;
using test::pick;
using test::run_scan;

namespace {

// Fraction errors over material pixels (truth thickness > 0), masked or not; the edge set is
// the pixels within 2 px (5×5 window) of a change of dominant species in truth.domains
// (both sides material); the stripe set is truth.stripe.
struct Rmse {
  double all = 0, edge = 0, stripe = 0, neighbours = 0;
};

Rmse rmse(const Scan& scan, const sim::Scan& truth) {
  const auto& maps = scan.fit()->maps();
  const auto& names = scan.fit()->model().reference_names;
  const int R = truth.params.rows, C = truth.params.cols;
  const std::size_t P = truth.pixels();
  std::vector<std::uint8_t> edge(P, 0);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const std::size_t p = static_cast<std::size_t>(r) * C + c;
      if (!truth.domains[p]) continue;
      for (int dr = -2; dr <= 2; ++dr)
        for (int dc = -2; dc <= 2; ++dc) {
          const int r2 = r + dr, c2 = c + dc;
          if (r2 < 0 || r2 >= R || c2 < 0 || c2 >= C) continue;
          const auto d = truth.domains[static_cast<std::size_t>(r2) * C + c2];
          if (d && d != truth.domains[p]) edge[p] = 1;
        }
    }
  double se[3] = {0, 0, 0}, nb = 0;
  std::size_t n[3] = {0, 0, 0}, npx = 0;
  const auto& neigh = scan.fit()->spatial_neighbours();
  for (std::size_t p = 0; p < P; ++p) {
    if (truth.thickness[p] <= 0) continue;
    if (!neigh.empty()) nb += neigh[p];
    ++npx;
    for (std::size_t k = 0; k < truth.reference_names.size(); ++k) {
      const auto it = std::find(names.begin(), names.end(), truth.reference_names[k]);
      const double est = it == names.end() ? 0.0 : maps.fractions[static_cast<std::size_t>(it - names.begin()) * P + p];
      const double e2 = (est - truth.fractions[k * P + p]) * (est - truth.fractions[k * P + p]);
      se[0] += e2, ++n[0];
      if (edge[p]) se[1] += e2, ++n[1];
      if (truth.stripe[p]) se[2] += e2, ++n[2];
    }
  }
  auto root = [&](int i) { return n[i] ? std::sqrt(se[i] / static_cast<double>(n[i])) : 0.0; };
  return {root(0), root(1), root(2), npx ? nb / static_cast<double>(npx) : 0.0};
}

// z = (estimate − truth)/σ over unmasked material pixels, every species with σ > 0 (a species
// NNLS set to exactly 0 with σ 0 and truth 0 is counted as covered, z = 0).
struct ZStats {
  double sd = 0, coverage = 0;  // standard deviation of z; share with |z| ≤ 1
  std::size_t n = 0, skipped = 0;
  std::vector<double> z;
  void add(const Scan& scan, const sim::Scan& truth) {
    const auto& maps = scan.fit()->maps();
    const auto& names = scan.fit()->model().reference_names;
    const std::size_t P = truth.pixels();
    for (std::size_t p = 0; p < P; ++p) {
      if (truth.thickness[p] <= 0 || !scan.mask().valid[p]) continue;
      for (std::size_t k = 0; k < truth.reference_names.size(); ++k) {
        const auto it = std::find(names.begin(), names.end(), truth.reference_names[k]);
        REQUIRE(it != names.end());
        const std::size_t i = static_cast<std::size_t>(it - names.begin()) * P + p;
        const double err = maps.fractions[i] - truth.fractions[k * P + p], sig = maps.fraction_sigma[i];
        if (sig > 0) z.push_back(err / sig);
        else if (std::abs(err) < 1e-9) z.push_back(0.0);
        else ++skipped;
      }
    }
    n = z.size();
    double s2 = 0, in = 0;
    for (double v : z) s2 += v * v, in += std::abs(v) <= 1.0;
    sd = std::sqrt(s2 / static_cast<double>(std::max<std::size_t>(n, 1)));
    coverage = in / static_cast<double>(std::max<std::size_t>(n, 1));
  }
};

ScanSettings per_pixel(bool poisson) {
  auto s = default_settings();
  s.spatial.enabled = false;
  s.poisson_weighting = poisson;
  return s;
}

ScanSettings spatial(double strength = -1, int radius = -1) {
  auto s = default_settings();
  s.spatial.enabled = true;
  if (strength > 0) s.spatial.strength = strength;
  if (radius > 0) s.spatial.radius = radius;
  return s;
}

}  // namespace

TEST_CASE("spatial tuning table (manual: --no-skip)" * doctest::skip()) {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  const int size = std::getenv("SPATIAL_SIZE") ? std::atoi(std::getenv("SPATIAL_SIZE")) : 155;
  for (double counts : {5000.0, 500.0}) {
    const auto truth = sim::simulate(refs, test::scene_scan(size, size * 160 / 155, counts, 3));
    auto row = [&](const std::string& name, const ScanSettings& s) {
      const auto scan = run_scan(truth, refs, s);
      const auto e = rmse(*scan, truth);
      ZStats z;
      z.add(*scan, truth);
      MESSAGE(counts << " " << name << ": RMSE " << e.all << " edge " << e.edge << " stripe " << e.stripe
                     << " mean neighbours " << e.neighbours << " | z sd " << z.sd << " cov68 " << z.coverage << " n " << z.n
                     << " skipped " << z.skipped);
    };
    row("per-pixel NNLS", per_pixel(false));
    row("per-pixel Poisson", per_pixel(true));
    for (int radius : {2, 3})
      for (double strength : {1.0, 2.0, 3.0, 4.0}) row("spatial r" + std::to_string(radius) + " h" + std::to_string(strength), spatial(strength, radius));
  }
}
