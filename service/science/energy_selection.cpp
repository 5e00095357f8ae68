#include "science/energy_selection.hpp"

#include "science/cancel.hpp"
#include "science/random.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>
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
    if (i % 1024 == 0) throw_if_cancelled();
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
  for (int i = 0; i < n; ++i) {
    if (i % 1024 == 0) throw_if_cancelled();
    for (int j = 0; j < E; ++j) m.spectra(i, j) += opt.noise * rng.normal();
  }
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
  throw_if_cancelled();
  Eigen::MatrixXd Z = rows_of(train.spectra.transpose(), cand).transpose();  // N × F
  const Eigen::RowVectorXd mean = Z.colwise().mean();
  Z.rowwise() -= mean;
  for (Eigen::Index j = 0; j < F; ++j) {
    const double sd = std::sqrt(Z.col(j).squaredNorm() / static_cast<double>(N));
    if (sd > 0) Z.col(j) /= sd;  // a constant feature stays 0: its coefficient is 0 and it goes first
  }
  const Eigen::MatrixXd Yc = train.fractions.rowwise() - train.fractions.colwise().mean();
  // Every refit is a sub-block of the same normal equations: form them once (one product, not
  // cancellable midway: the longest step without a cancellation check).
  throw_if_cancelled();
  const Eigen::MatrixXd C = Z.transpose() * Z;   // F × F
  const Eigen::MatrixXd R = Z.transpose() * Yc;  // F × K
  const double ridge = 1e-8 * static_cast<double>(N);

  std::vector<int> active(static_cast<std::size_t>(F));  // positions into cand
  for (int j = 0; j < F; ++j) active[static_cast<std::size_t>(j)] = j;
  while (static_cast<int>(active.size()) > n_select) {
    throw_if_cancelled();  // each refit is O(A³): 1,600 candidates took 80 s in all
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
    throw_if_cancelled();
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
    if (i % 1024 == 0) throw_if_cancelled();
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


// ---- equal beam time ---------------------------------------------------------------------------

Eigen::VectorXd variance_profile(const Eigen::VectorXd& expected, const DwellOptions& o) {
  if (!o.poisson) return Eigen::VectorXd::Ones(expected.size());
  if (!(o.variance_floor > 0) || !std::isfinite(o.variance_floor))
    throw std::invalid_argument("dwell design: the variance floor must be > 0 with Poisson variances");
  if (!expected.allFinite()) throw std::invalid_argument("dwell design: the expected spectrum has NaN or infinite values");
  return expected.cwiseMax(o.variance_floor);
}

Eigen::MatrixXd default_compositions(int K) {
  Eigen::MatrixXd c(K + 1, K);
  c.topRows(K).setIdentity();
  c.row(K).setConstant(1.0 / K);
  return c;
}

Eigen::MatrixXd fraction_weight_matrix(int n_background, const Eigen::MatrixXd& compositions) {
  const auto K = compositions.cols(), N = compositions.rows();
  if (K < 1 || N < 1) throw std::invalid_argument("fraction_weight_matrix: no compositions");
  const auto M = n_background + K;
  Eigen::MatrixXd Q = Eigen::MatrixXd::Zero(M, M);
  for (Eigen::Index i = 0; i < N; ++i) {
    Eigen::MatrixXd J = Eigen::MatrixXd::Zero(K, M);
    J.rightCols(K) = Eigen::MatrixXd::Identity(K, K) - compositions.row(i).transpose() * Eigen::RowVectorXd::Ones(K);
    Q += J.transpose() * J;
  }
  return Q / static_cast<double>(N);
}

namespace {

struct DwellProblem {
  Eigen::MatrixXd Xv;  // n × M: rows x_e / sqrt(v_e)
  Eigen::MatrixXd Q;
  double ridge = 0;
};

DwellProblem dwell_problem(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                           const std::vector<int>& indices, double ridge_rel) {
  const int E = static_cast<int>(model.X.rows()), M = model.n_params();
  if (variance.size() != E) throw std::invalid_argument("dwell design: the variance profile does not match the grid");
  if (Q.rows() != M || Q.cols() != M) throw std::invalid_argument("dwell design: Q does not match the model's parameters");
  DwellProblem p;
  p.Xv.resize(static_cast<Eigen::Index>(indices.size()), M);
  for (std::size_t i = 0; i < indices.size(); ++i) {
    const int e = indices[i];
    if (e < 0 || e >= E) throw std::invalid_argument("dwell design: index " + std::to_string(e) + " outside the grid");
    if (!(variance(e) > 0)) throw std::invalid_argument("dwell design: the variance profile must be > 0");
    p.Xv.row(static_cast<Eigen::Index>(i)) = model.X.row(e) / std::sqrt(variance(e));
  }
  p.Q = Q;
  // The ridge is relative to M's scale at uniform weights.
  p.ridge = ridge_rel * (p.Xv.colwise().squaredNorm().sum() / std::max<Eigen::Index>(1, p.Xv.rows()) / M);
  return p;
}

// Φ and d for weights w; false if M is singular.
bool dwell_eval(const DwellProblem& p, const Eigen::VectorXd& w, double& phi, Eigen::VectorXd* d) {
  const auto M = p.Xv.cols();
  Eigen::MatrixXd Mw = p.Xv.transpose() * w.asDiagonal() * p.Xv;
  Mw.diagonal().array() += p.ridge;
  Eigen::LLT<Eigen::MatrixXd> llt(Mw);
  if (llt.info() != Eigen::Success) return false;
  const Eigen::MatrixXd Minv = llt.solve(Eigen::MatrixXd::Identity(M, M));
  phi = (p.Q.cwiseProduct(Minv)).sum();  // tr(Q M⁻¹), both symmetric
  if (!std::isfinite(phi)) return false;
  if (d) {
    const Eigen::MatrixXd B = Minv * p.Q * Minv;
    const Eigen::MatrixXd XB = p.Xv * B;
    *d = XB.cwiseProduct(p.Xv).rowwise().sum();
  }
  return true;
}

}  // namespace

double dwell_criterion(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                       const std::vector<int>& indices, const std::vector<double>& weights) {
  if (weights.size() != indices.size()) throw std::invalid_argument("dwell_criterion: one weight per index");
  const auto p = dwell_problem(model, variance, Q, indices, 0.0);
  double phi = 0;
  const Eigen::VectorXd w = Eigen::Map<const Eigen::VectorXd>(weights.data(), static_cast<Eigen::Index>(weights.size()));
  return dwell_eval(p, w, phi, nullptr) ? phi : std::numeric_limits<double>::infinity();
}

DwellDesign optimal_dwell(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                          const std::vector<int>& indices, const std::vector<int>& keep, const DwellOptions& o,
                          const std::vector<double>& start) {
  if (indices.empty()) throw std::invalid_argument("optimal_dwell: no energies");
  const auto n = static_cast<Eigen::Index>(indices.size());
  const auto p = dwell_problem(model, variance, Q, indices, o.ridge);
  // Lower bounds (shares of the total time): every point min_weight/n, kept ones keep_min_weight/n.
  Eigen::VectorXd lb(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const bool kept = std::binary_search(keep.begin(), keep.end(), indices[static_cast<std::size_t>(i)]);
    lb(i) = std::clamp(kept ? std::max(o.keep_min_weight, o.min_weight) : o.min_weight, 0.0, 1.0) / static_cast<double>(n);
  }
  if (lb.sum() > 1.0 - 1e-9) lb *= (1.0 - 1e-9) / lb.sum();
  Eigen::VectorXd w = Eigen::VectorXd::Constant(n, 1.0 / static_cast<double>(n));
  if (start.size() == indices.size()) {
    for (Eigen::Index i = 0; i < n; ++i) w(i) = std::max(start[static_cast<std::size_t>(i)], 0.0);
    // A point at exactly 0 can never come back in a multiplicative update: give each a little.
    w = w.cwiseMax(1e-12 * w.sum());
    w /= w.sum();
  }
  std::vector<char> at_bound(static_cast<std::size_t>(n), 0);
  // Raise points below their bound to it and scale the others to the remaining time; repeat
  // (scaling down can push another below its bound).
  auto apply_bounds = [&](Eigen::VectorXd& v) {
    std::fill(at_bound.begin(), at_bound.end(), 0);
    for (int round = 0; round <= n; ++round) {
      double fixed = 0, free = 0;
      for (Eigen::Index i = 0; i < n; ++i) {
        if (at_bound[static_cast<std::size_t>(i)] || v(i) <= lb(i)) at_bound[static_cast<std::size_t>(i)] = 1, v(i) = lb(i), fixed += lb(i);
        else free += v(i);
      }
      if (free <= 0) break;
      bool again = false;
      for (Eigen::Index i = 0; i < n; ++i)
        if (!at_bound[static_cast<std::size_t>(i)]) {
          v(i) *= (1.0 - fixed) / free;
          again |= v(i) < lb(i);
        }
      if (!again) break;
    }
  };
  apply_bounds(w);
  DwellDesign out;
  out.indices = indices;
  Eigen::VectorXd d;
  double phi = 0;
  int it = 0;
  for (; it < o.max_iterations; ++it) {
    if (!dwell_eval(p, w, phi, &d)) {
      phi = std::numeric_limits<double>::infinity();
      break;
    }
    // Optimality (Kuhn–Tucker with the bounds): d_e = λ where w_e is above its bound, d_e ≤ λ
    // where it is at it; λ = Σ w d / Σ w over the points above their bounds (= Φ without bounds).
    double dmax = 0, wd = 0, wsum = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      dmax = std::max(dmax, d(i));
      if (!at_bound[static_cast<std::size_t>(i)]) wd += w(i) * d(i), wsum += w(i);
    }
    const double lambda = wsum > 0 ? wd / wsum : phi;
    if (dmax <= (1.0 + o.tolerance) * lambda) break;
    w = w.cwiseProduct(d) / lambda;
    apply_bounds(w);
  }
  if (std::isfinite(phi)) dwell_eval(p, w, phi, &d);
  out.criterion = phi;
  out.iterations = it;
  out.weights.assign(w.data(), w.data() + n);
  if (std::isfinite(phi)) out.contributions.assign(n, 0.0);
  for (Eigen::Index i = 0; std::isfinite(phi) && i < n; ++i) out.contributions[static_cast<std::size_t>(i)] = w(i) * d(i);
  return out;
}

