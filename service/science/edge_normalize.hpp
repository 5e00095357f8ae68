// Edge normalization as Larch's pre_edge does it (science.md §2): E0 at the maximum of dμ/dE,
// a pre-edge line, a post-edge polynomial, the edge step, and norm = (μ − pre)/step. The
// default ranges follow Larch's rules, which also suit XANES-only scans; each can be set.
#pragma once

#include <optional>
#include <vector>

#include <Eigen/Dense>

namespace xanesd::science {

struct PreEdgeParams {
  std::optional<double> e0;             // eV; default: find_e0
  std::optional<double> pre1, pre2;     // eV relative to E0 (negative)
  std::optional<double> norm1, norm2;   // eV relative to E0 (positive)
  std::optional<int> nnorm;             // post-edge polynomial degree 0..2
};

struct PreEdgeResult {
  double e0 = 0, edge_step = 0;
  double pre1 = 0, pre2 = 0, norm1 = 0, norm2 = 0;
  int nnorm = 1;
  double pre_intercept = 0, pre_slope = 0;  // pre(E) = intercept + slope·(E − E0)
  Eigen::VectorXd post;                     // post(E) = Σ post_i·(E − E0)^i
  std::vector<double> norm;                 // (μ − pre)/step on the input energies
  double pre_at(double e) const { return pre_intercept + pre_slope * (e - e0); }
  double post_at(double e) const;
};

// E0: the measured energy with the largest dμ/dE (central differences, ignoring the first and
// last two points, which are often bad).
double find_e0(const std::vector<double>& energies, const std::vector<double>& mu);

// Throws std::invalid_argument if there are too few points in a range to fit it.
PreEdgeResult pre_edge(const std::vector<double>& energies, const std::vector<double>& mu,
                       const PreEdgeParams& params = {});

// White-line peak energy: the vertex of a parabola through the maximum of μ above E0 and its
// two neighbours (the measured maximum if it sits at an end).
double white_line_energy(const std::vector<double>& energies, const std::vector<double>& mu, double e0);
// The same vertex once the maximum is found: at energies[best], with μ y0, y1, y2 at best − 1,
// best, best + 1 (y0 unused at the first energy, y2 at the last).
double white_line_vertex(const std::vector<double>& energies, std::size_t best, double y0, double y1, double y2);

}  // namespace xanesd::science
