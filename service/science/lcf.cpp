#include "science/lcf.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace xanesd::science {

FitMethod fit_method_from_string(const std::string& s) {
  if (s == "least_squares") return FitMethod::least_squares;
  if (s == "nnls") return FitMethod::nnls;
  if (s == "lasso") return FitMethod::lasso;
  throw std::invalid_argument("fit method must be 'least_squares', 'nnls' or 'lasso', got '" + s + "'");
}
std::string to_string(FitMethod m) {
  switch (m) {
    case FitMethod::least_squares: return "least_squares";
    case FitMethod::nnls: return "nnls";
    case FitMethod::lasso: return "lasso";
  }
  return "?";
}

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

double chi_squared(const Eigen::MatrixXd& G, const Eigen::Ref<const Eigen::VectorXd>& s, double q,
                   const Eigen::Ref<const Eigen::VectorXd>& theta) {
  return std::max(0.0, q - 2.0 * theta.dot(s) + theta.dot(G * theta));
}

namespace {

// The small solvers' vectors and matrices, at most Max × Max (Eigen::Dynamic: any size). The
// reference selection solves thousands of tile problems of some 13 parameters in a finish: with
// heap-allocated temporaries (a passive list, A, b, the LDLT, x, z, w at every step) malloc and
// free took more of it than the arithmetic. Problems up to kSmallSolve parameters live on the
// stack; larger ones take the same code with heap storage.
constexpr int kSmallSolve = 16;
template <int Max> using SmallMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, 0, Max, Max>;
template <int Max> using SmallVector = Eigen::Matrix<double, Eigen::Dynamic, 1, 0, Max, 1>;
template <int Max> using SmallIndex = Eigen::Matrix<int, Eigen::Dynamic, 1, 0, Max, 1>;

// Solves G_PP x_P = s_P for the passive set P (flags per parameter). Returns false if G_PP is
// numerically singular.
template <int Max>
bool solve_subset(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, const SmallIndex<Max>& passive,
                  SmallVector<Max>& x) {
  const auto M = G.rows();
  x.setZero(M);
  SmallIndex<Max> P(M);
  Eigen::Index n = 0;
  for (Eigen::Index i = 0; i < M; ++i)
    if (passive(i)) P(n++) = static_cast<int>(i);
  if (n == 0) return true;
  SmallMatrix<Max> A(n, n);
  SmallVector<Max> b(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    b(i) = s(P(i));
    for (Eigen::Index j = 0; j < n; ++j) A(i, j) = G(P(i), P(j));
  }
  Eigen::LDLT<SmallMatrix<Max>> ldlt(A);
  const auto d = ldlt.vectorD().cwiseAbs();
  if (ldlt.info() != Eigen::Success || d.minCoeff() <= 1e-12 * std::max(d.maxCoeff(), 1e-300)) return false;
  const SmallVector<Max> z = ldlt.solve(b);
  for (Eigen::Index i = 0; i < n; ++i) x(P(i)) = z(i);
  return true;
}

template <int Max>
FitResult least_squares_as(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q) {
  FitResult r;
  SmallVector<Max> x;
  r.ok = solve_subset<Max>(G, s, SmallIndex<Max>::Ones(G.rows()), x);
  r.theta = x;
  r.chi2 = r.ok ? chi_squared(G, s, q, r.theta) : 0.0;
  return r;
}

template <int Max>
FitResult nnls_as(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free) {
  const int M = static_cast<int>(G.rows());
  FitResult r;
  SmallVector<Max> x, z, w;
  SmallIndex<Max> passive = SmallIndex<Max>::Zero(M);
  for (int i = 0; i < n_free; ++i) passive(i) = 1;
  if (!solve_subset<Max>(G, s, passive, x)) return r;  // background alone undetermined
  for (int outer = 0; outer < 3 * M; ++outer) {
    w.noalias() = s - G * x;  // −gradient of ½θᵀGθ − sᵀθ
    int best = -1;
    double wmax = 0;
    for (int j = n_free; j < M; ++j)
      if (!passive(j) && w(j) > NnlsTolerance::gradient(G, j, q) && w(j) > wmax) wmax = w(j), best = j;
    if (best < 0) break;  // KKT conditions hold
    passive(best) = 1;
    for (int inner = 0; inner < 3 * M; ++inner) {
      if (!solve_subset<Max>(G, s, passive, z)) {
        passive(best) = 0;  // the new column is dependent: keep x
        z = x;
        break;
      }
      double alpha = 1.0;
      bool feasible = true;
      for (int j = n_free; j < M; ++j) {
        if (passive(j) && z(j) <= 0) {
          feasible = false;
          const double denom = x(j) - z(j);
          if (denom > 0) alpha = std::min(alpha, x(j) / denom);
        }
      }
      if (feasible) break;
      x += alpha * (z - x);
      for (int j = n_free; j < M; ++j)
        if (passive(j) && x(j) <= NnlsTolerance::coefficient(G, j, q)) passive(j) = 0, x(j) = 0;
    }
    x = z;
    for (int j = n_free; j < M; ++j) x(j) = std::max(0.0, x(j));
  }
  r.theta = x;
  r.ok = true;
  r.chi2 = chi_squared(G, s, q, r.theta);
  return r;
}

}  // namespace

