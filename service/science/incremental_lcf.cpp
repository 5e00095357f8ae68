#include "science/incremental_lcf.hpp"
#include "science/parallel.hpp"
#include "science/planar.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <unordered_map>

namespace xanesd::science {

std::size_t EnergySets::BitsHash::operator()(const std::vector<std::uint64_t>& b) const {
  std::size_t h = 1469598103934665603ull;
  for (auto w : b) h = (h ^ w) * 1099511628211ull;
  return h;
}

EnergySets::EnergySets(int n_energies) : n_energies_(n_energies), last_(static_cast<std::size_t>(std::max(n_energies, 0))) {
  Set empty;
  empty.bits.assign(static_cast<std::size_t>((n_energies + 63) / 64), 0);
  index_[empty.bits] = kEmpty;
  sets_.push_back(std::move(empty));
}

bool EnergySets::contains(std::uint32_t set, int e) const {
  return (sets_[set].bits[static_cast<std::size_t>(e / 64)] >> (e % 64)) & 1u;
}

std::uint32_t EnergySets::with_slow(std::uint32_t set, int e) {
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

namespace {
// add_spectrum's sums with M known (st: M sums, then yᵀy): the same expressions as add() and
// replace(), in the same order.
template <int M>
void fold_spectrum(double* st, const double* xrows, std::size_t n, const int* e, const float* y, const float* previous) {
  double acc[M + 1];
  for (int m = 0; m <= M; ++m) acc[m] = st[m];
  for (std::size_t j = 0; j < n; ++j) {
    const double* x = xrows + static_cast<std::size_t>(e[j]) * M;
    const double v = y[j], old = previous[j];
    if (std::isnan(old)) {
      for (int m = 0; m < M; ++m) acc[m] += x[m] * v;
      acc[M] += v * v;
    } else {
      for (int m = 0; m < M; ++m) acc[m] += x[m] * (v - old);
      acc[M] += v * v - old * old;
    }
  }
  for (int m = 0; m <= M; ++m) st[m] = acc[m];
}
}  // namespace

void IncrementalLcf::add_spectrum(std::size_t p, std::size_t n, const int* e, const float* y, const float* previous) {
  if (n == 0) return;
  ensure_incremental_state();
  double* st = &stats_[p * static_cast<std::size_t>(M_ + 1)];
  switch (M_) {
    case 2: fold_spectrum<2>(st, xrows_.data(), n, e, y, previous); break;
    case 3: fold_spectrum<3>(st, xrows_.data(), n, e, y, previous); break;
    case 4: fold_spectrum<4>(st, xrows_.data(), n, e, y, previous); break;
    case 5: fold_spectrum<5>(st, xrows_.data(), n, e, y, previous); break;
    case 6: fold_spectrum<6>(st, xrows_.data(), n, e, y, previous); break;
    case 7: fold_spectrum<7>(st, xrows_.data(), n, e, y, previous); break;
    case 8: fold_spectrum<8>(st, xrows_.data(), n, e, y, previous); break;
    default:
      for (std::size_t j = 0; j < n; ++j)
        if (std::isnan(previous[j])) add(p, e[j], y[j]);
        else replace(p, e[j], previous[j], y[j]);
      return;  // add and replace kept the energy set and the change list
  }
  std::uint32_t set = set_of_[p];
  for (std::size_t j = 0; j < n; ++j)
    if (std::isnan(previous[j])) set = sets_.with(set, e[j]);
  set_of_[p] = set;
  if (!changed_[p]) changed_[p] = 1, changed_list_.push_back(p);
}

std::vector<int> EnergySets::members(std::uint32_t set) const {
  std::vector<int> m;
  for (int e = 0; e < n_energies_; ++e)
    if (contains(set, e)) m.push_back(e);
  return m;
}

void LcfMaps::resize(std::size_t npix, int k, LcfMaps recycled) {
  const std::size_t nk = npix * static_cast<std::size_t>(k);
  fractions = reuse_zeroed(std::move(recycled.fractions), nk);
  fraction_sigma = reuse_zeroed(std::move(recycled.fraction_sigma), nk);
  thickness = reuse_zeroed(std::move(recycled.thickness), npix);
  residual = reuse_zeroed(std::move(recycled.residual), npix);
  rfactor = reuse_zeroed(std::move(recycled.rfactor), npix);
  nenergies = reuse_zeroed(std::move(recycled.nenergies), npix);
  fitted = reuse_zeroed(std::move(recycled.fitted), npix);
}

std::size_t LcfMaps::held_bytes() const {
  return capacity_bytes(fractions) + capacity_bytes(fraction_sigma) + capacity_bytes(thickness) + capacity_bytes(residual) +
         capacity_bytes(rfactor) + capacity_bytes(nenergies) + capacity_bytes(fitted);
}

std::size_t IncrementalLcf::Buffers::held_bytes() const {
  return capacity_bytes(set_of) + capacity_bytes(stats) + capacity_bytes(changed) + maps.held_bytes();
}

std::size_t IncrementalLcf::held_bytes() const {
  return capacity_bytes(set_of_) + capacity_bytes(stats_) + capacity_bytes(changed_) + capacity_bytes(changed_list_) +
         capacity_bytes(spatial_neighbours_) + capacity_bytes(smoothed_) + capacity_bytes(own_pending_) +
         recycled_.held_bytes() + maps_.held_bytes();
}

IncrementalLcf::IncrementalLcf(LcfModel model, std::size_t npix, SolveOptions options, Buffers recycled)
    : model_(std::move(model)), npix_(npix), M_(model_.n_params()), options_(options),
      sets_(static_cast<int>(model_.X.rows())), recycled_(std::move(recycled)) {
  const auto E = model_.X.rows();
  xrows_.resize(static_cast<std::size_t>(E * M_));
  for (Eigen::Index j = 0; j < E; ++j)
    for (int m = 0; m < M_; ++m) xrows_[static_cast<std::size_t>(j * M_ + m)] = model_.X(j, m);
  options_.n_free = model_.n_background();
  maps_.resize(npix, model_.n_refs(), std::move(recycled_.maps));
  // Buffers of another size are released now, not held until the first sample: a scan of
  // another size would count them against its memory.
  auto keep_if = [](auto& v, std::size_t n) {
    if (v.size() != n) v = {};
  };
  keep_if(recycled_.set_of, npix_);
  keep_if(recycled_.stats, npix_ * static_cast<std::size_t>(M_ + 1));
  keep_if(recycled_.changed, npix_);
}

IncrementalLcf::Buffers IncrementalLcf::take_buffers() && {
  // Statistics never allocated (no sample folded yet): the ones this fit was handed.
  auto pick = [](auto& mine, auto& handed) { return std::move(mine.empty() ? handed : mine); };
  Buffers b{pick(set_of_, recycled_.set_of), pick(stats_, recycled_.stats), pick(changed_, recycled_.changed), std::move(maps_)};
  recycled_ = {};
  return b;
}

void IncrementalLcf::allocate_incremental_state() {
  // Zeroed (huge) pages: the last fit's where sizes match, else fresh ones, touched first by
  // the threads that fold planes into them.
  static_assert(EnergySets::kEmpty == 0);
  set_of_ = reuse_zeroed(std::move(recycled_.set_of), npix_);
  stats_ = reuse_zeroed(std::move(recycled_.stats), npix_ * static_cast<std::size_t>(M_ + 1));
  changed_ = reuse_zeroed(std::move(recycled_.changed), npix_);
  recycled_ = {};
}

namespace {
// add_planes' sums for one block of B pixels from p0 (acc: M + 1 rows of kBlock, q last),
// plane by plane in add()'s order. Wider vectors (target_clones), but no fused multiply-add:
// add() rounds the product and the sum separately, and folding must give its statistics bit for
// bit whatever the grouping of planes.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=off")))
void fold_block(const float* planes, std::size_t stride, std::size_t p0, std::size_t B, const int* energies,
                std::size_t n, const double* xrows, int M, std::size_t kBlock, double* __restrict acc,
                std::uint16_t* __restrict count, double* __restrict yd) {
  for (std::size_t j = 0; j < n; ++j) {
    const int e = energies[j];
    const float* __restrict y = planes + static_cast<std::size_t>(e) * stride + p0;
    const double* x = xrows + static_cast<std::size_t>(e) * static_cast<std::size_t>(M);
    // One pass over the plane (NaN → 0, counted), then the sums over that L1-resident copy.
    double* __restrict q = acc + static_cast<std::size_t>(M) * kBlock;
    for (std::size_t i = 0; i < B; ++i) {
      const bool ok = !std::isnan(y[i]);
      const double v = ok ? static_cast<double>(y[i]) : 0.0;
      yd[i] = v;
      q[i] += v * v;
      count[i] = static_cast<std::uint16_t>(count[i] + ok);
    }
    for (int m = 0; m < M; ++m) {
      double* __restrict a = acc + static_cast<std::size_t>(m) * kBlock;
      const double xm = x[m];
      for (std::size_t i = 0; i < B; ++i) a[i] += xm * yd[i];
    }
  }
}
}  // namespace

void IncrementalLcf::add_planes(const float* planes, std::size_t stride, const std::vector<int>& energies, int threads) {
  if (energies.empty() || npix_ == 0) return;
  ensure_incremental_state();
  const std::size_t S = static_cast<std::size_t>(M_ + 1), n = energies.size();
  constexpr std::size_t kBlock = 512;  // (M+1) double accumulators per pixel stay in L1/L2
  const std::size_t blocks = (npix_ + kBlock - 1) / kBlock;
  // Pixels not measured at every one of the energies (NaN somewhere): their energy sets are
  // updated one by one below. Everyone else makes the same transition.
  std::vector<std::vector<std::size_t>> partial(static_cast<std::size_t>(std::max(1, threads)));
  auto work = [&](int t, std::size_t b_begin, std::size_t b_end) {
    std::vector<double> acc(S * kBlock);
    std::vector<std::uint16_t> count(kBlock);
    std::vector<double> yd(kBlock);
    for (std::size_t b = b_begin; b < b_end; ++b) {
      const std::size_t p0 = b * kBlock, B = std::min(kBlock, npix_ - p0);
      // Start from the pixels' current sums and add sample by sample, as add() does: the same
      // rounding, so folding in any grouping of planes gives the same statistics bit for bit.
      to_planar(S, B, kBlock, &stats_[p0 * S], acc.data());
      std::fill(count.begin(), count.end(), std::uint16_t{0});
      fold_block(planes, stride, p0, B, energies.data(), n, xrows_.data(), M_, kBlock, acc.data(), count.data(),
                 yd.data());
      from_planar(S, B, kBlock, acc.data(), &stats_[p0 * S]);
      for (std::size_t i = 0; i < B; ++i)
        if (count[i] != n) partial[static_cast<std::size_t>(t)].push_back(p0 + i);
    }
  };
  parallel_ranges(blocks, threads, 65536 / kBlock, work);  // threads for 64 k pixels or more
  // Energy sets (EnergySets is not thread-safe): one transition per distinct starting set.
  std::size_t next_partial = 0;
  std::vector<std::size_t> all_partial;
  for (auto& l : partial) all_partial.insert(all_partial.end(), l.begin(), l.end());  // ascending: blocks in order
  std::uint32_t from = ~0u, to = 0;
  for (std::size_t p = 0; p < npix_; ++p) {
    if (next_partial < all_partial.size() && all_partial[next_partial] == p) {
      ++next_partial;
      const auto before = set_of_[p];
      for (int e : energies)
        if (!std::isnan(planes[static_cast<std::size_t>(e) * stride + p])) set_of_[p] = sets_.with(set_of_[p], e);
      if (set_of_[p] == before) continue;  // nothing measured here: unchanged, as add() leaves it
    } else {
      if (set_of_[p] != from) {
        from = set_of_[p], to = from;
        for (int e : energies) to = sets_.with(to, e);
      }
      set_of_[p] = to;
    }
    if (!changed_[p]) changed_[p] = 1, changed_list_.push_back(p);
  }
}

namespace {

constexpr std::size_t kStackBlock = 2048;  // pixels per block: accumulators stay in L1/L2

// The accumulation kernel. The planes of an energy-major stack lie P floats apart (16 MiB at
// 2048²), so walking all E of them for the same pixels means E concurrent memory streams that
// the hardware prefetchers cannot follow, and walking one plane at a time means loading and
// storing every accumulator for every energy. Middle ground: energies in groups of kGroup;
// for 16 pixels (one cache line of each plane) the group's sums stay in registers, and a
// software prefetch runs kPrefetchAhead bytes ahead in each of the group's planes.
constexpr int kGroup = 8;
constexpr std::size_t kPrefetchAhead = 2048;
// Parameters summed per register pass: (5 sums + q) × 16 floats is 12 AVX2 registers.
constexpr int kChunk = 5;

using Vf16 = float __attribute__((vector_size(64)));  // one cache line; 2 AVX2 / 1 AVX-512 register
using Vd8 = double __attribute__((vector_size(64)));

// The helpers below are always inlined, so the 64-byte vectors never cross a call (GCC warns
// about the ABI of such calls for targets without AVX-512).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
__attribute__((always_inline)) inline Vf16 load16(const float* p) {
  Vf16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Adds a group's float sums of 16 pixels to their accumulators: s in float (1e-6 relative,
// ample for s), q in double (χ² is a difference of q and θᵀs). Summing at most kGroup terms in
// float first keeps the rounding of q well below that of s. G: the group size if known at
// compile time (full groups: an unrolled loop), else 0 and g.
template <int MC, bool WithQ, int G>
__attribute__((always_inline)) inline void group_step(const float* y, std::size_t stride, int g, const float* x, int M,
                                                      float* acc, double* q) {
  Vf16 s[MC] = {}, qq = {};
  const int n = G > 0 ? G : g;
  for (int e = 0; e < n; ++e, y += stride, x += M) {
    const Vf16 v = load16(y);
#pragma GCC unroll 8
    for (int m = 0; m < MC; ++m) s[m] += x[m] * v;
    if constexpr (WithQ) qq += v * v;
  }
#pragma GCC unroll 8
  for (int m = 0; m < MC; ++m) {
    float* a = acc + static_cast<std::size_t>(m) * kStackBlock;
    const Vf16 sum = load16(a) + s[m];
    std::memcpy(a, &sum, sizeof sum);
  }
  if constexpr (WithQ) {
    Vd8 lo, hi;
    std::memcpy(&lo, q, sizeof lo);
    std::memcpy(&hi, q + 8, sizeof hi);
    lo += __builtin_convertvector(__builtin_shufflevector(qq, qq, 0, 1, 2, 3, 4, 5, 6, 7), Vd8);
    hi += __builtin_convertvector(__builtin_shufflevector(qq, qq, 8, 9, 10, 11, 12, 13, 14, 15), Vd8);
    std::memcpy(q, &lo, sizeof lo);
    std::memcpy(q + 8, &hi, sizeof hi);
  }
}

template <bool WithQ, int G>
__attribute__((always_inline)) inline void group_chunk(int mc, const float* y, std::size_t stride, int g,
                                                       const float* x, int M, float* acc, double* q) {
  switch (mc) {
    case 1: return group_step<1, WithQ, G>(y, stride, g, x, M, acc, q);
    case 2: return group_step<2, WithQ, G>(y, stride, g, x, M, acc, q);
    case 3: return group_step<3, WithQ, G>(y, stride, g, x, M, acc, q);
    case 4: return group_step<4, WithQ, G>(y, stride, g, x, M, acc, q);
    default: return group_step<kChunk, WithQ, G>(y, stride, g, x, M, acc, q);
  }
}

// All parameters of 16 pixels over one group of planes (q with the first chunk).
template <int G>
__attribute__((always_inline)) inline void group_pixels(const float* y, std::size_t stride, int g, const float* x,
                                                        int M, float* acc, double* q) {
  group_chunk<true, G>(std::min(kChunk, M), y, stride, g, x, M, acc, q);
  for (int m0 = kChunk; m0 < M; m0 += kChunk)
    group_chunk<false, G>(std::min(kChunk, M - m0), y, stride, g, x + m0, M,
                          acc + static_cast<std::size_t>(m0) * kStackBlock, nullptr);
}

// s_m = Σ_e x_em·y_e and q = Σ_e y_e² for the B pixels of a block (acc parameter-major with
// row stride kStackBlock). target_clones compiles it for AVX-512, AVX2 (+FMA) and baseline
// x86-64 and picks one at run time, so the binary stays portable.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void accumulate_block(const float* planes, std::size_t stride, int E, int M, const float* xf, std::size_t B,
                      float* acc, double* q) {
  for (int m = 0; m < M; ++m) std::fill_n(acc + static_cast<std::size_t>(m) * kStackBlock, B, 0.f);
  std::fill_n(q, B, 0.0);
  const std::size_t B16 = B / 16 * 16;
  for (int e0 = 0; e0 < E; e0 += kGroup) {
    const int g = std::min(kGroup, E - e0);
    const float* rows = planes + static_cast<std::size_t>(e0) * stride;
    const float* x = xf + static_cast<std::size_t>(e0) * M;
    for (std::size_t i0 = 0; i0 < B16; i0 += 16) {
      for (int j = 0; j < g; ++j)  // integer arithmetic: the address may lie past the plane
        __builtin_prefetch(reinterpret_cast<const void*>(
            reinterpret_cast<std::uintptr_t>(rows + static_cast<std::size_t>(j) * stride + i0) + kPrefetchAhead));
      if (g == kGroup) group_pixels<kGroup>(rows + i0, stride, g, x, M, acc + i0, q + i0);
      else group_pixels<0>(rows + i0, stride, g, x, M, acc + i0, q + i0);
    }
    for (std::size_t i = B16; i < B; ++i) {  // the block's last < 16 pixels, same arithmetic
      const float* y = rows + i;
      for (int m = 0; m < M; ++m) {
        float sm = 0;
        for (int e = 0; e < g; ++e) sm += x[e * M + m] * y[static_cast<std::size_t>(e) * stride];
        acc[static_cast<std::size_t>(m) * kStackBlock + i] += sm;
      }
      float qq = 0;
      for (int e = 0; e < g; ++e) qq += y[static_cast<std::size_t>(e) * stride] * y[static_cast<std::size_t>(e) * stride];
      q[i] += qq;
    }
  }
}
#pragma GCC diagnostic pop

}  // namespace

void IncrementalLcf::mark_all_changed() {
  ensure_incremental_state();
  changed_list_.clear();
  for (std::size_t p = 0; p < npix_; ++p) changed_[p] = 1, changed_list_.push_back(p);
}

void IncrementalLcf::set_options(const SolveOptions& o) {
  options_ = o;
  options_.n_free = model_.n_background();
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

// Scratch for one thread. NNLS on pixels that share G (one energy set) visits the same few
// passive sets again and again, so the inverse of each G_PP is computed once per (set, P).
struct IncrementalLcf::Workspace {
  struct Subset {
    bool ok = false;
    std::vector<int> idx;
    Eigen::MatrixXd inv;
  };
  std::unordered_map<std::uint64_t, Subset> subsets;
  // The last energy set's subsets by mask, without hashing (most pixels share one set); the
  // map's elements do not move, so the pointers stay valid.
  std::uint32_t flat_set = ~0u;
  std::vector<Subset*> flat;
  Eigen::VectorXd x, z;
  // nnls_block's buffers: one passive-set group of a block, contiguous (rows of kStackBlock).
  struct Group {
    std::vector<std::pair<std::uint32_t, std::uint32_t>> order, retry;  // (passive set, pixel in block)
    std::vector<std::uint32_t> count;
    std::vector<double> s, q, theta, chi2, scratch, own, own_q, sigma2;
    std::vector<float> fk, f3;
    std::vector<std::uint16_t> nen;
    std::vector<std::uint8_t> fitted, settled, ok;
    Eigen::MatrixXd padded;  // (G_AA)⁻¹ in the rows and columns of A, 0 elsewhere
    void size_for(int M, int K) {
      if (!s.empty()) return;
      const std::size_t S = kStackBlock, MS = static_cast<std::size_t>(M) * S;
      s.resize(MS), theta.resize(MS), own.resize(MS), q.resize(S), chi2.resize(S), scratch.resize(2 * S);
      own_q.resize(S), sigma2.resize(S), fk.resize(2 * static_cast<std::size_t>(K) * S), f3.resize(3 * S);
      nen.resize(S), fitted.resize(S), settled.resize(S), ok.resize(S);
    }
  } group;
  struct List {  // solve_listed's block buffers
    std::vector<double> acc, scratch;  // acc: M rows of s, then q
    std::vector<std::uint8_t> settled, todo, fitted;
    std::vector<float> fk, f3;
    std::vector<std::uint16_t> nen;
  } list;

  explicit Workspace(int M) : flat(M <= 12 ? std::size_t{1} << M : 0), x(M), z(M) {}

  const Subset& subset(std::uint32_t set, std::uint32_t mask, const Eigen::MatrixXd& G) {
    if (!flat.empty()) {
      if (set != flat_set) std::fill(flat.begin(), flat.end(), nullptr), flat_set = set;
      if (Subset* hit = flat[mask]) return *hit;
    }
    auto [it, fresh] = subsets.try_emplace((static_cast<std::uint64_t>(set) << 32) | mask);
    Subset& sub = it->second;
    if (!flat.empty()) flat[mask] = &sub;
    if (!fresh) return sub;
    for (int j = 0; j < static_cast<int>(G.rows()); ++j)
      if (mask & (1u << j)) sub.idx.push_back(j);
    const auto n = static_cast<Eigen::Index>(sub.idx.size());
    Eigen::MatrixXd A(n, n);
    for (Eigen::Index i = 0; i < n; ++i)
      for (Eigen::Index k = 0; k < n; ++k) A(i, k) = G(sub.idx[i], sub.idx[k]);
    Eigen::LDLT<Eigen::MatrixXd> ldlt(A);
    const auto d = ldlt.vectorD().cwiseAbs();
    sub.ok = n == 0 || (ldlt.info() == Eigen::Success && d.minCoeff() > 1e-12 * std::max(d.maxCoeff(), 1e-300));
    if (sub.ok && n > 0) sub.inv = ldlt.solve(Eigen::MatrixXd::Identity(n, n));
    return sub;
  }

  // out = argmin on the passive set `mask` (others 0); false if G_PP is singular.
  bool solve_on(std::uint32_t set, std::uint32_t mask, const Eigen::MatrixXd& G, const double* s, Eigen::VectorXd& out) {
    const auto& sub = subset(set, mask, G);
    if (!sub.ok) return false;
    out.setZero();
    const auto n = sub.idx.size();
    for (std::size_t i = 0; i < n; ++i) {
      double v = 0;
      for (std::size_t k = 0; k < n; ++k) v += sub.inv(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(k)) * s[sub.idx[k]];
      out(sub.idx[i]) = v;
    }
    return true;
  }
};

namespace {
constexpr int kCachedNnlsMaxParams = 24;  // passive sets as bit masks; larger models use solve()
}

void IncrementalLcf::solve_pixel(std::size_t p, Workspace& ws) const {
  solve_stats(p, set_of_[p], &stats_[p * static_cast<std::size_t>(M_ + 1)], ws);
}

bool IncrementalLcf::solve_stats(std::size_t p, std::uint32_t set, const double* st, Workspace& ws,
                                 const SpatialSolve* sp) const {
  const int n = sets_.count(set);
  const int K = model_.n_refs(), F = model_.n_background();
  LcfMaps& maps = const_cast<LcfMaps&>(maps_);  // each pixel writes only its own entries
  const bool spatial = sp != nullptr;
  if (!spatial) maps.nenergies[p] = static_cast<std::uint16_t>(std::min(n, 65535));
  auto clear = [&] {
    if (spatial) return false;  // the pixel keeps its own fit
    for (int k = 0; k < K; ++k) {
      maps.fractions[static_cast<std::size_t>(k) * npix_ + p] = 0.f;
      maps.fraction_sigma[static_cast<std::size_t>(k) * npix_ + p] = 0.f;
    }
    maps.thickness[p] = maps.residual[p] = maps.rfactor[p] = 0.f;
    maps.fitted[p] = 0;
    return true;
  };
  if (n < M_) return clear();  // fewer energies than parameters: nothing to say yet
  const auto& c = caches_[set];
  const Eigen::Map<const Eigen::VectorXd> s(st, M_);
  const double q = st[M_];

  Eigen::VectorXd& x = ws.x;
  std::uint32_t mask = 0;  // passive set of the solution, for the covariance
  bool ok = false;
  const bool weighted = samples_ && !spatial;
  const bool cached_path =
      !weighted && !options_.sum_to_one && options_.method != FitMethod::lasso && M_ <= kCachedNnlsMaxParams;
  if (cached_path) {
    const std::uint32_t all = M_ == 32 ? ~0u : ((1u << M_) - 1u), free_bits = (1u << F) - 1u;
    if (c.invertible) {  // the unconstrained optimum: for NNLS also the answer when feasible
      const double* gi = c.G_inv.data();  // column-major M×M
      for (int r = 0; r < M_; ++r) x(r) = 0;
      for (int k = 0; k < M_; ++k) {
        const double sk = st[k];
        for (int r = 0; r < M_; ++r) x(r) += gi[k * M_ + r] * sk;
      }
      mask = all;
      ok = options_.method == FitMethod::least_squares || x.tail(K).minCoeff() >= 0;
    }
    if (!ok && options_.method == FitMethod::nnls) {
      // Lawson–Hanson with cached passive-set inverses, started from the references the
      // unconstrained optimum gives a positive coefficient: a set whose solution is infeasible
      // loses its non-positive members and is solved again (each solve a cached inverse), and
      // the outer loop adds whatever the gradient asks for. The answer is the same as from the
      // free parameters alone (the solution on the final passive set, unique), in fewer steps.
      std::uint32_t warm = 0;
      if (c.invertible)
        for (int j = F; j < M_; ++j)
          if (x(j) > 0) warm |= 1u << j;
      ok = false;
      for (int tries = 0; warm && !ok && tries < K; ++tries) {
        if (!ws.solve_on(set, warm | free_bits, c.G, st, x)) break;
        ok = true;
        for (int j = F; j < M_; ++j)
          if ((warm & (1u << j)) && x(j) <= NnlsTolerance::coefficient(c.G, j, q)) ok = false, warm &= ~(1u << j);
        if (ok) mask = warm | free_bits;
      }
      if (!ok) mask = free_bits, ok = ws.solve_on(set, mask, c.G, st, x);
      for (int outer = 0; ok && outer < 3 * M_; ++outer) {
        int best = -1;
        double wmax = 0;
        for (int j = F; j < M_; ++j) {  // the gradient s − Gx where a parameter could enter
          if (mask & (1u << j)) continue;
          double wj = st[j];
          for (int k = 0; k < M_; ++k) wj -= c.G(j, k) * x(k);
          if (wj > wmax && wj > NnlsTolerance::gradient(c.G, j, q)) wmax = wj, best = j;
        }
        if (best < 0) break;
        mask |= 1u << best;
        bool added = true;
        for (int inner = 0; inner < 3 * M_; ++inner) {
          if (!ws.solve_on(set, mask, c.G, st, ws.z)) {  // dependent column: drop it, stop
            mask &= ~(1u << best);
            added = false;
            break;
          }
          double alpha = 1.0;
          bool feasible = true;
          for (int j = F; j < M_; ++j)
            if ((mask & (1u << j)) && ws.z(j) <= 0) {
              feasible = false;
              const double d = x(j) - ws.z(j);
              if (d > 0) alpha = std::min(alpha, x(j) / d);
            }
          if (feasible) break;
          x += alpha * (ws.z - x);
          for (int j = F; j < M_; ++j)
            if ((mask & (1u << j)) && x(j) <= NnlsTolerance::coefficient(c.G, j, q)) mask &= ~(1u << j), x(j) = 0;
        }
        if (!added) break;
        x = ws.z;
      }
    }
    if (!ok && options_.method == FitMethod::least_squares) return clear();  // singular for these energies
  }
  // χ² and the covariance of the references' coefficients, from whichever path solved.
  // cov(a, b) = σ²·(G_AA)⁻¹ on the active set A, 0 outside it.
  double chi2 = 0, sigma2 = 0;
  const Eigen::MatrixXd* inv = nullptr;  // (G_AA)⁻¹ …
  const std::vector<int>* active_idx = nullptr;  // … indexed through A (null: A = all)
  Eigen::MatrixXd general_cov;
  if (cached_path && ok) {
    const Eigen::Map<const Eigen::VectorXd> sv(st, M_);
    const bool all_active = mask == (M_ == 32 ? ~0u : ((1u << M_) - 1u)) && c.invertible;
    // At a least-squares optimum on A, θᵀGθ = θᵀs, so χ² = q − θᵀs (no matrix product).
    chi2 = std::max(0.0, q - x.dot(sv));
    const int active = std::popcount(mask);
    if (n > active) sigma2 = chi2 / (n - active);
    if (all_active) {
      inv = &c.G_inv;
    } else {
      const auto& sub = ws.subset(set, mask, c.G);
      if (sub.ok) inv = &sub.inv, active_idx = &sub.idx;
    }
  } else if (!cached_path) {  // weighted, sum-to-one, LASSO or very large models
    auto r = weighted ? solve_weighted(p, c, s, q, n) : solve(c.G, s, q, n, options_);
    if (!r.ok) return clear();
    x = r.theta;
    chi2 = r.chi2;
    general_cov = std::move(r.cov);
    sigma2 = 1.0;
    if (spatial) {  // r.cov is χ²/(n − |A|)·(G_AA)⁻¹: rescale to the propagated variance
      const double own = n > r.n_active ? r.chi2 / (n - r.n_active) : 0.0;
      sigma2 = own > 0 ? sp->sigma2 / own : 0.0;
    }
    inv = general_cov.rows() == M_ ? &general_cov : nullptr;
  } else {
    return clear();
  }
  if (spatial && cached_path) sigma2 = sp->sigma2;
  // Position of each parameter in A (−1 if inactive), for the subset inverse.
  int pos[64];
  if (active_idx) {
    for (int j = 0; j < M_ && j < 64; ++j) pos[j] = -1;
    for (std::size_t i = 0; i < active_idx->size(); ++i) pos[(*active_idx)[i]] = static_cast<int>(i);
  }
  auto cov = [&](int a, int b) -> double {  // a, b: parameter indices
    if (!inv || sigma2 == 0) return 0.0;
    if (!active_idx) return sigma2 * (*inv)(a, b);
    const int pa = pos[a], pb = pos[b];
    return pa < 0 || pb < 0 ? 0.0 : sigma2 * (*inv)(pa, pb);
  };

  const auto coeffs = x.tail(K);
  const double total = coeffs.sum();
  const bool has_material = std::abs(total) > 1e-12;
  // σ_f = sqrt(diag(J C Jᵀ)) with J_ka = (δ_ka − f_k)/T (first-order propagation through c/Σc)
  // has the closed form var_k = (C_kk − 2·f_k·r_k + f_k²·S)/T², r_k = Σ_b C_kb, S = Σ_ab C_ab.
  double row_sum[64], total_cov = 0;
  if (has_material && K <= 64) {
    for (int a = 0; a < K; ++a) {
      row_sum[a] = 0;
      for (int b = 0; b < K; ++b) row_sum[a] += cov(F + a, F + b);
      total_cov += row_sum[a];
    }
  }
  for (int k = 0; k < K; ++k) {
    const std::size_t i = static_cast<std::size_t>(k) * npix_ + p;
    const double fk = has_material ? coeffs(k) / total : 0.0;
    maps.fractions[i] = static_cast<float>(fk);
    double var = 0;
    if (has_material && K <= 64) var = (cov(F + k, F + k) - 2.0 * fk * row_sum[k] + fk * fk * total_cov) / (total * total);
    maps.fraction_sigma[i] = static_cast<float>(std::sqrt(std::max(0.0, var)));
  }
  double q_data = q;
  if (spatial) {  // the pixel's own data against the averaged model
    q_data = sp->own[M_];
    chi2 = chi_squared(c.G, Eigen::Map<const Eigen::VectorXd>(sp->own, M_), q_data, x);
    maps.nenergies[p] = static_cast<std::uint16_t>(std::min(n, 65535));
  }
  maps.thickness[p] = static_cast<float>(total);
  maps.residual[p] = static_cast<float>(std::sqrt(chi2 / n));
  maps.rfactor[p] = q_data > 0 ? static_cast<float>(chi2 / q_data) : 0.f;
  maps.fitted[p] = 1;
  return true;
}

bool IncrementalLcf::block_solvable(const SetCache& c) const {
  return c.invertible && !samples_ && !options_.sum_to_one && options_.method != FitMethod::lasso;
}

namespace {

// The block solve's arithmetic, over the B pixels of a block (rows of stride kStackBlock).
// Free functions so that target_clones can compile them for wider vectors too.
constexpr std::size_t kS = kStackBlock;

// θ = G⁻¹·S (gi: column-major M×M) and χ² = q − θᵀs. T: float from fit_stack, double from
// the per-pixel statistics. For the common model sizes M is a compile-time constant, so the
// loop over pixels keeps s and θ in registers (M+1 loads and M stores per pixel instead of
// M² passes over rows of the block).
template <int M, class T>
__attribute__((always_inline)) inline void theta_chi2_fixed(const double* gi, std::size_t B, const T* acc,
                                                            const double* q, double* theta, double* chi2) {
  for (std::size_t i = 0; i < B; ++i) {
    double s[M], x2 = q[i];
#pragma GCC unroll 16
    for (int k = 0; k < M; ++k) s[k] = acc[static_cast<std::size_t>(k) * kS + i];
#pragma GCC unroll 16
    for (int r = 0; r < M; ++r) {
      double t = 0;
#pragma GCC unroll 16
      for (int k = 0; k < M; ++k) t += gi[k * M + r] * s[k];
      theta[static_cast<std::size_t>(r) * kS + i] = t;
      x2 -= t * s[r];
    }
    chi2[i] = x2;
  }
}

template <class T>
__attribute__((always_inline)) inline void theta_chi2_impl(const double* gi, int M, std::size_t B, const T* acc,
                                                           const double* q, double* theta, double* chi2) {
  switch (M) {  // 1 reference + constant background … 6 references + linear background
    case 2: return theta_chi2_fixed<2>(gi, B, acc, q, theta, chi2);
    case 3: return theta_chi2_fixed<3>(gi, B, acc, q, theta, chi2);
    case 4: return theta_chi2_fixed<4>(gi, B, acc, q, theta, chi2);
    case 5: return theta_chi2_fixed<5>(gi, B, acc, q, theta, chi2);
    case 6: return theta_chi2_fixed<6>(gi, B, acc, q, theta, chi2);
    case 7: return theta_chi2_fixed<7>(gi, B, acc, q, theta, chi2);
    case 8: return theta_chi2_fixed<8>(gi, B, acc, q, theta, chi2);
    default: break;
  }
  for (int r = 0; r < M; ++r) {
    double* __restrict t = theta + static_cast<std::size_t>(r) * kS;
    std::fill_n(t, B, 0.0);
    for (int k = 0; k < M; ++k) {
      const double g = gi[k * M + r];
      const T* __restrict sk = acc + static_cast<std::size_t>(k) * kS;
      for (std::size_t i = 0; i < B; ++i) t[i] += g * sk[i];
    }
  }
  std::copy_n(q, B, chi2);
  for (int r = 0; r < M; ++r) {
    const double* __restrict t = theta + static_cast<std::size_t>(r) * kS;
    const T* __restrict sr = acc + static_cast<std::size_t>(r) * kS;
    for (std::size_t i = 0; i < B; ++i) chi2[i] -= t[i] * sr[i];
  }
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void theta_chi2(const double* __restrict gi, int M, std::size_t B, const float* __restrict acc,
                const double* __restrict q, double* __restrict theta, double* __restrict chi2) {
  theta_chi2_impl(gi, M, B, acc, q, theta, chi2);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void theta_chi2(const double* __restrict gi, int M, std::size_t B, const double* __restrict acc,
                const double* __restrict q, double* __restrict theta, double* __restrict chi2) {
  theta_chi2_impl(gi, M, B, acc, q, theta, chi2);
}

// The spatial step's misfit of each pixel's own data (own: M rows of s = Xᵀy, own_q: yᵀy)
// against the model it is given, θ with s̄ = Gθ on θ's passive set (least squares on the
// averaged statistics s̄): χ² = q − 2θᵀs + θᵀGθ = q + Σ_m θ_m (s̄_m − 2 s_m).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void own_chi2(int M, std::size_t B, const double* __restrict theta, const double* __restrict s_bar,
              const double* __restrict own, const double* __restrict own_q, double* __restrict chi2) {
  std::copy_n(own_q, B, chi2);
  for (int m = 0; m < M; ++m) {
    const double* __restrict tm = theta + static_cast<std::size_t>(m) * kS;
    const double* __restrict sm = s_bar + static_cast<std::size_t>(m) * kS;
    const double* __restrict om = own + static_cast<std::size_t>(m) * kS;
    for (std::size_t i = 0; i < B; ++i) chi2[i] += tm[i] * (sm[i] - 2 * om[i]);
  }
}

struct BlockConsts {  // per energy set: what the maps need from C = (G⁻¹) of the references
  int K, F, n;
  bool nnls;
  int active;          // parameters fitted: M, or the passive set's size (C zero outside it)
  double c_kk[64];     // C_kk
  double row_sum[64];  // r_k = Σ_b C_kb
  double total_cov;    // S = Σ_ab C_ab
  BlockConsts(const Eigen::MatrixXd& G_inv, int K_, int F_, int n_, bool nnls_, int active_ = -1)
      : K(K_), F(F_), n(n_), nnls(nnls_), active(active_ < 0 ? F_ + K_ : active_) {
    total_cov = 0;
    for (int a = 0; a < K; ++a) {
      c_kk[a] = G_inv(F + a, F + a);
      row_sum[a] = 0;
      for (int b = 0; b < K; ++b) row_sum[a] += G_inv(F + a, F + b);
      total_cov += row_sum[a];
    }
  }
};

// The maps from θ and χ² (chi2 holds q − θᵀs on entry): f_k = c_k/T, var_k = σ²(C_kk − 2f_k r_k
// + f_k² S)/T², thickness T, residual √(χ²/n), R-factor χ²/q; settled[i] = 0 where the
// pixel needs solve_stats (NNLS with a negative coefficient, no material, non-finite data).
// sigma2 (optional): the noise variance per pixel instead of χ²/(n − M) (the spatial step's).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void block_maps(const BlockConsts& bc, std::size_t B, const double* __restrict theta, const double* __restrict q,
                double* __restrict chi2, double* __restrict total, double* __restrict var_scale, float* frac,
                float* sigma, std::size_t k_stride, float* __restrict thickness, float* __restrict residual,
                float* __restrict rfactor, std::uint16_t* nenergies, std::uint8_t* fitted,
                std::uint8_t* __restrict settled, const double* __restrict sigma2 = nullptr) {
  const int K = bc.K, M = bc.F + bc.K;
  const double inv_dof = 1.0 / (bc.n - bc.active), inv_n = 1.0 / bc.n;
  const double* coeffs = theta + static_cast<std::size_t>(bc.F) * kS;
  std::fill_n(total, B, 0.0);
  std::fill_n(var_scale, B, 0.0);  // the smallest coefficient, for now
  for (int k = 0; k < K; ++k) {
    const double* __restrict c = coeffs + static_cast<std::size_t>(k) * kS;
    for (std::size_t i = 0; i < B; ++i) total[i] += c[i], var_scale[i] = std::min(var_scale[i], c[i]);
  }
  // Settled unless NNLS needs the active set, there is no material or the data were not finite.
  const bool solvable = bc.n > M, nnls = bc.nnls;
  for (std::size_t i = 0; i < B; ++i)  // bitwise &: no branches, so the loop vectorizes
    settled[i] = solvable & (std::abs(q[i]) <= std::numeric_limits<double>::max()) & !(nnls & (var_scale[i] < 0)) &
                 (std::abs(total[i]) > 1e-12);
  for (std::size_t i = 0; i < B; ++i) {
    const double x2 = std::max(0.0, chi2[i]), t = total[i];
    thickness[i] = static_cast<float>(t);
    residual[i] = std::sqrt(static_cast<float>(x2 * inv_n));  // float root: the maps are float
    rfactor[i] = q[i] > 0 ? static_cast<float>(x2 / q[i]) : 0.f;
    var_scale[i] = (sigma2 ? sigma2[i] : x2 * inv_dof) / (t * t);  // now σ²/T²
  }
  for (int k = 0; k < K; ++k) {
    const double* __restrict c = coeffs + static_cast<std::size_t>(k) * kS;
    const double ckk = bc.c_kk[k], rk = bc.row_sum[k], S = bc.total_cov;
    float* __restrict f_out = frac + static_cast<std::size_t>(k) * k_stride;
    float* __restrict s_out = sigma + static_cast<std::size_t>(k) * k_stride;
    for (std::size_t i = 0; i < B; ++i) {
      // c/T, not c·(1/T): a pixel with one reference in its passive set has f = 1 exactly and
      // then σ = 0 exactly (as solve_stats gives), not a rounding residue.
      const double f = c[i] / total[i];
      const double var = var_scale[i] * (ckk - 2.0 * f * rk + f * f * S);
      f_out[i] = static_cast<float>(f);
      s_out[i] = std::sqrt(std::max(0.f, static_cast<float>(var)));
    }
  }
  std::fill_n(nenergies, B, static_cast<std::uint16_t>(std::min(bc.n, 65535)));
  std::fill_n(fitted, B, std::uint8_t{1});
}

}  // namespace

std::size_t IncrementalLcf::block_scratch(int M) { return static_cast<std::size_t>(M + 3) * kStackBlock; }

// Block solve: pixels that share one energy set share G⁻¹, so θ = G⁻¹·S for a whole block in
// vectorizable loops, with χ² = q − θᵀs and the fraction errors in closed form. Every loop
// runs over the block's pixels without branches; the results go to `out` for every pixel, and
// settled[i] says which are final. The others must be solved again by solve_stats, which
// overwrites all their map entries.
template <class T>
void IncrementalLcf::solve_block(const SetCache& c, int n, std::size_t B, const T* acc, const double* q,
                                 const BlockOut& out, double* scratch, std::uint8_t* settled) const {
  const int K = model_.n_refs(), F = model_.n_background();
  if (K > 64) {  // left to solve_stats
    std::fill_n(settled, B, std::uint8_t{0});
    return;
  }
  double* theta = scratch;  // M × kS, then χ², 1/T and σ²/T² rows
  double* chi2 = theta + static_cast<std::size_t>(M_) * kS;
  theta_chi2(c.G_inv.data(), M_, B, acc, q, theta, chi2);
  const BlockConsts bc(c.G_inv, K, F, n, options_.method == FitMethod::nnls);
  block_maps(bc, B, theta, q, chi2, chi2 + kS, chi2 + 2 * kS, out.fractions, out.fraction_sigma, out.k_stride,
             out.thickness, out.residual, out.rfactor, out.nenergies, out.fitted, settled);
}

// NNLS for the pixels of a block (one energy set) whose unconstrained optimum has a negative
// coefficient: Lawson–Hanson's warm start (as in solve_stats) for the whole block at once.
// Each pixel's passive set is the references its unconstrained optimum gives a positive
// coefficient; the pixels sharing one are solved together, one product with that set's cached
// inverse (zero-padded to M×M, so the block arithmetic applies unchanged). Where the solution
// is feasible (every passive coefficient above tolerance) and optimal (no reference outside
// has a positive gradient s − Gθ), it is the NNLS optimum (unique): its maps go to `out` at
// the pixel's place and settled[i] = 1. The rest (a passive set that needs changing) are left
// to solve_stats. s, q: the statistics solved (M rows of kStackBlock); theta: their
// unconstrained optimum; todo[i]: try pixel i. With `own` (the spatial step): s are averaged
// statistics, own/own_q the pixel's own (its χ² is its own data's misfit), sigma2 the variance.
void IncrementalLcf::nnls_block(std::uint32_t set, std::size_t B, const double* s, const double* q,
                                const double* theta, const std::uint8_t* todo, const BlockOut& out,
                                std::uint8_t* settled, Workspace& ws, const double* own, const double* own_q,
                                const double* sigma2) const {
  const int K = model_.n_refs(), F = model_.n_background(), n = sets_.count(set);
  if (options_.method != FitMethod::nnls || K > 16 || M_ > kCachedNnlsMaxParams) return;
  const auto& c = caches_[set];
  constexpr std::size_t S = kStackBlock;
  auto& g = ws.group;
  g.size_for(M_, K);
  const std::uint32_t free_bits = (1u << F) - 1u;
  g.order.clear();
  for (std::size_t i = 0; i < B; ++i) {
    if (!todo[i] || !(std::abs(q[i]) <= std::numeric_limits<double>::max())) continue;
    std::uint32_t warm = free_bits;
    for (int j = F; j < M_; ++j)
      if (theta[static_cast<std::size_t>(j) * S + i] > 0) warm |= 1u << j;
    // Background parameters alone are a group too (no material); without any, nothing to solve.
    if (warm != free_bits || F > 0) g.order.emplace_back(warm, static_cast<std::uint32_t>(i));
  }
  // NnlsTolerance's thresholds with the square roots taken once per reference and pixel.
  double sqrt_g[64], inv_sqrt_g[64];
  for (int j = 0; j < M_; ++j) {
    const double d = c.G(j, j);
    sqrt_g[j] = std::sqrt(std::max(d, 0.0));
    inv_sqrt_g[j] = d > 0 ? 1.0 / std::sqrt(d) : 0.0;
  }
  const double* G = c.G.data();  // column-major, symmetric
  // Rounds: a pixel whose passive coefficients are not all positive drops the non-positive
  // ones and joins the group of its smaller set in the next round (solve_stats's warm loop).
  // The last group a pixel can reach holds the background parameters alone (no reference in the
  // solution: no material, e.g. the empty regions around a sample).
  for (int round = 0; round <= 2 * K + 1 && !g.order.empty(); ++round) {
    if (K <= 10) {  // counting sort by passive set (its reference bits): 2^K buckets
      g.count.assign((std::size_t{1} << K) + 1, 0);
      for (const auto& [mask, i] : g.order) ++g.count[(mask >> F) + 1];
      for (std::size_t b = 1; b < g.count.size(); ++b) g.count[b] += g.count[b - 1];
      g.retry.resize(g.order.size());
      for (const auto& e : g.order) g.retry[g.count[e.first >> F]++] = e;
      std::swap(g.order, g.retry);
    } else {
      std::sort(g.order.begin(), g.order.end());
    }
    g.retry.clear();
    for (std::size_t a = 0; a < g.order.size();) {
      const std::uint32_t mask = g.order[a].first;
      std::size_t b = a;
      while (b < g.order.size() && g.order[b].first == mask) ++b;
      const std::size_t Bg = b - a, first = a;
      a = b;
      const int active = std::popcount(mask);
      const auto& sub = ws.subset(set, mask, c.G);
      if (!sub.ok || n <= active) continue;
      g.padded.setZero(M_, M_);
      for (std::size_t r = 0; r < sub.idx.size(); ++r)
        for (std::size_t k = 0; k < sub.idx.size(); ++k)
          g.padded(sub.idx[r], sub.idx[k]) = sub.inv(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(k));
      for (std::size_t t = 0; t < Bg; ++t) {
        const std::size_t i = g.order[first + t].second;
        for (int m = 0; m < M_; ++m) g.s[static_cast<std::size_t>(m) * S + t] = s[static_cast<std::size_t>(m) * S + i];
        g.q[t] = q[i];
      }
      theta_chi2(g.padded.data(), M_, Bg, g.s.data(), g.q.data(), g.theta.data(), g.chi2.data());
      for (std::size_t t = 0; t < Bg; ++t) {
        const double rq = NnlsTolerance::kRelative * std::sqrt(std::max(g.q[t], 0.0));
        std::uint32_t keep = mask;
        for (int j = F; j < M_; ++j)
          if ((mask & (1u << j)) && !(g.theta[static_cast<std::size_t>(j) * S + t] > rq * inv_sqrt_g[j])) keep &= ~(1u << j);
        g.ok[t] = keep == mask;
        if (keep != mask) {  // infeasible: a smaller passive set next round
          if (keep != free_bits || F > 0) g.retry.emplace_back(keep, g.order[first + t].second);
          continue;
        }
        // Optimal when no gradient asks a reference in; else the one that asks most joins the
        // passive set for the next round (a Lawson–Hanson step), instead of a per-pixel solve.
        int join = -1;
        double most = 0;
        for (int j = F; j < M_; ++j) {
          if (mask & (1u << j)) continue;
          double w = g.s[static_cast<std::size_t>(j) * S + t];
          for (int k = 0; k < M_; ++k) w -= G[static_cast<std::size_t>(k) * M_ + j] * g.theta[static_cast<std::size_t>(k) * S + t];
          if (!(w > rq * sqrt_g[j])) continue;
          if (join < 0 || w * inv_sqrt_g[j] > most) most = w * inv_sqrt_g[j], join = j;
        }
        g.ok[t] = join < 0;
        if (join >= 0) g.retry.emplace_back(mask | (1u << join), g.order[first + t].second);
      }
      const double* q_maps = g.q.data();
      if (own) {  // χ² of the pixel's own data against the group's solution
        for (std::size_t t = 0; t < Bg; ++t) {
          const std::size_t i = g.order[first + t].second;
          for (int m = 0; m < M_; ++m) g.own[static_cast<std::size_t>(m) * S + t] = own[static_cast<std::size_t>(m) * S + i];
          g.own_q[t] = own_q[i], g.sigma2[t] = sigma2[i];
        }
        own_chi2(M_, Bg, g.theta.data(), g.s.data(), g.own.data(), g.own_q.data(), g.chi2.data());
        q_maps = g.own_q.data();
      }
      const BlockConsts bc(g.padded, K, F, n, true, active);
      block_maps(bc, Bg, g.theta.data(), q_maps, g.chi2.data(), g.scratch.data(), g.scratch.data() + S, g.fk.data(),
                 g.fk.data() + static_cast<std::size_t>(K) * S, S, g.f3.data(), g.f3.data() + S, g.f3.data() + 2 * S,
                 g.nen.data(), g.fitted.data(), g.settled.data(), own ? g.sigma2.data() : nullptr);
      if (mask == free_bits) {  // no material: fractions, their errors and thickness 0 (as solve_stats)
        const bool solvable = n > M_;
        for (std::size_t t = 0; t < Bg; ++t) {
          for (int k = 0; k < K; ++k)
            g.fk[static_cast<std::size_t>(k) * S + t] = g.fk[static_cast<std::size_t>(K + k) * S + t] = 0.f;
          g.f3[t] = 0.f;
          g.settled[t] = solvable && std::abs(q_maps[t]) <= std::numeric_limits<double>::max();
        }
      }
      for (std::size_t t = 0; t < Bg; ++t) {
        if (!g.ok[t] || !g.settled[t]) continue;
        const std::size_t i = g.order[first + t].second;
        for (int k = 0; k < K; ++k) {
          out.fractions[static_cast<std::size_t>(k) * out.k_stride + i] = g.fk[static_cast<std::size_t>(k) * S + t];
          out.fraction_sigma[static_cast<std::size_t>(k) * out.k_stride + i] = g.fk[static_cast<std::size_t>(K + k) * S + t];
        }
        out.thickness[i] = g.f3[t], out.residual[i] = g.f3[S + t], out.rfactor[i] = g.f3[2 * S + t];
        out.nenergies[i] = g.nen[t], out.fitted[i] = g.fitted[t];
        settled[i] = 1;
      }
    }
    std::swap(g.order, g.retry);
  }
}

namespace {
// Whether pixels[0..B) are consecutive pixels in ascending order (B ≥ 1): their statistics are
// then one contiguous run.
bool is_run(const std::size_t* pixels, std::size_t B) {
  for (std::size_t i = 1; i < B; ++i)
    if (pixels[i] != pixels[0] + i) return false;
  return true;
}
}  // namespace

// Solves the listed pixels (at most kStackBlock, all of block-solvable energy set `set`) from
// their own statistics by block: least squares, then the NNLS groups, then solve_stats for
// what is left.
void IncrementalLcf::solve_listed(const std::size_t* pixels, std::size_t B, std::uint32_t set, Workspace& ws) {
  const int K = model_.n_refs();
  constexpr std::size_t S = kStackBlock;
  auto& l = ws.list;
  if (l.acc.empty()) {
    l.acc.resize(static_cast<std::size_t>(M_ + 1) * S), l.scratch.resize(block_scratch(M_));
    l.settled.resize(S), l.todo.resize(S), l.fk.resize(2 * static_cast<std::size_t>(K) * S), l.f3.resize(3 * S);
    l.nen.resize(S), l.fitted.resize(S);
  }
  // Scattered pixels: the block's maps go to a scratch block first, then to their pixels.
  const BlockOut out{l.fk.data(), l.fk.data() + static_cast<std::size_t>(K) * S, S, l.f3.data(), l.f3.data() + S,
                     l.f3.data() + 2 * S, l.nen.data(), l.fitted.data()};
  // The block's statistics, parameter-major; a run of pixels (every pixel changed, as in an
  // energy-major scan) read in sequence.
  const std::size_t S1 = static_cast<std::size_t>(M_ + 1);
  double* q = l.acc.data() + static_cast<std::size_t>(M_) * S;
  if (is_run(pixels, B)) {
    to_planar(S1, B, S, &stats_[pixels[0] * S1], l.acc.data());
  } else {
    for (std::size_t i = 0; i < B; ++i) {
      const double* st = &stats_[pixels[i] * S1];
      for (std::size_t m = 0; m < S1; ++m) l.acc[m * S + i] = st[m];
    }
  }
  solve_block(caches_[set], sets_.count(set), B, l.acc.data(), q, out, l.scratch.data(), l.settled.data());
  for (std::size_t i = 0; i < B; ++i) l.todo[i] = !l.settled[i];
  // solve_block leaves the unconstrained θ in the first M rows of its scratch.
  nnls_block(set, B, l.acc.data(), q, l.scratch.data(), l.todo.data(), out, l.settled.data(), ws);
  scatter_block(out, pixels, B, l.settled.data());
  for (std::size_t i = 0; i < B; ++i)
    if (!l.settled[i]) solve_pixel(pixels[i], ws);
}

// A map at a time, not a pixel at a time: the maps' planes lie a power-of-two apart at the
// common image sizes, so a pixel's 2K + 5 values all fall in one cache set, more than its ways
// hold; a pixel at a time every store missed the L1 and L2 caches.
void IncrementalLcf::scatter_block(const BlockOut& out, const std::size_t* pixels, std::size_t B,
                                   const std::uint8_t* settled) {
  const int K = model_.n_refs();
  // A run of pixels (the common case) as a masked copy that vectorizes.
  const bool run = is_run(pixels, B);
  auto scatter = [&](auto* dst, const auto* src) {
    if (run) {
      auto* __restrict d = dst + pixels[0];
      for (std::size_t i = 0; i < B; ++i) d[i] = settled[i] ? src[i] : d[i];
      return;
    }
    for (std::size_t i = 0; i < B; ++i)
      if (settled[i]) dst[pixels[i]] = src[i];
  };
  for (int k = 0; k < K; ++k) {
    const std::size_t o = static_cast<std::size_t>(k) * npix_, ob = static_cast<std::size_t>(k) * out.k_stride;
    scatter(maps_.fractions.data() + o, out.fractions + ob);
    scatter(maps_.fraction_sigma.data() + o, out.fraction_sigma + ob);
  }
  scatter(maps_.thickness.data(), out.thickness);
  scatter(maps_.residual.data(), out.residual);
  scatter(maps_.rfactor.data(), out.rfactor);
  scatter(maps_.nenergies.data(), out.nenergies);
  scatter(maps_.fitted.data(), out.fitted);
}

std::size_t IncrementalLcf::solve_changed(int threads) {
  const std::size_t n = changed_list_.size();
  // Shared per-set data first (serially): the threads only read it.
  if (caches_.size() < sets_.size()) caches_.resize(sets_.size());
  std::uint32_t last = ~0u;
  for (auto p : changed_list_)
    if (set_of_[p] != last) last = set_of_[p], cache_for(last);
  // Energy-major scans: every changed pixel is in the same set, so blocks share G⁻¹.
  bool one_set = n > 0;
  for (std::size_t i = 1; one_set && i < n; ++i) one_set = set_of_[changed_list_[i]] == set_of_[changed_list_[0]];
  const std::uint32_t common = n > 0 ? set_of_[changed_list_[0]] : 0;
  const bool block_path = one_set && sets_.count(common) > M_ && block_solvable(caches_[common]);
  if (spatial_.enabled && own_pending_.size() != npix_) own_pending_.assign(npix_, 0);
  auto work = [&](std::size_t begin, std::size_t end) {
    Workspace ws(M_);
    if (!block_path) {
      for (std::size_t i = begin; i < end; ++i) solve_pixel(changed_list_[i], ws);
      return;
    }
    if (spatial_.enabled) {  // the step solves each pixel once: averaged, or its own where it leaves it
      for (std::size_t i = begin; i < end; ++i) own_pending_[changed_list_[i]] = 1;
      return;
    }
    for (std::size_t b0 = begin; b0 < end; b0 += kStackBlock)
      solve_listed(&changed_list_[b0], std::min(kStackBlock, end - b0), common, ws);
  };
  parallel_ranges(n, threads, 4096, [&](int, std::size_t begin, std::size_t end) { work(begin, end); });
  if (spatial_.enabled && n > 0) solve_spatial(threads);
  for (auto p : changed_list_) changed_[p] = 0;
  changed_list_.clear();
  return n;
}

void IncrementalLcf::set_spatial(const SpatialSettings& s, int rows, int cols, SliceLayout slices) {
  spatial_ = s;
  rows_ = rows, cols_ = cols, slices_ = slices;
  if (static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) != npix_) spatial_.enabled = false;
  spatial_neighbours_.clear();
  if (!set_of_.empty()) mark_all_changed();
}

// The spatial step over the whole image (a changed pixel changes its neighbours' averages):
// averaged statistics from spatial_average, row by row as it finishes them, then the same
// solver on them. A smoothed pixel's maps all come from that solve (fractions, thickness, and
// its own data's misfit to the averaged model), so its own fit is never needed: solve_changed
// leaves changed pixels pending.
// Pixels the step leaves alone (no material, too few energies) get their own fit: solved now if
// pending, solved again if smoothed last time and not now, else the one they have.
void IncrementalLcf::solve_spatial(int threads) {
  std::uint32_t last = ~0u;
  for (std::size_t p = 0; p < npix_; ++p)
    if (set_of_[p] != last) last = set_of_[p], cache_for(last);
  SpatialInput in;
  in.rows = rows_, in.cols = cols_, in.slices = slices_, in.M = M_, in.F = model_.n_background();
  in.stats = stats_.data();
  in.set_of = set_of_.data();
  in.threads = threads;
  in.sets.resize(sets_.size());
  for (std::size_t i = 0; i < sets_.size() && i < caches_.size(); ++i) {
    const auto& c = caches_[i];
    if (!c.ready || !c.invertible) continue;
    in.sets[i] = {true, sets_.count(static_cast<std::uint32_t>(i)), c.G_inv.data()};
  }
  if (smoothed_.size() != npix_) smoothed_.assign(npix_, 0);
  if (own_pending_.size() != npix_) own_pending_.assign(npix_, 0);
  if (spatial_neighbours_.size() != npix_) spatial_neighbours_.assign(npix_, 0.f);
  const int K = model_.n_refs(), F = model_.n_background();
  const std::size_t S1 = static_cast<std::size_t>(M_ + 1), C = static_cast<std::size_t>(cols_);
  // The averaged fit is least squares on the averaged statistics: the block arithmetic when the
  // pixel's solver allows it (the constrained cases go to solve_stats with s̄ = G θ̄).
  auto blockable = [&](std::uint32_t set) {
    const auto& c = caches_[set];
    return c.invertible && sets_.count(set) > M_ && K <= 64 && !options_.sum_to_one &&
           options_.method != FitMethod::lasso;
  };
  // Per thread: its buffers, and the solve of each row the step hands over.
  struct RowState {
    Workspace ws;
    std::vector<double> theta, s_avg, own, chi2, scratch, sigma2, st;  // own: M rows of s, then q
    std::vector<std::size_t> pixel, pending;
    std::vector<std::uint8_t> settled, todo, fitted;
    std::vector<float> fk, f3;
    std::vector<std::uint16_t> nen;
    double* q_own;  // own's last row: yᵀy
    RowState(int M, int K)
        : ws(M), theta(static_cast<std::size_t>(M) * kStackBlock), s_avg(theta.size()),
          own(static_cast<std::size_t>(M + 1) * kStackBlock), chi2(kStackBlock), scratch(2 * kStackBlock),
          sigma2(kStackBlock), st(static_cast<std::size_t>(M) + 1), pixel(kStackBlock), pending(kStackBlock),
          settled(kStackBlock), todo(kStackBlock), fitted(kStackBlock),
          fk(2 * static_cast<std::size_t>(K) * kStackBlock), f3(3 * kStackBlock), nen(kStackBlock),
          q_own(own.data() + static_cast<std::size_t>(M) * kStackBlock) {}
    RowState(const RowState&) = delete;  // q_own points into own
    RowState& operator=(const RowState&) = delete;
  };
  auto solve_row = [&](RowState& b, const SpatialRow& row) {
    constexpr std::size_t S = kStackBlock;
    auto& ws = b.ws;
    const std::size_t row0 = static_cast<std::size_t>(row.r) * C;
    const BlockOut out{b.fk.data(), b.fk.data() + static_cast<std::size_t>(K) * S, S, b.f3.data(), b.f3.data() + S,
                       b.f3.data() + 2 * S, b.nen.data(), b.fitted.data()};
    auto solve_one = [&](std::size_t p) {
      const std::size_t c = p - row0;
      const auto& G = caches_[set_of_[p]].G;
      for (int r = 0; r < M_; ++r) {
        double t = 0;
        for (int k = 0; k < M_; ++k) t += G(r, k) * row.theta[static_cast<std::size_t>(k) * row.theta_stride + c];
        b.st[static_cast<std::size_t>(r)] = t;
      }
      b.st[static_cast<std::size_t>(M_)] = stats_[p * S1 + static_cast<std::size_t>(M_)];  // tolerances: own yᵀy
      const SpatialSolve sp{row.sigma2[c], &stats_[p * S1]};
      if (!solve_stats(p, set_of_[p], b.st.data(), ws, &sp)) {  // no averaged solution: its own fit
        solve_pixel(p, ws);
        smoothed_[p] = 0;
      }
    };
    // Pixels left alone whose own constrained fit was pending: solved by block as solve_changed would.
    std::size_t n_pending = 0;
    std::uint32_t pending_set = ~0u;
    auto flush_pending = [&] {
      if (n_pending == 0) return;
      if (sets_.count(pending_set) > M_ && block_solvable(caches_[pending_set]))
        solve_listed(b.pending.data(), n_pending, pending_set, ws);
      else
        for (std::size_t i = 0; i < n_pending; ++i) solve_pixel(b.pending[i], ws);
      n_pending = 0;
    };
    std::size_t B = 0;
    std::uint32_t block_set = ~0u;
    // The block's rows, a parameter at a time (the planes are S doubles apart: a pixel at a
    // time, its M stores would each land on another page).
    auto flush = [&] {
      if (B == 0) return;
      const double* G = caches_[block_set].G.data();  // column-major, symmetric
      // Most blocks are a run of one row's pixels (every pixel smoothed): their values are read
      // in sequence, so the loops vectorize.
      const std::size_t first = b.pixel[0];
      const bool run = is_run(b.pixel.data(), B);
      for (int m = 0; m < M_; ++m) {
        const float* tm = row.theta + static_cast<std::size_t>(m) * row.theta_stride;
        double* __restrict to = b.theta.data() + static_cast<std::size_t>(m) * S;
        if (run)
          for (std::size_t i = 0; i < B; ++i) to[i] = tm[first - row0 + i];
        else
          for (std::size_t i = 0; i < B; ++i) to[i] = tm[b.pixel[i] - row0];
      }
      for (std::size_t i = 0; i < B; ++i) b.sigma2[i] = row.sigma2[b.pixel[i] - row0];
      // The pixels' own statistics (pixel-major) as rows: M of s, then q.
      if (run) {
        to_planar(S1, B, S, &stats_[first * S1], b.own.data());
      } else {  // 64 pixels at a time: their lines stay in L1 while each row takes its values
        for (std::size_t i0 = 0; i0 < B; i0 += 64) {
          const std::size_t i1 = std::min(B, i0 + 64);
          for (std::size_t m = 0; m < S1; ++m) {
            double* __restrict om = b.own.data() + m * S;
            for (std::size_t i = i0; i < i1; ++i) om[i] = stats_[b.pixel[i] * S1 + m];
          }
        }
      }
      // s̄ = Gθ̄, the averaged statistics the NNLS groups solve (theta_chi2's product with G in
      // place of G⁻¹; its χ² output is not wanted here), then each pixel's own data against its
      // averaged model.
      theta_chi2(G, M_, B, b.theta.data(), b.q_own, b.s_avg.data(), b.chi2.data());
      own_chi2(M_, B, b.theta.data(), b.s_avg.data(), b.own.data(), b.q_own, b.chi2.data());
      const BlockConsts bc(caches_[block_set].G_inv, K, F, sets_.count(block_set), options_.method == FitMethod::nnls);
      block_maps(bc, B, b.theta.data(), b.q_own, b.chi2.data(), b.scratch.data(), b.scratch.data() + S,
                 out.fractions, out.fraction_sigma, S, out.thickness, out.residual, out.rfactor, out.nenergies,
                 out.fitted, b.settled.data(), b.sigma2.data());
      for (std::size_t i = 0; i < B; ++i) b.todo[i] = !b.settled[i];
      nnls_block(block_set, B, b.s_avg.data(), b.q_own, b.theta.data(), b.todo.data(), out, b.settled.data(),
                 ws, b.own.data(), b.q_own, b.sigma2.data());
      scatter_block(out, b.pixel.data(), B, b.settled.data());
      for (std::size_t i = 0; i < B; ++i)
        if (!b.settled[i]) solve_one(b.pixel[i]);
      B = 0;
    };
    bool block_ok = false;  // blockable(block_set)
    for (std::size_t c = 0; c < C; ++c) {
      const std::size_t p = row0 + c;
      spatial_neighbours_[p] = row.neighbours[c];
      const bool was_pending = own_pending_[p];
      own_pending_[p] = 0;
      const auto set = set_of_[p];
      if (row.sigma2[c] < 0) {
        if (was_pending) {
          if (set != pending_set) flush_pending(), pending_set = set;
          b.pending[n_pending] = p;
          if (++n_pending == S) flush_pending();
        } else if (smoothed_[p] && !changed_[p]) {
          solve_pixel(p, ws);  // smoothed last time, not now: its own fit back
        }
        smoothed_[p] = 0;
        continue;
      }
      smoothed_[p] = 1;
      if (set != block_set) flush(), block_set = set, block_ok = blockable(set);
      if (!block_ok) {
        solve_one(p);
        continue;
      }
      b.pixel[B] = p;
      if (++B == S) flush();
    }
    flush();  // the row's values are gone after this call
    flush_pending();
  };
  spatial_average(in, spatial_, [&]() -> SpatialRowSink {
    auto state = std::make_shared<RowState>(M_, K);
    return [&solve_row, state](const SpatialRow& row) { solve_row(*state, row); };
  });
}

void IncrementalLcf::fit_stack(const float* planes, std::size_t plane_stride, int threads) {
  const int E = static_cast<int>(model_.X.rows());
  std::uint32_t full = EnergySets::kEmpty;
  for (int e = 0; e < E; ++e) full = sets_.with(full, e);
  if (caches_.size() < sets_.size()) caches_.resize(sets_.size());
  cache_for(full);
  std::vector<float> xf(static_cast<std::size_t>(E * M_));
  for (int e = 0; e < E; ++e)
    for (int m = 0; m < M_; ++m) xf[static_cast<std::size_t>(e * M_ + m)] = static_cast<float>(model_.X(e, m));
  const auto& full_cache = caches_[full];
  const bool block_path = block_solvable(full_cache) && E > M_;
  const int K = model_.n_refs();
  const std::size_t blocks = (npix_ + kStackBlock - 1) / kStackBlock;
  std::vector<std::vector<std::size_t>> nonfinite(static_cast<std::size_t>(std::max(1, threads)));  // per thread
  auto work = [&](int t, std::size_t begin, std::size_t end) {
    Workspace ws(M_);
    std::vector<float> acc(static_cast<std::size_t>(M_) * kStackBlock);
    std::vector<double> q(kStackBlock), st(static_cast<std::size_t>(M_ + 1));
    std::vector<double> scratch(block_path ? block_scratch(M_) : 0);
    std::vector<std::uint8_t> settled(kStackBlock, 0);
    for (std::size_t p0 = begin; p0 < end; p0 += kStackBlock) {
      const std::size_t B = std::min(kStackBlock, end - p0);
      accumulate_block(planes + p0, plane_stride, E, M_, xf.data(), B, acc.data(), q.data());
      if (block_path) {  // straight into the maps: this block's pixels are contiguous
        const BlockOut out{maps_.fractions.data() + p0, maps_.fraction_sigma.data() + p0, npix_,
                           maps_.thickness.data() + p0, maps_.residual.data() + p0, maps_.rfactor.data() + p0,
                           maps_.nenergies.data() + p0, maps_.fitted.data() + p0};
        solve_block(full_cache, E, B, acc.data(), q.data(), out, scratch.data(), settled.data());
      }
      for (std::size_t i = 0; i < B; ++i) {
        if (block_path && settled[i]) continue;
        if (!std::isfinite(q[i])) {
          nonfinite[static_cast<std::size_t>(t)].push_back(p0 + i);
          continue;
        }
        for (int m = 0; m < M_; ++m) st[static_cast<std::size_t>(m)] = acc[static_cast<std::size_t>(m) * kStackBlock + i];
        st[static_cast<std::size_t>(M_)] = q[i];
        solve_stats(p0 + i, full, st.data(), ws);
      }
    }
  };
  parallel_ranges(blocks, threads, 1, [&](int t, std::size_t b0, std::size_t b1) {
    work(t, std::min(npix_, b0 * kStackBlock), std::min(npix_, b1 * kStackBlock));  // whole blocks
  });
  // Pixels with a NaN/Inf sample: cleared (the block solve wrote them), then their finite
  // samples through the incremental path.
  for (const auto& list : nonfinite)
    for (std::size_t p : list) {
      for (int k = 0; k < K; ++k)
        maps_.fractions[static_cast<std::size_t>(k) * npix_ + p] = maps_.fraction_sigma[static_cast<std::size_t>(k) * npix_ + p] = 0.f;
      maps_.thickness[p] = maps_.residual[p] = maps_.rfactor[p] = 0.f;
      maps_.nenergies[p] = 0;
      maps_.fitted[p] = 0;
      for (int e = 0; e < E; ++e) {
        const float y = planes[static_cast<std::size_t>(e) * plane_stride + p];
        if (std::isfinite(y)) add(p, e, y);
      }
    }
  solve_changed(threads);
}

FitResult IncrementalLcf::solve_weighted(std::size_t p, const SetCache& c, const Eigen::Ref<const Eigen::VectorXd>& s,
                                         double q, int n) const {
  std::vector<int> e;
  std::vector<double> y, scale;
  samples_->samples(p, e, y, scale);
  // Start from the unweighted fit, then reweight from its prediction (IRLS, 3 rounds).
  FitResult r = solve(c.G, s, q, n, options_);
  if (!r.ok) return r;
  const bool trans = samples_->transmission();
  // The pixel's rows of the design, gathered once; each round weights them and forms the
  // normal equations as one matrix product (rank-one updates per sample cost 4× more).
  const auto n_s = static_cast<Eigen::Index>(e.size());
  Eigen::MatrixXd Xp(n_s, M_), Xw(n_s, M_);
  for (Eigen::Index j = 0; j < n_s; ++j) Xp.row(j) = model_.X.row(e[static_cast<std::size_t>(j)]);
  const Eigen::Map<const Eigen::VectorXd> yv(y.data(), n_s);
  const Eigen::Map<const Eigen::VectorXd> cv(scale.data(), n_s);
  Eigen::VectorXd yhat(n_s), sqrt_w(n_s);
  for (int round = 0; round < 3; ++round) {
    yhat.noalias() = Xp * r.theta;
    // Variance floor, relative to the pixel's own mean prediction so that it holds in any unit
    // of I0 and any detector gain: a sample predicted near zero cannot take all the weight.
    const double floor = 1e-3 * yhat.cwiseAbs().mean() + 1e-300;
    for (Eigen::Index j = 0; j < n_s; ++j) {
      const double c = std::max(cv(j), 1e-300);
      const double var = trans ? (std::exp(std::min(yhat(j), 30.0)) + 1.0) / c : std::max(yhat(j), floor) / c;
      sqrt_w(j) = std::sqrt(1.0 / var);
    }
    Xw.noalias() = sqrt_w.asDiagonal() * Xp;
    const Eigen::VectorXd yw = sqrt_w.cwiseProduct(yv);
    const Eigen::MatrixXd G = Xw.transpose() * Xw;
    auto next = solve(G, Xw.transpose() * yw, yw.squaredNorm(), n, options_);
    if (!next.ok) break;
    r = std::move(next);
  }
  // Residual and R-factor maps stay in signal units: the unweighted misfit of the final θ.
  double chi2 = 0;
  for (std::size_t j = 0; j < e.size(); ++j) {
    const double d = y[j] - model_.X.row(e[j]).dot(r.theta);
    chi2 += d * d;
  }
  r.chi2 = chi2;
  return r;
}

}  // namespace xanesd::science
