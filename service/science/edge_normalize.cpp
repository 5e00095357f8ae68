#include "science/edge_normalize.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace xanesd::science {

namespace {

double round_to(double x, double step) { return step * std::round(x / step); }

// Least-squares polynomial of degree `deg` in (E − E0) over energies in [lo, hi].
Eigen::VectorXd fit_poly(const std::vector<double>& e, const std::vector<double>& mu, double e0, double lo, double hi,
                         int deg, const char* what) {
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < e.size(); ++i)
    if (e[i] >= lo && e[i] <= hi) idx.push_back(i);
  if (static_cast<int>(idx.size()) < deg + 1)
    throw std::invalid_argument(std::string(what) + ": fewer than " + std::to_string(deg + 1) + " points between " +
                                std::to_string(lo) + " and " + std::to_string(hi) + " eV");
  Eigen::MatrixXd A(static_cast<Eigen::Index>(idx.size()), deg + 1);
  Eigen::VectorXd b(static_cast<Eigen::Index>(idx.size()));
  for (std::size_t r = 0; r < idx.size(); ++r) {
    const double x = e[idx[r]] - e0;
    double p = 1;
    for (int c = 0; c <= deg; ++c, p *= x) A(static_cast<Eigen::Index>(r), c) = p;
    b(static_cast<Eigen::Index>(r)) = mu[idx[r]];
  }
  return A.colPivHouseholderQr().solve(b);
}

}  // namespace

double PreEdgeResult::post_at(double e) const {
  double v = 0, p = 1;
  for (Eigen::Index i = 0; i < post.size(); ++i, p *= (e - e0)) v += post(i) * p;
  return v;
}

double find_e0(const std::vector<double>& e, const std::vector<double>& mu) {
  const std::size_t n = e.size();
  if (n < 5) throw std::invalid_argument("find_e0: need at least 5 points");
  double best = -INFINITY, e0 = e[n / 2];
  for (std::size_t i = 2; i + 2 < n; ++i) {
    const double de = e[i + 1] - e[i - 1];
    if (de <= 0) continue;
    const double d = (mu[i + 1] - mu[i - 1]) / de;
    if (d > best) best = d, e0 = e[i];
  }
  return e0;
}

PreEdgeResult pre_edge(const std::vector<double>& e, const std::vector<double>& mu, const PreEdgeParams& prm) {
  if (e.size() != mu.size() || e.size() < 6) throw std::invalid_argument("pre_edge: need ≥ 6 points of (E, μ)");
  PreEdgeResult r;
  r.e0 = prm.e0 ? *prm.e0 : find_e0(e, mu);
  // Snap E0 to the nearest measured energy, as Larch does.
  r.e0 = *std::min_element(e.begin(), e.end(), [&](double a, double b) { return std::abs(a - r.e0) < std::abs(b - r.e0); });
  const auto below = std::count_if(e.begin(), e.end(), [&](double x) { return x < r.e0; });
  const double pre_step = below < 20 ? 2.0 : 5.0;
  r.pre1 = prm.pre1 ? *prm.pre1 : round_to(e[1] - r.e0, pre_step);
  r.pre2 = prm.pre2 ? *prm.pre2 : 5.0 * std::round(r.pre1 / 15.0);
  if (r.pre2 <= r.pre1) r.pre2 = r.pre1 / 3.0;
  r.norm2 = prm.norm2 ? *prm.norm2 : round_to(e.back() - r.e0, 5.0);
  r.norm1 = prm.norm1 ? *prm.norm1 : std::min(150.0, 5.0 * std::round(r.norm2 / 15.0));
  r.nnorm = prm.nnorm ? *prm.nnorm : (r.norm2 - r.norm1 >= 350 ? 2 : (r.norm2 - r.norm1 >= 50 ? 1 : 0));
  // Rounding can leave a range with too few points; widen it to the nearest measured points.
  auto count_in = [&](double lo, double hi) {
    return std::count_if(e.begin(), e.end(), [&](double x) { return x >= lo && x <= hi; });
  };
  if (count_in(r.e0 + r.pre1, r.e0 + r.pre2) < 2) r.pre1 = e.front() - r.e0;
  if (count_in(r.e0 + r.norm1, r.e0 + r.norm2) < r.nnorm + 1) r.norm2 = e.back() - r.e0;
  while (r.nnorm > 0 && count_in(r.e0 + r.norm1, r.e0 + r.norm2) < r.nnorm + 2) --r.nnorm;

  const auto pre = fit_poly(e, mu, r.e0, r.e0 + r.pre1, r.e0 + r.pre2, 1, "pre-edge");
  r.pre_intercept = pre(0);
  r.pre_slope = pre(1);
  r.post = fit_poly(e, mu, r.e0, r.e0 + r.norm1, r.e0 + r.norm2, r.nnorm, "post-edge");
  r.edge_step = r.post_at(r.e0) - r.pre_at(r.e0);
  if (!(std::abs(r.edge_step) > 1e-12)) throw std::invalid_argument("pre_edge: edge step is zero");
  r.norm.resize(e.size());
  for (std::size_t i = 0; i < e.size(); ++i) r.norm[i] = (mu[i] - r.pre_at(e[i])) / r.edge_step;
  return r;
}

double white_line_energy(const std::vector<double>& e, const std::vector<double>& mu, double e0) {
  std::size_t best = e.size();
  for (std::size_t i = 0; i < e.size(); ++i)
    if (e[i] >= e0 && (best == e.size() || mu[i] > mu[best])) best = i;
  if (best == e.size()) return e0;
  return white_line_vertex(e, best, best > 0 ? mu[best - 1] : 0.0, mu[best], best + 1 < e.size() ? mu[best + 1] : 0.0);
}

double white_line_vertex(const std::vector<double>& e, std::size_t best, double y0, double y1, double y2) {
  if (best == 0 || best + 1 >= e.size()) return e[best];
  // Parabola through three (possibly unevenly spaced) points.
  const double x0 = e[best - 1], x1 = e[best], x2 = e[best + 1];
  const double d = (x0 - x1) * (x0 - x2) * (x1 - x2);
  const double a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d;
  const double b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / d;
  if (!(a < 0)) return x1;
  return std::clamp(-b / (2 * a), x0, x2);
}

}  // namespace xanesd::science
