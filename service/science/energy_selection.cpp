#include "science/energy_selection.hpp"

#include "science/random.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <random>
#include <stdexcept>

namespace xanesd::science {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }


// Independent streams for the training and the test mixtures from one user seed.
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void check_grid_and_refs(const Eigen::MatrixXd& refs, const std::vector<double>& grid_eV) {
  if (refs.rows() == 0 || refs.cols() == 0) throw std::invalid_argument("energy selection: the reference matrix is empty");
  if (refs.rows() != static_cast<Eigen::Index>(grid_eV.size()))
    throw std::invalid_argument("energy selection: references have " + std::to_string(refs.rows()) +
                                " rows but the candidate grid has " + std::to_string(grid_eV.size()) + " energies");
  if (!refs.allFinite()) throw std::invalid_argument("energy selection: the references contain NaN or infinite values");
  for (std::size_t j = 0; j < grid_eV.size(); ++j) {
    if (!std::isfinite(grid_eV[j])) throw std::invalid_argument("energy selection: the candidate grid has a non-finite energy");
    if (j > 0 && !(grid_eV[j] > grid_eV[j - 1]))
      throw std::invalid_argument("energy selection: the candidate grid must be strictly increasing (energy " +
                                  std::to_string(j) + " is not above the one before)");
  }
}

// Rows `idx` of X.
Eigen::MatrixXd rows_of(const Eigen::MatrixXd& X, const std::vector<int>& idx) {
  Eigen::MatrixXd out(static_cast<Eigen::Index>(idx.size()), X.cols());
  for (std::size_t i = 0; i < idx.size(); ++i) out.row(static_cast<Eigen::Index>(i)) = X.row(idx[i]);
  return out;
}

std::vector<int> sorted_union(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end());
  a.erase(std::unique(a.begin(), a.end()), a.end());
  return a;
}

// Candidates 0..E−1 not in `keep`; throws if fewer than n_select remain.
std::vector<int> eliminable(int E, const std::vector<int>& keep, int n_select, const char* who) {
  std::vector<char> kept(static_cast<std::size_t>(E), 0);
  for (int k : keep) {
    if (k < 0 || k >= E) throw std::invalid_argument(std::string(who) + ": kept index " + std::to_string(k) + " is outside the grid");
    kept[static_cast<std::size_t>(k)] = 1;
  }
  std::vector<int> out;
  for (int j = 0; j < E; ++j)
    if (!kept[static_cast<std::size_t>(j)]) out.push_back(j);
  if (n_select < 1 || n_select > static_cast<int>(out.size()))
    throw std::invalid_argument(std::string(who) + ": cannot select " + std::to_string(n_select) + " energies out of the " +
                                std::to_string(out.size()) + " candidates left besides the normalization points");
  return out;
}

}  // namespace

Mixtures make_mixtures(const LcfModel& model, int n, const EnergySelectionOptions& opt, std::uint64_t seed) {
  if (n < 1) throw std::invalid_argument("make_mixtures: need at least one mixture, got " + std::to_string(n));
  if (!(opt.noise >= 0) || !std::isfinite(opt.noise)) throw std::invalid_argument("make_mixtures: noise must be finite and ≥ 0");
  if (!(opt.sparse_share >= 0 && opt.sparse_share <= 1)) throw std::invalid_argument("make_mixtures: sparse_share must be in [0, 1]");
  const int K = model.n_refs(), B = model.n_background(), E = static_cast<int>(model.X.rows());
  Rng rng(seed);
  Mixtures m;
  m.fractions = Eigen::MatrixXd::Zero(n, K);
  Eigen::MatrixXd theta = Eigen::MatrixXd::Zero(model.n_params(), n);  // [a, b, T·f] per mixture
  std::vector<int> order(static_cast<std::size_t>(K));
  for (int i = 0; i < n; ++i) {
    auto f = m.fractions.row(i);
    if (rng.uniform() < opt.sparse_share) {
      // 1–3 distinct references by a partial Fisher–Yates shuffle
      const int nz = std::min(K, 1 + rng.below(3));
      for (int k = 0; k < K; ++k) order[static_cast<std::size_t>(k)] = k;
      for (int j = 0; j < nz; ++j) {
        std::swap(order[static_cast<std::size_t>(j)], order[static_cast<std::size_t>(j + rng.below(K - j))]);
        f(order[static_cast<std::size_t>(j)]) = rng.exponential();
      }
    } else {
      for (int k = 0; k < K; ++k) f(k) = rng.exponential();
    }
    // Normalized exponentials are uniform on the simplex (Dirichlet(1, …, 1)).
    const double sum = f.sum();
    if (sum > 0) f /= sum;
    else f.setConstant(1.0 / K);  // all draws exactly 0: cannot happen with −log1p(−u), u < 1, but stay on the simplex
    const double thickness = rng.uniform(0.8, 1.2);
    if (B == 2) theta(0, i) = rng.uniform(-0.05, 0.05), theta(1, i) = rng.uniform(-0.05, 0.05);
    theta.col(i).tail(K) = thickness * f.transpose();
  }
  m.spectra = (model.X * theta).transpose();
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < E; ++j) m.spectra(i, j) += opt.noise * rng.normal();
  return m;
}