FitResult solve_least_squares(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q) {
  return G.rows() <= kSmallSolve ? least_squares_as<kSmallSolve>(G, s, q) : least_squares_as<Eigen::Dynamic>(G, s, q);
}

FitResult solve_nnls(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free) {
  return G.rows() <= kSmallSolve ? nnls_as<kSmallSolve>(G, s, q, n_free) : nnls_as<Eigen::Dynamic>(G, s, q, n_free);
}

FitResult solve_lasso(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, double q, int n_free, double alpha,
                      Eigen::VectorXd theta) {
  const int M = static_cast<int>(G.rows());
  FitResult r;
  Eigen::VectorXd Gt = G * theta;
  const double scale = std::sqrt(std::max(q, 1e-300));
  for (int sweep = 0; sweep < 1000; ++sweep) {
    double biggest = 0;
    for (int j = 0; j < M; ++j) {
      const double gjj = G(j, j);
      if (!(gjj > 0)) continue;
      const double rho = s(j) - Gt(j) + gjj * theta(j);
      const double next = j < n_free ? rho / gjj : std::max(0.0, (rho - alpha) / gjj);
      const double delta = next - theta(j);
      if (delta != 0) {
        theta(j) = next;
        Gt += G.col(j) * delta;
        biggest = std::max(biggest, std::abs(delta) * std::sqrt(gjj));
      }
    }
    if (biggest < 1e-10 * scale) break;
  }
  r.theta = std::move(theta);
  r.ok = true;
  r.chi2 = chi_squared(G, s, q, r.theta);
  return r;
}

namespace {

// The problem restricted to parameters `idx` (the others fixed at 0).
void restrict_to(const Eigen::MatrixXd& G, const Eigen::VectorXd& s, const std::vector<int>& idx, Eigen::MatrixXd& Gs,
                 Eigen::VectorXd& ss) {
  const auto n = static_cast<Eigen::Index>(idx.size());
  Gs.resize(n, n);
  ss.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    ss(i) = s(idx[i]);
    for (Eigen::Index j = 0; j < n; ++j) Gs(i, j) = G(idx[i], idx[j]);
  }
}