std::vector<DwellDesign> dwell_path(const LcfModel& model, const Eigen::VectorXd& variance, const Eigen::MatrixXd& Q,
                                    const std::vector<int>& keep, int min_select, const DwellOptions& o) {
  const int E = static_cast<int>(model.X.rows());
  std::vector<int> sorted_keep = keep;
  std::sort(sorted_keep.begin(), sorted_keep.end());
  (void)eliminable(E, sorted_keep, min_select, "dwell_path");
  std::vector<int> S(static_cast<std::size_t>(E));
  for (int j = 0; j < E; ++j) S[static_cast<std::size_t>(j)] = j;
  const std::size_t target = sorted_keep.size() + static_cast<std::size_t>(min_select);
  std::vector<DwellDesign> path;
  path.push_back(optimal_dwell(model, variance, Q, S, sorted_keep, o));
  while (S.size() > target) {
    throw_if_cancelled();
    const auto& cur = path.back();
    std::size_t worst = S.size();
    for (std::size_t i = 0; i < S.size(); ++i) {
      if (std::binary_search(sorted_keep.begin(), sorted_keep.end(), S[i])) continue;
      // The least useful energy: the smallest share w_e·d_e of Σ w d (its weight, when no
      // bound is active; among energies held at a bound, the one that gains least from time).
      const auto& c = cur.contributions.empty() ? cur.weights : cur.contributions;
      if (worst == S.size() || c[i] < c[worst]) worst = i;
    }
    std::vector<double> start = cur.weights;
    S.erase(S.begin() + static_cast<std::ptrdiff_t>(worst));
    start.erase(start.begin() + static_cast<std::ptrdiff_t>(worst));
    path.push_back(optimal_dwell(model, variance, Q, S, sorted_keep, o, start));
  }
  std::reverse(path.begin(), path.end());
  return path;
}