std::vector<int> normalization_points(const std::vector<double>& grid_eV, const Eigen::MatrixXd& refs, int n) {
  check_grid_and_refs(refs, grid_eV);
  if (n < 0) throw std::invalid_argument("normalization points: the count must be ≥ 0, got " + std::to_string(n));
  if (n == 0) return {};
  const int E = static_cast<int>(grid_eV.size());
  const double e0 = edge_energy(grid_eV, refs.rowwise().mean());
  const double first = grid_eV.front(), last = grid_eV.back();
  const int n_post = n >= 2 ? std::max(1, n / 3) : 0, n_pre = n - n_post;
  std::vector<int> pre, post;
  for (int j = 0; j < E; ++j) {
    if (grid_eV[static_cast<std::size_t>(j)] <= e0 - (e0 - first) / 2) pre.push_back(j);
    if (grid_eV[static_cast<std::size_t>(j)] >= e0 + (last - e0) / 2) post.push_back(j);
  }
  auto fail = [&](const char* side, std::size_t have, int need) {
    throw std::invalid_argument("normalization points: " + std::to_string(need) + " " + side + "-edge point(s) asked for, but the grid has only " +
                                std::to_string(have) + " in the " + side + "-edge range (E0 = " + std::to_string(e0) + " eV)");
  };
  if (static_cast<int>(pre.size()) < n_pre) fail("pre", pre.size(), n_pre);
  if (static_cast<int>(post.size()) < n_post) fail("post", post.size(), n_post);
  // Evenly spread targets from the outer end of the range inwards, each snapped to the nearest
  // grid point of the range not taken yet.
  std::vector<int> out;
  auto pick = [&](const std::vector<int>& range, int count, bool from_low) {
    const double outer = grid_eV[static_cast<std::size_t>(from_low ? range.front() : range.back())];
    const double inner = grid_eV[static_cast<std::size_t>(from_low ? range.back() : range.front())];
    std::vector<char> used(range.size(), 0);
    for (int i = 0; i < count; ++i) {
      const double target = count == 1 ? outer : outer + (inner - outer) * i / (count - 1);
      std::size_t best = 0;
      double dist = std::numeric_limits<double>::infinity();
      for (std::size_t r = 0; r < range.size(); ++r) {
        const double d = std::abs(grid_eV[static_cast<std::size_t>(range[r])] - target);
        if (!used[r] && d < dist) dist = d, best = r;
      }
      used[best] = 1;
      out.push_back(range[best]);
    }
  };
  pick(pre, n_pre, true);
  pick(post, n_post, false);
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end())  // the two ranges overlap on a tiny grid
    throw std::invalid_argument("normalization points: the grid is too small to hold " + std::to_string(n) + " distinct ones");
  return out;
}

