#include "science/kmeans.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

namespace xanesd::science {

int nearest(const FeatureMatrix& centroids, const double* f, double* dist, double* all) {
  int best = 0;
  double bd = INFINITY;
  const auto d = centroids.cols(), k = centroids.rows();
  const double* c0 = centroids.data();  // row-major: centre c at c0 + c·d
  for (Eigen::Index c = 0; c < k; ++c) {
    const double* cc = c0 + c * d;
    double s = 0;
    for (Eigen::Index i = 0; i < d; ++i) {
      const double t = f[i] - cc[i];
      s += t * t;
    }
    if (all) all[c] = s;
    if (s < bd) bd = s, best = static_cast<int>(c);
  }
  if (dist) *dist = bd;
  return best;
}

namespace {

// The points' features by column (n × d, column-major): the distance kernel below runs over
// points in vector lanes.
using FeatureColumns = Eigen::MatrixXd;

// For points i0 … i0 + m − 1: the nearest of the k centres C (row-major k × d, first of equal
// minima) and its squared distance, each point's sum taken over the features in nearest()'s
// order, so both give the same bits (no fused multiply-add). s: m doubles of scratch.
__attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=off")))
void nearest_of_block(const double* columns, std::size_t n, std::size_t d, const double* C, std::size_t k, std::size_t i0,
                      std::size_t m, double* best, int* which, double* s) {
  for (std::size_t i = 0; i < m; ++i) best[i] = INFINITY, which[i] = 0;
  for (std::size_t c = 0; c < k; ++c) {
    for (std::size_t i = 0; i < m; ++i) s[i] = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const double cj = C[c * d + j];
      const double* x = columns + j * n + i0;
      for (std::size_t i = 0; i < m; ++i) {
        const double t = x[i] - cj;
        s[i] += t * t;
      }
    }
    for (std::size_t i = 0; i < m; ++i)
      if (s[i] < best[i]) best[i] = s[i], which[i] = static_cast<int>(c);
  }
}

// nearest() for every point of F, a block of points at a time. visit(i0, m, best, which).
template <class Visit>
void nearest_all(const FeatureColumns& columns, const FeatureMatrix& C, Visit&& visit) {
  constexpr std::size_t kBlock = 256;
  const auto n = static_cast<std::size_t>(columns.rows()), d = static_cast<std::size_t>(columns.cols());
  double best[kBlock], s[kBlock];
  int which[kBlock];
  for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::size_t m = std::min(kBlock, n - i0);
    nearest_of_block(columns.data(), n, d, C.data(), static_cast<std::size_t>(C.rows()), i0, m, best, which, s);
    visit(i0, m, best, which);
  }
}

// The value below which a share 1 − trim of v lies (the value of rank ⌊(1 − trim)(n − 1)⌋ in
// ascending order, as nth_element finds it); +∞ when trim is 0. Lloyd's iterations and
// k-means++'s rounds ask for it every time over all the points, and trim is a few per cent:
// a threshold a little below it is taken from an evenly spread subsample (a lower rank there),
// one branch-free pass keeps the values at or above it and counts the rest, and the rank is
// selected among the kept few per cent. Exact whenever the threshold is below the answer (the
// count says so); otherwise, or for few points, selected over all of them.
double upper_quantile(const std::vector<double>& v, double trim, std::vector<double>& scratch) {
  if (trim <= 0 || v.empty()) return INFINITY;
  const std::size_t n = v.size(), rank = static_cast<std::size_t>((1.0 - trim) * static_cast<double>(n - 1));
  auto select = [&](std::size_t count, std::size_t r) {
    std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(r),
                     scratch.begin() + static_cast<std::ptrdiff_t>(count));
    return scratch[r];
  };
  constexpr std::size_t kSubsample = 1024;
  if (n >= 4 * kSubsample) {
    scratch.resize(kSubsample);
    for (std::size_t k = 0; k < kSubsample; ++k) scratch[k] = v[k * n / kSubsample];
    const double lower_share = std::min(1.0, 2 * trim + 0.01);
    const double threshold = select(kSubsample, static_cast<std::size_t>((1.0 - lower_share) * (kSubsample - 1)));
    scratch.resize(n);
    std::size_t below = 0, kept = 0;
    for (double x : v) {  // branch-free: which side a point falls is unpredictable
      below += x < threshold;
      scratch[kept] = x;
      kept += x >= threshold;
    }
    if (below <= rank && rank - below < kept) return select(kept, rank - below);
  }
  scratch = v;
  return select(n, rank);
}

}  // namespace