double fraction_rmse_dwell(const LcfModel& model, const std::vector<int>& indices, const std::vector<double>& dwell,
                           const Mixtures& clean, const Eigen::MatrixXd& z, const NoiseModel& noise, bool weighted) {
  const int K = model.n_refs(), B = model.n_background(), M = model.n_params();
  const auto E = model.X.rows(), N = clean.spectra.rows();
  if (indices.empty()) throw std::invalid_argument("fraction_rmse_dwell: no energies to fit on");
  if (dwell.size() != indices.size()) throw std::invalid_argument("fraction_rmse_dwell: one dwell per energy");
  if (clean.spectra.cols() != E || clean.fractions.cols() != K || z.rows() != N || z.cols() != E)
    throw std::invalid_argument("fraction_rmse_dwell: mixtures or noise do not match the model's grid or references");
  for (std::size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= E || (i > 0 && indices[i] <= indices[i - 1]))
      throw std::invalid_argument("fraction_rmse_dwell: energy indices must be strictly increasing and on the grid");
    if (!(dwell[i] > 0)) throw std::invalid_argument("fraction_rmse_dwell: every dwell must be > 0");
  }
  auto profile = [&](double y) { return noise.poisson ? std::max(y, noise.floor) : 1.0; };
  const Eigen::MatrixXd Xs = rows_of(model.X, indices);
  const auto n = Xs.rows();
  const Eigen::MatrixXd G0 = Xs.transpose() * Xs;
  SolveOptions opt;
  opt.method = FitMethod::nnls;
  opt.n_free = B;
  const double scale = noise.sigma * noise.sigma / noise.mean_profile;
  double sse = 0;
  Eigen::VectorXd y(n), w(n);
  Eigen::MatrixXd G(M, M);
  for (Eigen::Index i = 0; i < N; ++i) {
    if (i % 1024 == 0) throw_if_cancelled();
    for (Eigen::Index j = 0; j < n; ++j) {
      const int e = indices[static_cast<std::size_t>(j)];
      const double ybar = clean.spectra(i, e);
      y(j) = ybar + z(i, e) * std::sqrt(scale * profile(ybar) / dwell[static_cast<std::size_t>(j)]);
    }
    FitResult r;
    if (weighted) {  // first pass weighted by the dwell alone (a constant profile)
      for (Eigen::Index j = 0; j < n; ++j) w(j) = dwell[static_cast<std::size_t>(j)];
      G.noalias() = Xs.transpose() * w.asDiagonal() * Xs;
      const Eigen::VectorXd wy = w.cwiseProduct(y);
      r = solve(G, Xs.transpose() * wy, y.dot(wy), static_cast<int>(n), opt);
    } else {
      r = solve(G0, Xs.transpose() * y, y.squaredNorm(), static_cast<int>(n), opt);
    }
    if (weighted && r.ok) {
      for (int round = 0; round < 3; ++round) {
        const Eigen::VectorXd yhat = Xs * r.theta;
        for (Eigen::Index j = 0; j < n; ++j) w(j) = dwell[static_cast<std::size_t>(j)] / profile(yhat(j));
        G.noalias() = Xs.transpose() * w.asDiagonal() * Xs;
        const Eigen::VectorXd wy = w.cwiseProduct(y);
        auto next = solve(G, Xs.transpose() * wy, y.dot(wy), static_cast<int>(n), opt);
        if (!next.ok) break;
        r = std::move(next);
      }
    }
    Eigen::VectorXd f = Eigen::VectorXd::Constant(K, 1.0 / K);
    const double T = r.ok ? r.theta.tail(K).sum() : 0.0;
    if (T > 0) f = r.theta.tail(K) / T;
    sse += (f - clean.fractions.row(i).transpose()).squaredNorm();
  }
  return std::sqrt(sse / (static_cast<double>(N) * K));
}