std::vector<int> rfe_select(const Mixtures& train, const std::vector<int>& keep, int n_select) {
  const auto N = train.spectra.rows();
  const int E = static_cast<int>(train.spectra.cols());
  if (N < 2 || train.fractions.rows() != N) throw std::invalid_argument("rfe_select: need ≥ 2 training mixtures with one fraction row each");
  const std::vector<int> cand = eliminable(E, keep, n_select, "rfe_select");
  const auto F = static_cast<Eigen::Index>(cand.size());

  // Standardized features and centred targets: the intercept then decouples, and |coef| on
  // standardized features compares energies whose spectra vary by very different amounts.
  Eigen::MatrixXd Z = rows_of(train.spectra.transpose(), cand).transpose();  // N × F
  const Eigen::RowVectorXd mean = Z.colwise().mean();
  Z.rowwise() -= mean;
  for (Eigen::Index j = 0; j < F; ++j) {
    const double sd = std::sqrt(Z.col(j).squaredNorm() / static_cast<double>(N));
    if (sd > 0) Z.col(j) /= sd;  // a constant feature stays 0: its coefficient is 0 and it goes first
  }
  const Eigen::MatrixXd Yc = train.fractions.rowwise() - train.fractions.colwise().mean();
  // Every refit is a sub-block of the same normal equations: form them once.
  const Eigen::MatrixXd C = Z.transpose() * Z;   // F × F
  const Eigen::MatrixXd R = Z.transpose() * Yc;  // F × K
  const double ridge = 1e-8 * static_cast<double>(N);

  std::vector<int> active(static_cast<std::size_t>(F));  // positions into cand
  for (int j = 0; j < F; ++j) active[static_cast<std::size_t>(j)] = j;
  while (static_cast<int>(active.size()) > n_select) {
    const auto A = static_cast<Eigen::Index>(active.size());
    Eigen::MatrixXd Ca(A, A), Ra(A, R.cols());
    for (Eigen::Index i = 0; i < A; ++i) {
      Ra.row(i) = R.row(active[static_cast<std::size_t>(i)]);
      for (Eigen::Index j = 0; j < A; ++j) Ca(i, j) = C(active[static_cast<std::size_t>(i)], active[static_cast<std::size_t>(j)]);
    }
    Ca.diagonal().array() += ridge;
    const Eigen::MatrixXd W = Ca.ldlt().solve(Ra);  // A × K coefficients
    const Eigen::VectorXd importance = W.cwiseAbs().rowwise().sum();
    Eigen::Index worst = 0;
    importance.minCoeff(&worst);  // first minimum on ties: deterministic
    active.erase(active.begin() + worst);
  }
  std::vector<int> chosen;
  for (int a : active) chosen.push_back(cand[static_cast<std::size_t>(a)]);
  return sorted_union(chosen, keep);
}

std::vector<int> a_optimal_select(const LcfModel& model, const std::vector<int>& keep, int n_select, double ridge) {
  const int E = static_cast<int>(model.X.rows()), M = model.n_params(), B = model.n_background();
  if (!(ridge >= 0) || !std::isfinite(ridge)) throw std::invalid_argument("a_optimal_select: ridge must be finite and ≥ 0");
  (void)eliminable(E, keep, n_select, "a_optimal_select");
  std::vector<char> is_kept(static_cast<std::size_t>(E), 0);
  for (int k : keep) is_kept[static_cast<std::size_t>(k)] = 1;
  std::vector<int> S(static_cast<std::size_t>(E));
  for (int j = 0; j < E; ++j) S[static_cast<std::size_t>(j)] = j;
  const int target = n_select + static_cast<int>(std::count(is_kept.begin(), is_kept.end(), 1));
  const Eigen::MatrixXd Ridge = ridge * Eigen::MatrixXd::Identity(M, M);
  while (static_cast<int>(S.size()) > target) {
    const Eigen::MatrixXd Xs = rows_of(model.X, S);  // |S| × M
    // A fresh inverse each step (M ≤ ~70: cheap, and no drift from chained downdates); the
    // candidates are scored with the rank-one downdate formula: removing row x gives
    // A' = A + A x xᵀ A / (1 − xᵀ A x), so tr_F(A') = tr_F(A) + ‖(A x)_F‖² / (1 − xᵀ A x).
    const Eigen::MatrixXd A = (Xs.transpose() * Xs + Ridge).ldlt().solve(Eigen::MatrixXd::Identity(M, M));
    const Eigen::MatrixXd U = A * Xs.transpose();                                   // M × |S|
    const Eigen::VectorXd h = (Xs.transpose().cwiseProduct(U)).colwise().sum();     // leverages
    const Eigen::VectorXd gain = U.bottomRows(M - B).colwise().squaredNorm();
    int worst = -1;
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < S.size(); ++i) {
      if (is_kept[static_cast<std::size_t>(S[i])]) continue;
      const auto ii = static_cast<Eigen::Index>(i);
      const double denom = 1.0 - h(ii);
      // denom → 0: removing this energy would make the design singular (criterion infinite).
      const double score = denom > 1e-12 ? gain(ii) / denom : std::numeric_limits<double>::infinity();
      if (score < best || worst < 0) best = score, worst = static_cast<int>(i);
    }
    S.erase(S.begin() + worst);
  }
  return S;  // ascending, keep included
}