// k-means++ (Arthur & Vassilvitskii): each new centre drawn with probability ∝ squared
// distance to the nearest existing one.
void add_kmeanspp(const FeatureMatrix& F, FeatureMatrix& C, int k, Rng& rng, double trim) {
  const auto n = F.rows();
  const FeatureColumns columns = F;
  // near: each point's squared distance to its nearest centre so far, brought up to date with
  // each new centre only (the minimum over the centres, as nearest() gives it).
  std::vector<double> near(static_cast<std::size_t>(n), INFINITY), d2(static_cast<std::size_t>(n));
  Eigen::Index counted = 0;  // centres of C already in `near`
  std::vector<double> scratch;
  while (C.rows() < k) {
    if (C.rows() == 0) {
      C.conservativeResize(1, F.cols());
      C.row(0) = F.row(static_cast<Eigen::Index>(rng.below(static_cast<std::uint64_t>(n))));
      continue;
    }
    for (; counted < C.rows(); ++counted) {
      const FeatureMatrix centre = C.row(counted);
      nearest_all(columns, centre, [&](std::size_t i0, std::size_t m, const double* best, const int*) {
        for (std::size_t i = 0; i < m; ++i)
          if (best[i] < near[i0 + i]) near[i0 + i] = best[i];
      });
    }
    d2 = near;
    // Outliers (zingers, hot pixels) are the farthest points of all: capping the weights at
    // the (1 − trim) quantile keeps them from drawing centres of their own.
    const double cap = upper_quantile(d2, trim, scratch);
    double total = 0;
    for (auto& v : d2) total += (v = std::min(v, cap));
    double u = rng.uniform() * total;
    Eigen::Index pick = n - 1;
    for (Eigen::Index i = 0; i < n; ++i)
      if ((u -= d2[static_cast<std::size_t>(i)]) <= 0) {
        pick = i;
        break;
      }
    C.conservativeResize(C.rows() + 1, Eigen::NoChange);
    C.row(C.rows() - 1) = F.row(pick);
  }
}

// Lloyd iterations from the given centres. Empty clusters keep their centre (ids stay put);
// returns the inertia.
double lloyd(const FeatureMatrix& F, FeatureMatrix& C, std::vector<int>& assign, int max_iter, double trim) {
  const auto n = F.rows();
  assign.assign(static_cast<std::size_t>(n), -1);
  // Converged when the centres move less than 1e-4 of the features' mean variance (squared,
  // summed), as scikit-learn's tol: where clusters overlap, points at the boundary keep
  // trading places long after the centres have settled.
  const double tol = 1e-4 * (F.rowwise() - F.colwise().mean()).squaredNorm() / static_cast<double>(std::max<Eigen::Index>(1, n * F.cols()));
  const Eigen::Index d = F.cols();
  std::vector<double> dist(static_cast<std::size_t>(n));
  std::vector<double> scratch;
  // Trimmed k-means (Cuesta-Albertos et al. 1997): the share `trim` of points farthest from
  // their centres is left out of the centres and the inertia, so a few wild points (zingers,
  // hot pixels) cannot drag a centre; every point is still labelled.
  const FeatureColumns columns = F;
  auto assign_all = [&]() {
    bool moved = false;
    nearest_all(columns, C, [&](std::size_t i0, std::size_t m, const double* best, const int* which) {
      for (std::size_t i = 0; i < m; ++i) {
        dist[i0 + i] = best[i];
        if (which[i] != assign[i0 + i]) moved = true, assign[i0 + i] = which[i];
      }
    });
    return std::pair{moved, upper_quantile(dist, trim, scratch)};
  };
  double inertia = 0;
  for (int it = 0; it < max_iter; ++it) {
    const auto [moved, cut] = assign_all();
    inertia = 0;
    FeatureMatrix sum = FeatureMatrix::Zero(C.rows(), d);
    std::vector<int> count(static_cast<std::size_t>(C.rows()), 0);
    for (Eigen::Index i = 0; i < n; ++i) {
      if (dist[static_cast<std::size_t>(i)] > cut) continue;
      inertia += dist[static_cast<std::size_t>(i)];
      const int a = assign[static_cast<std::size_t>(i)];
      const double* x = F.data() + i * d;
      double* sa = sum.data() + a * d;
      for (Eigen::Index j = 0; j < d; ++j) sa[j] += x[j];
      ++count[static_cast<std::size_t>(a)];
    }
    if (!moved) break;
    double shift = 0;
    for (Eigen::Index c = 0; c < C.rows(); ++c)
      if (count[static_cast<std::size_t>(c)] > 0) {
        const Eigen::RowVectorXd next = sum.row(c) / count[static_cast<std::size_t>(c)];
        shift += (next - C.row(c)).squaredNorm();
        C.row(c) = next;
      }
    if (shift <= tol) {  // settled: the final assignment against the final centres
      const auto [moved_last, cut] = assign_all();
      inertia = 0;
      for (double v : dist)
        if (v <= cut) inertia += v;
      break;
    }
  }
  return inertia;
}

