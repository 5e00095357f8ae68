// Measuring a simulated scene on chosen energies with chosen dwell (issue 11 part 3: energy
// selection at equal beam time), for tests/test_energy_selection.cpp and bench/bench_select.cpp.
//
// The scene's truth (the simulator's scene layout: fractions and thickness maps, noise off) is
// measured at energies `idx` with relative dwell t_e (1 = the full grid's per-point dwell):
// Poisson counts with mean S·t_e·ȳ_e, S the counts per unit edge step at the full grid's dwell,
// ȳ = thickness × mixture + the simulator's background under the edge; y = counts/(S·t_e), as
// the daemon divides by an I0 proportional to the dwell. Each material pixel is fitted by
// science::solve (NNLS, background a + b(E − E0) free), Poisson-weighted as the daemon's
// fit.weighting=poisson does (3 rounds reweighted from the fit's own prediction after an
// unweighted fit, variance floor half a count) or unweighted. Result: the RMSE of c/Σc against
// the truth over material pixels and references.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "science/lcf.hpp"
#include "science/references.hpp"
#include "simulate/simulate.hpp"

namespace xanesd::sim {

struct DwellScene {
  std::vector<std::string> names;
  Eigen::MatrixXd refs;  // E × K on grid (the daemon's resampling, margin 20 eV)
  std::vector<double> grid;
  std::vector<float> fractions, thickness;  // K × P, P
  std::size_t P = 0;
  double background = 0, e0 = 0;

  // p: the scene's parameters (layout, shape, seed, background; energies = the full grid).
  DwellScene(const std::vector<science::Reference>& r, Params p) : grid(p.energies_eV) {
    p.noise = false;
    const auto s = simulate(r, p);
    for (const auto& x : r) names.push_back(x.name);
    refs = science::resample(r, grid, 20.0);
    fractions = s.fractions, thickness = s.thickness, P = s.pixels();
    background = p.background;
    e0 = grid.empty() ? 0 : grid[grid.size() / 2];  // the simulator's background centre
  }

  double fraction_rmse(const std::vector<int>& idx, const std::vector<double>& dwell, double S, bool weighted,
                       std::uint64_t seed) const {
    const auto model = science::make_lcf_model(names, refs, grid, true);
    const int K = model.n_refs(), M = model.n_params();
    const auto n = static_cast<Eigen::Index>(idx.size());
    Eigen::MatrixXd Xs(n, M);
    for (Eigen::Index j = 0; j < n; ++j) Xs.row(j) = model.X.row(idx[static_cast<std::size_t>(j)]);
    const Eigen::MatrixXd G0 = Xs.transpose() * Xs;
    science::SolveOptions opt;
    opt.n_free = model.n_background();
    std::mt19937_64 g(seed);
    Eigen::VectorXd y(n), w(n), f(K);
    double sse = 0;
    std::size_t count = 0;
    for (std::size_t px = 0; px < P; ++px) {
      if (thickness[px] <= 0) continue;
      for (Eigen::Index j = 0; j < n; ++j) {
        const auto e = static_cast<std::size_t>(idx[static_cast<std::size_t>(j)]);
        double mix = 0;
        for (int k = 0; k < K; ++k) mix += fractions[static_cast<std::size_t>(k) * P + px] * refs(static_cast<Eigen::Index>(e), k);
        const double ybar = background * (1.0 + 0.5 * (grid[e] - e0) / 100.0) + thickness[px] * mix;
        const double scale = S * dwell[static_cast<std::size_t>(j)];
        y(j) = static_cast<double>(std::poisson_distribution<long long>(scale * std::max(0.0, ybar))(g)) / scale;
      }
      auto r = science::solve(G0, Xs.transpose() * y, y.squaredNorm(), static_cast<int>(n), opt);
      for (int round = 0; weighted && r.ok && round < 3; ++round) {
        const Eigen::VectorXd yhat = Xs * r.theta;
        for (Eigen::Index j = 0; j < n; ++j) {
          const double scale = S * dwell[static_cast<std::size_t>(j)];  // I0: counts per unit signal
          w(j) = scale / std::max(yhat(j), 0.5 / scale);
        }
        const Eigen::VectorXd wy = w.cwiseProduct(y);
        auto next = science::solve(Xs.transpose() * w.asDiagonal() * Xs, Xs.transpose() * wy, y.dot(wy), static_cast<int>(n), opt);
        if (!next.ok) break;
        r = std::move(next);
      }
      const double T = r.ok ? r.theta.tail(K).sum() : 0.0;
      f = T > 0 ? Eigen::VectorXd(r.theta.tail(K) / T) : Eigen::VectorXd::Constant(K, 1.0 / K);
      for (int k = 0; k < K; ++k) {
        const double d = f(k) - fractions[static_cast<std::size_t>(k) * P + px];
        sse += d * d;
      }
      ++count;
    }
    return std::sqrt(sse / (static_cast<double>(count) * K));
  }
};

}  // namespace xanesd::sim