double fraction_rmse(const LcfModel& model, const std::vector<int>& indices, const Mixtures& test, int* failed) {
  const int K = model.n_refs(), B = model.n_background();
  if (indices.empty()) throw std::invalid_argument("fraction_rmse: no energies to fit on");
  if (test.spectra.cols() != model.X.rows() || test.fractions.cols() != K)
    throw std::invalid_argument("fraction_rmse: mixtures do not match the model's grid or references");
  for (std::size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= model.X.rows())
      throw std::invalid_argument("fraction_rmse: energy index " + std::to_string(indices[i]) + " outside the grid");
    if (i > 0 && indices[i] <= indices[i - 1])  // a repeated energy would count twice in the fit
      throw std::invalid_argument("fraction_rmse: energy indices must be strictly increasing");
  }
  // The fit on a subset uses the full-grid model's rows: its background columns are centred at
  // the full grid's E0, not the subset's, but a + b(E − E0) spans the same functions for any E0,
  // so the fitted fractions are those make_lcf_model on the subset would give.
  const Eigen::MatrixXd Xs = rows_of(model.X, indices);
  const Eigen::MatrixXd Ys = rows_of(test.spectra.transpose(), indices);  // |S| × N
  const Eigen::MatrixXd G = Xs.transpose() * Xs;
  const Eigen::MatrixXd Sx = Xs.transpose() * Ys;  // M × N
  SolveOptions opt;  // the daemon's default fit: NNLS, background free
  opt.method = FitMethod::nnls;
  opt.n_free = B;
  double sse = 0;
  int bad = 0;
  const auto N = test.spectra.rows();
  for (Eigen::Index i = 0; i < N; ++i) {
    const auto r = solve(G, Sx.col(i), Ys.col(i).squaredNorm(), static_cast<int>(indices.size()), opt);
    Eigen::VectorXd f = Eigen::VectorXd::Constant(K, 1.0 / K);
    const double T = r.ok ? r.theta.tail(K).sum() : 0.0;
    if (T > 0) f = r.theta.tail(K) / T;
    else ++bad;
    sse += (f - test.fractions.row(i).transpose()).squaredNorm();
  }
  if (failed) *failed = bad;
  return std::sqrt(sse / (static_cast<double>(N) * K));
}

EnergySelection select_energies(const std::vector<std::string>& names, const Eigen::MatrixXd& refs,
                                const std::vector<double>& grid_eV, const EnergySelectionOptions& opt) {
  check_grid_and_refs(refs, grid_eV);
  if (refs.cols() != static_cast<Eigen::Index>(names.size()))
    throw std::invalid_argument("energy selection: " + std::to_string(names.size()) + " reference names for " +
                                std::to_string(refs.cols()) + " reference columns");
  const int E = static_cast<int>(grid_eV.size());
  if (opt.n_select < 1) throw std::invalid_argument("energy selection: n_select must be ≥ 1, got " + std::to_string(opt.n_select));
  if (opt.n_normalization < 0)
    throw std::invalid_argument("energy selection: n_normalization must be ≥ 0, got " + std::to_string(opt.n_normalization));
  if (opt.n_select + opt.n_normalization > E)
    throw std::invalid_argument("energy selection: n_select + n_normalization = " +
                                std::to_string(opt.n_select + opt.n_normalization) + " is more than the " +
                                std::to_string(E) + " energies of the candidate grid");
  if (opt.n_train < 2) throw std::invalid_argument("energy selection: n_train must be ≥ 2, got " + std::to_string(opt.n_train));
  if (opt.n_test < 1) throw std::invalid_argument("energy selection: n_test must be ≥ 1, got " + std::to_string(opt.n_test));

  const LcfModel model = make_lcf_model(names, refs, grid_eV, opt.background);
  const std::vector<int> norm = normalization_points(grid_eV, refs, opt.n_normalization);
  const Mixtures train = make_mixtures(model, opt.n_train, opt, splitmix64(opt.seed));
  const Mixtures test = make_mixtures(model, opt.n_test, opt, splitmix64(opt.seed ^ 0x7E57'7E57'7E57'7E57ull));

  auto finish = [&](EnergySubset& s, const char* method) {
    s.method = method;
    s.normalization_indices = norm;
    for (int j : s.indices) s.energies_eV.push_back(grid_eV[static_cast<std::size_t>(j)]);
    s.fraction_rmse = fraction_rmse(model, s.indices, test);
  };
  EnergySelection out;
  auto t0 = Clock::now();
  out.rfe.indices = rfe_select(train, norm, opt.n_select);
  out.rfe.seconds = seconds_since(t0);
  finish(out.rfe, "rfe");
  t0 = Clock::now();
  // λ = noise² (see a_optimal_select); a floor keeps it defined for noise-free mixtures.
  out.a_optimal.indices = a_optimal_select(model, norm, opt.n_select, std::max(opt.noise * opt.noise, 1e-8));
  out.a_optimal.seconds = seconds_since(t0);
  finish(out.a_optimal, "a_optimal");

  std::vector<int> all(static_cast<std::size_t>(E));
  for (int j = 0; j < E; ++j) all[static_cast<std::size_t>(j)] = j;
  out.full_grid_fraction_rmse = fraction_rmse(model, all, test);
  out.best = out.a_optimal.fraction_rmse < out.rfe.fraction_rmse ? "a_optimal" : "rfe";
  return out;
}

}  // namespace xanesd::science
