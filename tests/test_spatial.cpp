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
  bool interior = true;
  // 1: only pixels within 2 px of a domain edge; 0: only pixels farther; −1: all.
  int edge_filter = -1;
  double sd = 0, coverage = 0;  // standard deviation of z; share with |z| ≤ 1
  std::size_t n = 0, skipped = 0;
  std::vector<double> z;
  void add(const Scan& scan, const sim::Scan& truth) {
    const auto& maps = scan.fit()->maps();
    const auto& names = scan.fit()->model().reference_names;
    const std::size_t P = truth.pixels();
    const auto edges = sim::edge_band(truth, 2);
    for (std::size_t p = 0; p < P; ++p) {
      if (truth.thickness[p] <= 0 || !scan.mask().valid[p]) continue;
      if (edge_filter >= 0 && edges[p] != edge_filter) continue;
      for (std::size_t k = 0; k < truth.reference_names.size(); ++k) {
        const auto it = std::find(names.begin(), names.end(), truth.reference_names[k]);
        REQUIRE(it != names.end());
        const std::size_t i = static_cast<std::size_t>(it - names.begin()) * P + p;
        const double t = truth.fractions[k * P + p];
        const double err = maps.fractions[i] - t, sig = maps.fraction_sigma[i];
        // Interior only: where the truth lies ≥ 2σ inside [0, 1] the constraints (c ≥ 0, hence
        // 0 ≤ f ≤ 1) do not censor the estimate and a first-order σ can mean what it says.
        if (interior && !(std::min(t, 1.0 - t) > 2.0 * sig)) continue;
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
  s.weighting = poisson ? ScanSettings::Weighting::poisson : ScanSettings::Weighting::none;
  return s;
}

ScanSettings spatial(double strength = -1, int radius = -1, int pilot = -1) {
  auto s = default_settings();
  if (pilot >= 0) s.spatial.pilot_radius = pilot;
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
      ZStats z, zall;
      zall.interior = false;
      z.add(*scan, truth);
      zall.add(*scan, truth);
      MESSAGE(counts << " " << name << ": RMSE " << e.all << " edge " << e.edge << " stripe " << e.stripe
                     << " mean neighbours " << e.neighbours << " | z sd " << z.sd << " cov68 " << z.coverage << " n " << z.n
                     << " | all pairs: z sd " << zall.sd << " cov68 " << zall.coverage << " skipped " << zall.skipped);
    };
    row("per-pixel NNLS", per_pixel(false));
    row("per-pixel Poisson", per_pixel(true));
    for (int pilot : {1})
      for (int radius : {2, 3})
        for (double strength : {2.0, 3.0, 4.0})
          row("spatial pilot" + std::to_string(pilot) + " r" + std::to_string(radius) + " h" + std::to_string(strength),
              spatial(strength, radius, pilot));
  }
}

TEST_CASE("spatial estimation beats the per-pixel fit at 500, 5000 and 100000 counts and keeps the stripe and the domain edges") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  REQUIRE(default_settings().spatial.enabled);  // the default (fit.spatial = true)
  // gain: the share of the per-pixel error it must remove (issue 10's targets at 500 and 5000;
  // at 100000 counts the noise is nearly gone and it must only not be worse).
  for (const auto& [counts, gain] : {std::pair{5000.0, 0.05}, std::pair{500.0, 0.25}, std::pair{100000.0, 0.0}}) {
    const auto truth = sim::simulate(refs, test::scene_scan(96, 100, counts, 3));
    const auto plain = rmse(*run_scan(truth, refs, per_pixel(false)), truth);
    const auto poisson = rmse(*run_scan(truth, refs, per_pixel(true)), truth);
    const auto scan = run_scan(truth, refs, default_settings());
    const auto sp = rmse(*scan, truth);
    MESSAGE(counts << " counts: fraction RMSE per-pixel NNLS " << plain.all << " (edge " << plain.edge << ", stripe "
                   << plain.stripe << "), per-pixel Poisson " << poisson.all << " (edge " << poisson.edge << ", stripe "
                   << poisson.stripe << "), spatial " << sp.all << " (edge " << sp.edge << ", stripe " << sp.stripe
                   << "), mean effective neighbours " << sp.neighbours);
    CHECK(sp.all <= (1 - gain) * plain.all);
    CHECK(sp.all <= (1 - gain) * poisson.all);
    CHECK(sp.edge <= plain.edge);
    CHECK(sp.stripe <= plain.stripe);
    // The map of what it did: 1 outside the material, more than 1 inside.
    const auto& nb = scan->fit()->spatial_neighbours();
    REQUIRE(nb.size() == truth.pixels());
    CHECK(sp.neighbours > 5);
    CHECK(*std::min_element(nb.begin(), nb.end()) >= 0.f);
  }
}

TEST_CASE("fraction_sigma means what it says: z-scores over noise realizations, unweighted, Poisson and spatial") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  struct Mode {
    const char* name;
    ScanSettings settings;
  };
  const Mode modes[] = {{"per-pixel NNLS", per_pixel(false)}, {"per-pixel Poisson", per_pixel(true)}, {"spatial", default_settings()}};
  // The scene (domains whose composition drifts, a thin disk, a stripe) and domains of fixed
  // composition (where only the noise and the kernel's choices are left).
  for (const auto layout : {sim::Params::Layout::scene, sim::Params::Layout::domains})
  for (double counts : {5000.0, 500.0})
    for (const auto& mode : modes) {
      ZStats z, near_edges, away;
      near_edges.edge_filter = 1, away.edge_filter = 0;
      for (std::uint64_t seed : {21, 22, 23}) {
        auto params = test::scene_scan(64, 64, counts, seed);
        params.layout = layout;
        const auto truth = sim::simulate(refs, params);
        const auto scan = run_scan(truth, refs, mode.settings);
        z.add(*scan, truth), near_edges.add(*scan, truth), away.add(*scan, truth);
      }
      const std::string name = std::string(layout == sim::Params::Layout::scene ? "scene, " : "fixed domains, ") + mode.name;
      MESSAGE(counts << " counts, " << name << ": z sd within 2 px of a domain edge " << near_edges.sd << " ("
                     << near_edges.n << "), farther " << away.sd << " (" << away.n << ")");
      MESSAGE(counts << " counts, " << name << ": z sd " << z.sd << ", |z| ≤ 1 in " << 100 * z.coverage << " % of "
                     << z.n << " interior estimates");
      CHECK(z.sd >= 0.9);
      CHECK(z.sd <= 1.15);
      CHECK(std::abs(z.coverage - 0.6827) <= 0.05);
    }
}

