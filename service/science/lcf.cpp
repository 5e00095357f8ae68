#include "science/lcf.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace xanesd::science {

FitMethod fit_method_from_string(const std::string& s) {
  if (s == "least_squares") return FitMethod::least_squares;
  if (s == "nnls") return FitMethod::nnls;
  throw std::invalid_argument("fit method must be 'least_squares' or 'nnls', got '" + s + "'");
}
std::string to_string(FitMethod m) { return m == FitMethod::nnls ? "nnls" : "least_squares"; }

double edge_energy(const std::vector<double>& e, const Eigen::VectorXd& mu) {
  const auto n = static_cast<Eigen::Index>(e.size());
  if (n < 3) return e.empty() ? 0.0 : e[e.size() / 2];
  double best = -INFINITY, e0 = e[0];
  for (Eigen::Index j = 1; j + 1 < n; ++j) {
    const double de = e[j + 1] - e[j - 1];
    if (de <= 0) continue;
    const double d = (mu(j + 1) - mu(j - 1)) / de;
    if (d > best) best = d, e0 = e[j];
  }
  return e0;
}

LcfModel make_lcf_model(const std::vector<std::string>& names, const Eigen::MatrixXd& refs,
                        const std::vector<double>& energies_eV, bool background) {
  if (refs.cols() != static_cast<Eigen::Index>(names.size()) ||
      refs.rows() != static_cast<Eigen::Index>(energies_eV.size()))
    throw std::invalid_argument("make_lcf_model: references must be E×K with K names");
  LcfModel m;
  m.reference_names = names;
  m.background = background;
  m.e0_eV = edge_energy(energies_eV, refs.rowwise().mean());
  const auto E = refs.rows();
  m.X.resize(E, m.n_background() + refs.cols());
  for (Eigen::Index j = 0; j < E; ++j) {
    if (background) {
      m.X(j, 0) = 1.0;
      m.X(j, 1) = (energies_eV[static_cast<std::size_t>(j)] - m.e0_eV) / m.slope_scale_eV;
    }
    m.X.row(j).tail(refs.cols()) = refs.row(j);
  }
  return m;
}

double chi_squared(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, const Eigen::VectorXd& theta) {
  return std::max(0.0, q - 2.0 * theta.dot(s) + theta.dot(G * theta));
}

namespace {

// Solves G_PP x_P = s_P for the passive set P. Returns false if G_PP is numerically singular.
bool solve_subset(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, const std::vector<int>& P,
                  Eigen::VectorXd& x) {
  const auto n = static_cast<Eigen::Index>(P.size());
  x.setZero(G.rows());
  if (n == 0) return true;
  Eigen::MatrixXd A(n, n);
  Eigen::VectorXd b(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    b(i) = s(P[i]);
    for (Eigen::Index j = 0; j < n; ++j) A(i, j) = G(P[i], P[j]);
  }
  Eigen::LDLT<Eigen::MatrixXd> ldlt(A);
  const auto d = ldlt.vectorD().cwiseAbs();
  if (ldlt.info() != Eigen::Success || d.minCoeff() <= 1e-12 * std::max(d.maxCoeff(), 1e-300)) return false;
  const Eigen::VectorXd z = ldlt.solve(b);
  for (Eigen::Index i = 0; i < n; ++i) x(P[i]) = z(i);
  return true;
}

}  // namespace

FitResult solve_least_squares(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q) {
  FitResult r;
  std::vector<int> all(static_cast<std::size_t>(G.rows()));
  for (int i = 0; i < static_cast<int>(all.size()); ++i) all[static_cast<std::size_t>(i)] = i;
  r.ok = solve_subset(G, s, all, r.theta);
  r.chi2 = r.ok ? chi_squared(G, s, q, r.theta) : 0.0;
  return r;
}

FitResult solve_nnls(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free) {
  const int M = static_cast<int>(G.rows());
  FitResult r;
  std::vector<char> passive(static_cast<std::size_t>(M), 0);
  for (int i = 0; i < n_free; ++i) passive[static_cast<std::size_t>(i)] = 1;
  auto passive_list = [&] {
    std::vector<int> P;
    for (int i = 0; i < M; ++i)
      if (passive[static_cast<std::size_t>(i)]) P.push_back(i);
    return P;
  };
  Eigen::VectorXd x, z;
  if (!solve_subset(G, s, passive_list(), x)) return r;  // background alone undetermined
  const double tol = 1e-12 * std::max(1.0, G.diagonal().maxCoeff());
  for (int outer = 0; outer < 3 * M; ++outer) {
    const Eigen::VectorXd w = s - G * x;  // −gradient of ½θᵀGθ − sᵀθ
    int best = -1;
    double wmax = tol;
    for (int j = n_free; j < M; ++j)
      if (!passive[static_cast<std::size_t>(j)] && w(j) > wmax) wmax = w(j), best = j;
    if (best < 0) break;  // KKT conditions hold
    passive[static_cast<std::size_t>(best)] = 1;
    for (int inner = 0; inner < 3 * M; ++inner) {
      if (!solve_subset(G, s, passive_list(), z)) {
        passive[static_cast<std::size_t>(best)] = 0;  // the new column is dependent: keep x
        z = x;
        break;
      }
      double alpha = 1.0;
      bool feasible = true;
      for (int j = n_free; j < M; ++j) {
        if (passive[static_cast<std::size_t>(j)] && z(j) <= 0) {
          feasible = false;
          const double denom = x(j) - z(j);
          if (denom > 0) alpha = std::min(alpha, x(j) / denom);
        }
      }
      if (feasible) break;
      x += alpha * (z - x);
      for (int j = n_free; j < M; ++j)
        if (passive[static_cast<std::size_t>(j)] && x(j) <= tol) passive[static_cast<std::size_t>(j)] = 0, x(j) = 0;
    }
    x = z;
    for (int j = n_free; j < M; ++j) x(j) = std::max(0.0, x(j));
  }
  r.theta = x;
  r.ok = true;
  r.chi2 = chi_squared(G, s, q, x);
  return r;
}

}  // namespace xanesd::science