// cov(θ) = σ²·(G_AA)⁻¹ on the active set A, with σ² = χ²/(n − |A|).
void add_covariance(const Eigen::MatrixXd& G, int n, FitResult& r, int n_free) {
  const int M = static_cast<int>(G.rows());
  std::vector<int> active;
  for (int j = 0; j < M; ++j)
    if (j < n_free || r.theta(j) != 0) active.push_back(j);
  r.n_active = static_cast<int>(active.size());
  r.cov = Eigen::MatrixXd::Zero(M, M);
  const int dof = n - r.n_active;
  if (dof <= 0) return;
  Eigen::MatrixXd Ga;
  Eigen::VectorXd unused;
  restrict_to(G, Eigen::VectorXd::Zero(M), active, Ga, unused);
  Eigen::LDLT<Eigen::MatrixXd> ldlt(Ga);
  if (ldlt.info() != Eigen::Success) return;
  const Eigen::MatrixXd inv = ldlt.solve(Eigen::MatrixXd::Identity(Ga.rows(), Ga.cols()));
  const double sigma2 = r.chi2 / dof;
  for (std::size_t i = 0; i < active.size(); ++i)
    for (std::size_t j = 0; j < active.size(); ++j)
      r.cov(active[i], active[j]) = sigma2 * inv(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j));
}

}  // namespace

FitResult solve(const Eigen::MatrixXd& G0, const Eigen::VectorXd& s0, double q, int n, const SolveOptions& opt) {
  const int M = static_cast<int>(G0.rows());
  // Sum-to-one as a stiff penalty λ(Σc − 1)²: one mechanism for every solver, exact to ~1e-9.
  Eigen::MatrixXd G = G0;
  Eigen::VectorXd s = s0;
  double qa = q;
  if (opt.sum_to_one) {
    const double lambda = 1e9 * std::max(G0.diagonal().maxCoeff(), 1e-300);
    Eigen::VectorXd a = Eigen::VectorXd::Zero(M);
    a.tail(M - opt.n_free).setOnes();
    G += lambda * a * a.transpose();
    s += lambda * a;
    qa += lambda;
  }
  FitResult r;
  switch (opt.method) {
    case FitMethod::least_squares: r = solve_least_squares(G, s, qa); break;
    case FitMethod::nnls: r = solve_nnls(G, s, qa, opt.n_free); break;
    case FitMethod::lasso: {
      const auto start = solve_nnls(G, s, qa, opt.n_free);
      if (!start.ok) return start;
      const double thickness = std::max(start.theta.tail(M - opt.n_free).sum(), 1e-12);
      // α per point: the number of points is Σw (the constant column's G₀₀) when the fit is
      // weighted, so the penalty scales with the data and the weights as the misfit does.
      const double points = opt.n_free > 0 ? G0(0, 0) : static_cast<double>(n);
      r = solve_lasso(G, s, qa, opt.n_free, opt.lasso_alpha * points * thickness, start.theta);
      if (opt.lasso_refit) {
        std::vector<int> keep;
        for (int j = 0; j < M; ++j)
          if (j < opt.n_free || r.theta(j) > 0) keep.push_back(j);
        Eigen::MatrixXd Gs;
        Eigen::VectorXd ss;
        restrict_to(G, s, keep, Gs, ss);
        const auto refit = solve_nnls(Gs, ss, qa, opt.n_free);
        if (refit.ok) {
          r.theta.setZero();
          for (std::size_t i = 0; i < keep.size(); ++i) r.theta(keep[i]) = refit.theta(static_cast<Eigen::Index>(i));
        }
      }
      break;
    }
  }
  if (!r.ok) return r;
  r.chi2 = chi_squared(G0, s0, q, r.theta);  // misfit of the data, without the penalty row
  add_covariance(G, n, r, opt.n_free);
  return r;
}

Eigen::VectorXd fraction_sigma(const FitResult& r, int n_free) {
  const auto M = r.theta.size(), K = M - n_free;
  Eigen::VectorXd out = Eigen::VectorXd::Zero(K);
  if (r.cov.rows() != M) return out;
  const auto c = r.theta.tail(K);
  const double T = c.sum();
  if (!(std::abs(T) > 1e-12)) return out;
  // J_kj = ∂f_k/∂c_j = (δ_kj − f_k)/T
  Eigen::MatrixXd J = -(c / T) * Eigen::RowVectorXd::Ones(K) / T;
  J.diagonal().array() += 1.0 / T;
  const Eigen::MatrixXd C = r.cov.bottomRightCorner(K, K);
  out = (J * C * J.transpose()).diagonal().cwiseMax(0.0).cwiseSqrt();
  return out;
}

}  // namespace xanesd::science