DwellSelection select_dwell(const std::vector<std::string>& names, const Eigen::MatrixXd& refs,
                            const std::vector<double>& grid_eV, const Eigen::VectorXd& expected,
                            const EnergySelectionOptions& opt, const DwellOptions& dopt, double n_tolerance) {
  check_grid_and_refs(refs, grid_eV);
  if (refs.cols() != static_cast<Eigen::Index>(names.size()))
    throw std::invalid_argument("energy selection: " + std::to_string(names.size()) + " reference names for " +
                                std::to_string(refs.cols()) + " reference columns");
  const int E = static_cast<int>(grid_eV.size());
  if (opt.n_normalization < 0)
    throw std::invalid_argument("energy selection: n_normalization must be ≥ 0, got " + std::to_string(opt.n_normalization));
  if (opt.n_test < 1) throw std::invalid_argument("energy selection: n_test must be ≥ 1, got " + std::to_string(opt.n_test));
  if (!(n_tolerance >= 0) || !std::isfinite(n_tolerance)) throw std::invalid_argument("energy selection: the n tolerance must be ≥ 0");
  const bool n_auto = n_tolerance > 0;
  if (expected.size() != 0 && expected.size() != E)
    throw std::invalid_argument("energy selection: the expected spectrum has " + std::to_string(expected.size()) +
                                " points but the candidate grid has " + std::to_string(E));

  const auto t0 = Clock::now();
  const LcfModel model = make_lcf_model(names, refs, grid_eV, opt.background);
  const int K = model.n_refs(), M = model.n_params();
  const std::vector<int> norm = normalization_points(grid_eV, refs, opt.n_normalization);
  const int n_norm = static_cast<int>(norm.size());
  // At least as many energies as parameters (the design must determine θ).
  const int min_select = std::max(1, M - n_norm);
  if (!n_auto) {
    if (opt.n_select < min_select)
      throw std::invalid_argument("energy selection: " + std::to_string(opt.n_select) + " + " + std::to_string(n_norm) +
                                  " energies cannot determine the " + std::to_string(M) +
                                  " parameters of the fit (references and background): the dwell design needs n ≥ " +
                                  std::to_string(min_select));
    if (opt.n_select + n_norm > E)
      throw std::invalid_argument("energy selection: n_select + n_normalization = " + std::to_string(opt.n_select + n_norm) +
                                  " is more than the " + std::to_string(E) + " energies of the candidate grid");
  }
  if (min_select + n_norm > E)
    throw std::invalid_argument("energy selection: the candidate grid has " + std::to_string(E) + " energies, fewer than the " +
                                std::to_string(M) + " parameters of the fit");
  const Eigen::VectorXd ybar = expected.size() ? expected : Eigen::VectorXd(refs.rowwise().mean());
  const Eigen::VectorXd v = variance_profile(ybar, dopt);
  const Eigen::MatrixXd Q = fraction_weight_matrix(model.n_background(), default_compositions(K));
  const auto path = dwell_path(model, v, Q, norm, min_select, dopt);

  DwellSelection out;
  out.n_auto = n_auto;
  out.n_tolerance = n_tolerance;
  out.normalization_indices = norm;
  NoiseModel nm;
  nm.sigma = opt.noise;
  nm.poisson = dopt.poisson;
  nm.floor = dopt.variance_floor;
  nm.mean_profile = v.mean();
  // Linear prediction at equal time: cov θ = σ²/(v̄·E)·M(w)⁻¹, so RMSE = sqrt(σ²·Φ/(v̄·E·K)).
  auto linear = [&](double phi) { return std::sqrt(nm.sigma * nm.sigma * phi / (nm.mean_profile * E * K)); };
  double best = std::numeric_limits<double>::infinity();
  for (const auto& d : path) {
    out.curve.emplace_back(static_cast<int>(d.indices.size()) - n_norm, linear(d.criterion));
    best = std::min(best, linear(d.criterion));
  }
  std::size_t pick = 0;
  if (n_auto) {
    while (pick + 1 < path.size() && !(out.curve[pick].second <= (1.0 + n_tolerance) * best)) ++pick;
  } else {
    pick = static_cast<std::size_t>(opt.n_select - min_select);
  }
  const DwellDesign& chosen = path[pick];
  out.seconds = seconds_since(t0);
  out.indices = chosen.indices;
  out.n_select = static_cast<int>(chosen.indices.size()) - n_norm;
  const double nt = static_cast<double>(chosen.indices.size());
  for (std::size_t i = 0; i < chosen.indices.size(); ++i) {
    out.energies_eV.push_back(grid_eV[static_cast<std::size_t>(chosen.indices[i])]);
    out.dwell_weights.push_back(chosen.weights[i] * nt);
  }
  out.linear_rmse_equal_time = linear(chosen.criterion);
  std::vector<int> all(static_cast<std::size_t>(E));
  for (int j = 0; j < E; ++j) all[static_cast<std::size_t>(j)] = j;
  out.linear_full_grid_rmse = linear(dwell_criterion(model, v, Q, all, std::vector<double>(all.size(), 1.0 / E)));

  // Held-out validation: noise-free mixtures, one set of standard normals for every design.
  EnergySelectionOptions clean_opt = opt;
  clean_opt.noise = 0;
  const Mixtures clean = make_mixtures(model, opt.n_test, clean_opt, splitmix64(opt.seed ^ 0xD3E1'7D3E'17D3'E17Dull));
  Eigen::MatrixXd z(clean.spectra.rows(), E);
  Rng rng(splitmix64(opt.seed ^ 0x2015'E2015'E2015ull));
  for (Eigen::Index i = 0; i < z.rows(); ++i)
    for (Eigen::Index j = 0; j < E; ++j) z(i, j) = rng.normal();
  auto scaled = [](const std::vector<double>& w, double total) {
    std::vector<double> t(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) t[i] = w[i] * total;
    return t;
  };
  out.rmse_equal_time = fraction_rmse_dwell(model, chosen.indices, scaled(chosen.weights, E), clean, z, nm);
  out.rmse_equal_dwell = fraction_rmse_dwell(model, chosen.indices, scaled(chosen.weights, nt), clean, z, nm);
  out.rmse_even_equal_time = fraction_rmse_dwell(model, chosen.indices, std::vector<double>(chosen.indices.size(), E / nt), clean, z, nm);
  out.full_grid_rmse = fraction_rmse_dwell(model, all, std::vector<double>(all.size(), 1.0), clean, z, nm);
  // The bound: the approximate optimum, without the energies it gives (almost) no time.
  std::vector<int> opt_idx;
  std::vector<double> opt_w;
  for (std::size_t i = 0; i < path.back().indices.size(); ++i)
    if (path.back().weights[i] > 1e-4) opt_idx.push_back(path.back().indices[i]), opt_w.push_back(path.back().weights[i]);
  const double opt_sum = std::accumulate(opt_w.begin(), opt_w.end(), 0.0);
  out.optimum_rmse_equal_time = fraction_rmse_dwell(model, opt_idx, scaled(opt_w, E / opt_sum), clean, z, nm);
  return out;
}

}  // namespace xanesd::science
