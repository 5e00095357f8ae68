#include "science/incremental_lcf.hpp"

#include <bit>
#include <cmath>

namespace xanesd::science {

std::size_t EnergySets::BitsHash::operator()(const std::vector<std::uint64_t>& b) const {
  std::size_t h = 1469598103934665603ull;
  for (auto w : b) h = (h ^ w) * 1099511628211ull;
  return h;
}

EnergySets::EnergySets(int n_energies) : n_energies_(n_energies) {
  Set empty;
  empty.bits.assign(static_cast<std::size_t>((n_energies + 63) / 64), 0);
  index_[empty.bits] = kEmpty;
  sets_.push_back(std::move(empty));
}

bool EnergySets::contains(std::uint32_t set, int e) const {
  return (sets_[set].bits[static_cast<std::size_t>(e / 64)] >> (e % 64)) & 1u;
}

std::uint32_t EnergySets::with(std::uint32_t set, int e) {
  const std::uint64_t key = (static_cast<std::uint64_t>(set) << 32) | static_cast<std::uint32_t>(e);
  if (auto it = transitions_.find(key); it != transitions_.end()) return it->second;
  auto bits = sets_[set].bits;
  bits[static_cast<std::size_t>(e / 64)] |= std::uint64_t{1} << (e % 64);
  std::uint32_t id;
  if (auto it = index_.find(bits); it != index_.end()) {
    id = it->second;
  } else {
    id = static_cast<std::uint32_t>(sets_.size());
    int count = 0;
    for (auto w : bits) count += std::popcount(w);
    index_.emplace(bits, id);
    sets_.push_back({std::move(bits), count});
  }
  transitions_.emplace(key, id);
  return id;
}

std::vector<int> EnergySets::members(std::uint32_t set) const {
  std::vector<int> m;
  for (int e = 0; e < n_energies_; ++e)
    if (contains(set, e)) m.push_back(e);
  return m;
}

void LcfMaps::resize(std::size_t npix, int k) {
  fractions.assign(npix * static_cast<std::size_t>(k), 0.f);
  thickness.assign(npix, 0.f);
  residual.assign(npix, 0.f);
  nenergies.assign(npix, 0);
  fitted.assign(npix, 0);
}

IncrementalLcf::IncrementalLcf(LcfModel model, std::size_t npix, FitMethod method)
    : model_(std::move(model)), npix_(npix), M_(model_.n_params()), method_(method),
      sets_(static_cast<int>(model_.X.rows())), set_of_(npix, EnergySets::kEmpty),
      stats_(npix * static_cast<std::size_t>(M_ + 1), 0.0), changed_(npix, 0) {
  const auto E = model_.X.rows();
  xrows_.resize(static_cast<std::size_t>(E * M_));
  for (Eigen::Index j = 0; j < E; ++j)
    for (int m = 0; m < M_; ++m) xrows_[static_cast<std::size_t>(j * M_ + m)] = model_.X(j, m);
  maps_.resize(npix, model_.n_refs());
}

void IncrementalLcf::add(std::size_t p, int e, double y) {
  const double* x = &xrows_[static_cast<std::size_t>(e * M_)];
  double* st = &stats_[p * static_cast<std::size_t>(M_ + 1)];
  for (int m = 0; m < M_; ++m) st[m] += x[m] * y;
  st[M_] += y * y;
  set_of_[p] = sets_.with(set_of_[p], e);
  if (!changed_[p]) changed_[p] = 1, changed_list_.push_back(p);
}

void IncrementalLcf::replace(std::size_t p, int e, double previous, double y) {
  const double* x = &xrows_[static_cast<std::size_t>(e * M_)];
  double* st = &stats_[p * static_cast<std::size_t>(M_ + 1)];
  for (int m = 0; m < M_; ++m) st[m] += x[m] * (y - previous);
  st[M_] += y * y - previous * previous;
  if (!changed_[p]) changed_[p] = 1, changed_list_.push_back(p);
}

void IncrementalLcf::mark_all_changed() {
  changed_list_.clear();
  for (std::size_t p = 0; p < npix_; ++p) changed_[p] = 1, changed_list_.push_back(p);
}

void IncrementalLcf::set_method(FitMethod m) {
  if (m == method_) return;
  method_ = m;
  mark_all_changed();
}

const IncrementalLcf::SetCache& IncrementalLcf::cache_for(std::uint32_t set) {
  if (caches_.size() < sets_.size()) caches_.resize(sets_.size());
  auto& c = caches_[set];
  if (c.ready) return c;
  c.G = Eigen::MatrixXd::Zero(M_, M_);
  for (int e : sets_.members(set)) c.G.selfadjointView<Eigen::Lower>().rankUpdate(model_.X.row(e).transpose());
  c.G = c.G.selfadjointView<Eigen::Lower>();
  Eigen::LDLT<Eigen::MatrixXd> ldlt(c.G);
  const auto d = ldlt.vectorD().cwiseAbs();
  c.invertible = ldlt.info() == Eigen::Success && d.minCoeff() > 1e-12 * std::max(d.maxCoeff(), 1e-300);
  if (c.invertible) c.G_inv = ldlt.solve(Eigen::MatrixXd::Identity(M_, M_));
  c.ready = true;
  return c;
}

void IncrementalLcf::solve_pixel(std::size_t p) {
  const auto set = set_of_[p];
  const int n = sets_.count(set);
  const int K = model_.n_refs();
  maps_.nenergies[p] = static_cast<std::uint16_t>(std::min(n, 65535));
  auto clear = [&] {
    for (int k = 0; k < K; ++k) maps_.fractions[static_cast<std::size_t>(k) * npix_ + p] = 0.f;
    maps_.thickness[p] = maps_.residual[p] = 0.f;
    maps_.fitted[p] = 0;
  };
  if (n < M_) return clear();  // fewer energies than parameters: nothing to say yet
  const auto& c = cache_for(set);
  const double* st = &stats_[p * static_cast<std::size_t>(M_ + 1)];
  const Eigen::Map<const Eigen::VectorXd> s(st, M_);
  const double q = st[M_];
  FitResult r;
  if (method_ == FitMethod::least_squares) {
    if (!c.invertible) return clear();
    r.theta = c.G_inv * s;
    r.chi2 = chi_squared(c.G, s, q, r.theta);
    r.ok = true;
  } else {
    r = solve_nnls(c.G, s, q, model_.n_background());
  }
  if (!r.ok) return clear();
  const auto coeffs = r.theta.tail(K);
  const double total = coeffs.sum();
  for (int k = 0; k < K; ++k)
    maps_.fractions[static_cast<std::size_t>(k) * npix_ + p] =
        std::abs(total) > 1e-12 ? static_cast<float>(coeffs(k) / total) : 0.f;
  maps_.thickness[p] = static_cast<float>(total);
  maps_.residual[p] = static_cast<float>(std::sqrt(r.chi2 / n));
  maps_.fitted[p] = 1;
}

std::size_t IncrementalLcf::solve_changed() {
  const std::size_t n = changed_list_.size();
  for (auto p : changed_list_) {
    solve_pixel(p);
    changed_[p] = 0;
  }
  changed_list_.clear();
  return n;
}

}  // namespace xanesd::science