TEST_CASE("live spatial maps (solved between energies) equal the batch maps at the end") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(40, 44, 500, 5));
  const auto batch = run_scan(truth, refs, default_settings());
  int solves = 0;
  const auto live = run_scan(truth, refs, default_settings(), [&](Scan& s, std::size_t e) {
    if (e % 7 == 3) s.solve_changed(2), ++solves;
  });
  CHECK(solves > 5);
  test::check_same_fit(*batch, *live);
}

// The window sums run 16 centres per vector chunk on a CPU with AVX-512 and 8 otherwise, the
// last chunk of a row overlapping the one before it; each centre's arithmetic is the same in
// both, so the maps must agree to rounding (bit for bit with GCC; a compiler may fuse a
// multiply and add in one width and not the other, which moves the last bit of a weight). The
// image's inner width is not a multiple of either width, and it has material up to its
// sides: overlapping chunks and the side columns are all exercised.
TEST_CASE("the spatial step's maps do not depend on its vector width (8 or 16 centres per chunk)") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  auto params = test::scene_scan(37, 61, 500, 8);
  params.empty_border = false;  // material in the side columns too
  const auto truth = sim::simulate(refs, params);
  auto narrow = default_settings();
  narrow.spatial.vector_lanes = 8;
  const auto widest = run_scan(truth, refs, default_settings());
  const auto eight = run_scan(truth, refs, narrow);
  const auto& a = widest->fit()->maps();
  const auto& b = eight->fit()->maps();
  auto max_diff = [](const auto& x, const auto& y, double floor) {
    REQUIRE(x.size() == y.size());
    double d = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
      d = std::max(d, std::abs(static_cast<double>(x[i]) - y[i]) / (floor + std::abs(static_cast<double>(y[i]))));
    return d;
  };
  const double df = max_diff(a.fractions, b.fractions, 1.0), dsig = max_diff(a.fraction_sigma, b.fraction_sigma, 1e-3),
               dres = max_diff(a.residual, b.residual, 1e-6),
               dnb = max_diff(widest->fit()->spatial_neighbours(), eight->fit()->spatial_neighbours(), 1.0);
  MESSAGE("16 against 8 centres per chunk: max |Δf| " << df << ", max rel. Δσ " << dsig << ", Δresidual " << dres
                                                      << ", Δneighbours " << dnb);
  CHECK(df < 1e-5);
  CHECK(dsig < 1e-3);
  CHECK(dres < 1e-4);
  CHECK(dnb < 1e-4);
  std::size_t smoothed = 0;
  for (float n : widest->fit()->spatial_neighbours()) smoothed += n > 1.5f;
  CHECK(smoothed > truth.pixels() / 3);
}

// A smoothed pixel's residual is its own data's misfit to the averaged model, which is
// nonnegative in the references: its own NNLS fit minimizes that misfit over all such models,
// so the residual can only grow. By how much: the own fit absorbs M of the n noise dimensions
// (χ² ≈ σ²(n − M)), a model fitted on the neighbours absorbs none of the pixel's (≈ σ²n), so
// in domains the ratio is about √(n/(n − M)), plus what smoothing bias adds.
TEST_CASE("a smoothed pixel's residual is its own data against the averaged model") {
  const auto refs = pick(load_reference_file(test::fe_library()), test::scene_species());
  const auto truth = sim::simulate(refs, test::scene_scan(48, 48, 5000, 3));
  const auto own = run_scan(truth, refs, per_pixel(false));
  const auto smoothed = run_scan(truth, refs, default_settings());
  const auto& a = own->fit()->maps();
  const auto& b = smoothed->fit()->maps();
  const auto& neighbours = smoothed->fit()->spatial_neighbours();
  std::size_t n = 0, below = 0;
  std::vector<double> ratio;
  for (std::size_t p = 0; p < truth.pixels(); ++p) {
    if (!(neighbours[p] > 1.5) || !a.fitted[p]) continue;
    ++n;
    below += b.residual[p] < a.residual[p] * (1 - 1e-5);
    if (!truth.stripe[p]) ratio.push_back(b.residual[p] / a.residual[p]);
  }
  std::nth_element(ratio.begin(), ratio.begin() + static_cast<std::ptrdiff_t>(ratio.size() / 2), ratio.end());
  const auto& model = smoothed->fit()->model();
  const double E = static_cast<double>(model.X.rows()), M = static_cast<double>(model.X.cols());
  const double expected = std::sqrt(E / (E - M));
  MESSAGE(n << " smoothed pixels; residual below the own NNLS fit's in " << below << "; median ratio "
            << ratio[ratio.size() / 2] << " (noise alone: " << expected << ")");
  CHECK(n > truth.pixels() / 3);
  CHECK(below == 0);
  CHECK(ratio[ratio.size() / 2] >= 1.0);
  CHECK(ratio[ratio.size() / 2] < expected + 0.03);
}