// Mean silhouette (Rousseeuw 1987) on m rows spread evenly over the sample (a diagnostic,
// published; not used to choose k): how much closer points are to their own cluster than to
// the next one; −1..1, 0 for one cluster.
double silhouette(const FeatureMatrix& F, const std::vector<int>& assign, int k, Eigen::Index m) {
  if (k < 2 || F.rows() < 2) return 0;
  m = std::min<Eigen::Index>(m, F.rows());
  const Eigen::Index stride = F.rows() / m, d = F.cols();
  std::vector<int> size(static_cast<std::size_t>(k), 0);
  for (Eigen::Index i = 0; i < m; ++i) ++size[static_cast<std::size_t>(assign[static_cast<std::size_t>(i * stride)])];
  double total = 0;
  std::vector<double> sum(static_cast<std::size_t>(k));
  for (Eigen::Index i = 0; i < m; ++i) {
    std::fill(sum.begin(), sum.end(), 0.0);
    const double* fi = F.row(i * stride).data();
    for (Eigen::Index j = 0; j < m; ++j) {
      if (j == i) continue;
      const double* fj = F.row(j * stride).data();
      double s2 = 0;
      for (Eigen::Index c = 0; c < d; ++c) s2 += (fi[c] - fj[c]) * (fi[c] - fj[c]);
      sum[static_cast<std::size_t>(assign[static_cast<std::size_t>(j * stride)])] += std::sqrt(s2);
    }
    const int own = assign[static_cast<std::size_t>(i * stride)];
    if (size[static_cast<std::size_t>(own)] <= 1) continue;  // s = 0 for singletons
    const double a = sum[static_cast<std::size_t>(own)] / (size[static_cast<std::size_t>(own)] - 1);
    double b = INFINITY;
    for (int c = 0; c < k; ++c)
      if (c != own && size[static_cast<std::size_t>(c)] > 0) b = std::min(b, sum[static_cast<std::size_t>(c)] / size[static_cast<std::size_t>(c)]);
    if (std::isfinite(b) && std::max(a, b) > 0) total += (b - a) / std::max(a, b);
  }
  return total / static_cast<double>(m);
}

KMeans kmeans(const FeatureMatrix& F, int k, Rng& rng, int n_init, double trim) {
  if (k < 1 || F.rows() < k) throw std::invalid_argument("kmeans: need 1 ≤ k ≤ rows");
  KMeans best;
  best.inertia = INFINITY;
  for (int start = 0; start < std::max(1, n_init); ++start) {
    KMeans c;
    add_kmeanspp(F, c.centroids, k, rng, trim);
    c.inertia = lloyd(F, c.centroids, c.labels, 100, trim);
    if (c.inertia < best.inertia) best = std::move(c);
  }
  return best;
}

KMeans kmeans(const FeatureMatrix& F, int k, std::uint64_t seed, int n_init, double trim) {
  Rng rng(seed);
  return kmeans(F, k, rng, n_init, trim);
}

double adjusted_rand_index(const std::vector<int>& a, const std::vector<int>& b) {
  if (a.size() != b.size()) throw std::invalid_argument("adjusted_rand_index: labelings differ in length");
  std::map<std::pair<int, int>, double> nij;
  std::map<int, double> ai, bj;
  double n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] < 0 || b[i] < 0) continue;
    ++nij[{a[i], b[i]}], ++ai[a[i]], ++bj[b[i]], ++n;
  }
  auto c2 = [](double x) { return x * (x - 1) / 2; };
  double sij = 0, sa = 0, sb = 0;
  for (auto& [k, v] : nij) sij += c2(v);
  for (auto& [k, v] : ai) sa += c2(v);
  for (auto& [k, v] : bj) sb += c2(v);
  const double expected = sa * sb / c2(n), maxi = (sa + sb) / 2;
  return maxi == expected ? 1.0 : (sij - expected) / (maxi - expected);
}

}  // namespace xanesd::science
