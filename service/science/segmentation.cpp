#include "science/segmentation.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "science/edge_maps.hpp"
#include "science/kmeans.hpp"

namespace xanesd::science {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Edge normalization of a cluster's mean spectrum on the energies in use. With the post-edge
// measured: Larch's ranges (PixelNormalizer, as the edge maps). Before that (an energy-major
// scan still climbing the edge): offset = mean of the pre-edge points, step = the maximum above it.
class Normalization {
 public:
  Normalization(const std::vector<double>& e, const std::vector<double>& mean, const PreEdgeParams& params) : n_(e.size()) {
    try {
      larch_.emplace(e, pre_edge(e, mean, params));
      e0_ = larch_->ranges().e0;
      return;
    } catch (const std::exception&) {
    }
    e0_ = params.e0 ? *params.e0 : find_e0(e, mean);
    for (std::size_t j = 0; j < e.size(); ++j)
      if (e[j] < e0_ - 10.0) pre_.push_back(j);
  }
  double normalize(const double* y, double* norm) const {
    if (larch_) return larch_->normalize(y, norm);
    double off = 0;
    for (auto j : pre_) off += y[j];
    if (!pre_.empty()) off /= static_cast<double>(pre_.size());
    double top = -INFINITY;
    for (std::size_t j = 0; j < n_; ++j) top = std::max(top, y[j]);
    const double step = top - off;
    if (!(step > 0)) return step;
    for (std::size_t j = 0; j < n_; ++j) norm[j] = (y[j] - off) / step;
    return step;
  }
  bool larch() const { return larch_.has_value(); }

 private:
  std::size_t n_;
  std::optional<PixelNormalizer> larch_;
  double e0_ = 0;
  std::vector<std::size_t> pre_;
};

// A pixel's spectral shape: the spectrum with its best linear background a + b·E removed
// (orthogonal projection), divided by its size along the image's mean shape. Invariant to
// thickness and to the background, the two things that otherwise dominate the clustering
// (PyXAS §8.2), and far less noisy than a per-pixel Larch normalization, whose pre-edge line,
// fitted on a few points and extrapolated over the edge, tilts each pixel by its own noise.
// The size is a projection, not the norm: noise adds to a norm (thin, noisy pixels would
// shrink towards 0 and k-means would split a uniform domain by thickness) but averages out of
// a projection. Needs no post-edge points, so it works on an energy-major scan's first energies.
class ShapeTransform {
 public:
  explicit ShapeTransform(const std::vector<double>& e) : n_(e.size()), direction_(Eigen::VectorXd::Zero(static_cast<Eigen::Index>(e.size()))) {
    Eigen::MatrixXd B(static_cast<Eigen::Index>(n_), 2);
    const double mid = 0.5 * (e.front() + e.back());
    for (std::size_t j = 0; j < n_; ++j) B(static_cast<Eigen::Index>(j), 0) = 1, B(static_cast<Eigen::Index>(j), 1) = (e[j] - mid) / 100.0;
    B_ = B;
    Q_ = (B.transpose() * B).ldlt().solve(B.transpose());
  }
  // Background-free spectrum, y − B(Qy).
  void detrend(const double* y, double* out) const {
    const auto n = static_cast<Eigen::Index>(n_);
    Eigen::Map<const Eigen::VectorXd> yv(y, n);
    Eigen::Map<Eigen::VectorXd>(out, n).noalias() = yv - B_ * (Q_ * yv);
  }
  // Detrends every row of Y (one spectrum per row) into Z.
  template <class M>
  void detrend_rows(const M& Y, Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& Z) const {
    Z = Y - (Y * Q_.transpose()) * B_.transpose();
  }
  // I − BQ: detrending as a matrix.
  Eigen::MatrixXd detrend_matrix() const {
    return Eigen::MatrixXd::Identity(static_cast<Eigen::Index>(n_), static_cast<Eigen::Index>(n_)) - B_ * Q_;
  }
  const Eigen::VectorXd& direction() const { return direction_; }
  // The direction sizes are measured along: the mean detrended spectrum of the image.
  void set_direction(const Eigen::VectorXd& mean_detrended) {
    const double norm = mean_detrended.norm();
    if (norm > 0) direction_ = mean_detrended / norm;
  }
  // z = shape of y; returns its size (∝ thickness; not > 0: no edge, z undefined).
  double operator()(const double* y, double* z) const {
    const auto n = static_cast<Eigen::Index>(n_);
    detrend(y, z);
    Eigen::Map<Eigen::VectorXd> zv(z, n);
    const double w = zv.dot(direction_);
    if (w > 0) zv /= w;
    return w;
  }

 private:
  std::size_t n_;
  Eigen::MatrixXd B_, Q_;  // E×2 background basis, 2×E its least-squares projector
  Eigen::VectorXd direction_;
};

// The feature map: PCA scores of the normalized spectrum, then position, then XRF channels;
// each block scaled to total variance weight² over the sample, so weights mean what they say.
struct FeatureSpace {
  Eigen::VectorXd mean;     // Eu
  Eigen::MatrixXd basis;    // Eu × r
  double spectral_scale = 0;
  double spatial_scale = 0, row_mean = 0, col_mean = 0;
  std::vector<double> xrf_mean, xrf_scale;  // per channel (scale includes the block weight)
  int r = 0, xrf = 0;
  bool spatial = false;
  int dims() const { return r + (spatial ? 2 : 0) + xrf; }

  void operator()(const double* norm, std::size_t p, int cols, const float* xrf_planes, std::size_t npix, double* f) const {
    const auto Eu = mean.size();
    Eigen::Map<const Eigen::VectorXd> x(norm, Eu);
    Eigen::Map<Eigen::VectorXd>(f, r).noalias() = basis.transpose() * (x - mean);
    for (int i = 0; i < r; ++i) f[i] *= spectral_scale;
    extras(p, cols, xrf_planes, npix, f);
  }
  // The XRF and position blocks (after the r spectral features). Measured blocks (spectra,
  // XRF) come first: the automatic k compares their scatter with their noise; position has no
  // noise to compare with.
  void extras(std::size_t p, int cols, const float* xrf_planes, std::size_t npix, double* f) const {
    int d = r;
    for (int c = 0; c < xrf; ++c) {
      const double v = xrf_planes[static_cast<std::size_t>(c) * npix + p];
      f[d++] = std::isfinite(v) ? (v - xrf_mean[static_cast<std::size_t>(c)]) * xrf_scale[static_cast<std::size_t>(c)] : 0.0;
    }
    if (spatial) {
      f[d++] = (static_cast<double>(p / static_cast<std::size_t>(cols)) - row_mean) * spatial_scale;
      f[d++] = (static_cast<double>(p % static_cast<std::size_t>(cols)) - col_mean) * spatial_scale;
    }
  }
  int measured_dims() const { return r + xrf; }
};

using Rows = FeatureMatrix;

constexpr Eigen::Index kSilhouetteSample = 800;

struct Clustering {
  Rows centroids;
  std::vector<int> ids;  // cluster id per centroid row
  std::vector<int> assign;
  double silhouette = 0;
};

// k-means (best of 3 starts) as a clustering without ids yet.
Clustering fresh_kmeans(const Rows& F, int k, Rng& rng) {
  auto km = kmeans(F, k, rng);
  Clustering c;
  c.centroids = std::move(km.centroids);
  c.assign = std::move(km.labels);
  return c;
}

// Within-cluster scatter of the first m feature columns (the measured blocks), per dimension.
double measured_scatter(const Rows& F, const Clustering& c, int m) {
  double s = 0;
  const Eigen::Index d = F.cols();
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    const double* x = F.data() + i * d;
    const double* cc = c.centroids.data() + c.assign[static_cast<std::size_t>(i)] * d;
    for (int j = 0; j < m; ++j) s += (x[j] - cc[j]) * (x[j] - cc[j]);
  }
  return s / static_cast<double>(F.rows() * m);
}

// Ids for a new clustering: each cluster takes the previous id most of its sampled pixels had,
// largest overlaps first; the rest get fresh ids (never reused within a scan).
void inherit_ids(Clustering& c, const std::vector<std::uint8_t>& previous, int& next_id) {
  const auto k = static_cast<std::size_t>(c.centroids.rows());
  std::map<std::pair<int, int>, int> overlap;  // (cluster row, previous id) → pixels
  for (std::size_t i = 0; i < previous.size() && i < c.assign.size(); ++i)
    if (previous[i] != kBackground && previous[i] != kUnassigned) ++overlap[{c.assign[i], previous[i]}];
  std::vector<std::tuple<int, int, int>> pairs;
  for (auto& [key, count] : overlap) pairs.emplace_back(count, key.first, key.second);
  std::sort(pairs.rbegin(), pairs.rend());
  c.ids.assign(k, -1);
  std::vector<int> taken;
  for (auto& [count, row, id] : pairs)
    if (c.ids[static_cast<std::size_t>(row)] < 0 && std::find(taken.begin(), taken.end(), id) == taken.end())
      c.ids[static_cast<std::size_t>(row)] = id, taken.push_back(id);
  for (auto& id : c.ids)
    if (id < 0) id = next_id <= 254 ? next_id++ : 254;
}

// Drops centroid rows nobody is assigned to (their ids retire).
void drop_empty(Clustering& c) {
  std::vector<int> count(static_cast<std::size_t>(c.centroids.rows()), 0);
  for (int a : c.assign) ++count[static_cast<std::size_t>(a)];
  Rows kept(0, c.centroids.cols());
  std::vector<int> ids, remap(count.size(), -1);
  for (std::size_t i = 0; i < count.size(); ++i)
    if (count[i] > 0) {
      remap[i] = static_cast<int>(ids.size());
      kept.conservativeResize(kept.rows() + 1, Eigen::NoChange);
      kept.row(kept.rows() - 1) = c.centroids.row(static_cast<Eigen::Index>(i));
      ids.push_back(c.ids[i]);
    }
  for (int& a : c.assign) a = remap[static_cast<std::size_t>(a)];
  c.centroids = std::move(kept);
  c.ids = std::move(ids);
}

template <class Fn>
void parallel_for(std::size_t n, int threads, Fn&& fn) {
  const int t = std::max(1, std::min<int>(threads, static_cast<int>(n / 16384) + 1));
  std::vector<std::jthread> pool;
  for (int i = 0; i < t; ++i) pool.emplace_back(fn, i, n * static_cast<std::size_t>(i) / t, n * static_cast<std::size_t>(i + 1) / t);
}

}  // namespace

void OnlineSegmenter::update(const SegmentInput& in) {
  const auto& e = *in.energies;
  const std::size_t E = e.size(), P = in.npix;
  Segmentation& out = result_;
  ++out.updates;
  const std::vector<std::uint8_t> previous = out.labels;
  const bool warm = previous.size() == P;
  if (!warm) out.labels.assign(P, kUnassigned);

  // 1. The energies in use: measured by at least half as many pixels as the best-measured one.
  std::vector<std::size_t> measured(E, 0);
  {
    std::vector<std::vector<std::size_t>> part(static_cast<std::size_t>(std::max(1, in.threads)), std::vector<std::size_t>(E, 0));
    parallel_for(P, in.threads, [&](int t, std::size_t b, std::size_t en) {
      for (std::size_t j = 0; j < E; ++j) {
        const float* plane = in.planes + j * P;
        std::size_t c = 0;
        for (std::size_t p = b; p < en; ++p) c += !std::isnan(plane[p]);
        part[static_cast<std::size_t>(t)][j] = c;
      }
    });
    for (const auto& v : part)
      for (std::size_t j = 0; j < E; ++j) measured[j] += v[j];
  }
  const std::size_t most = *std::max_element(measured.begin(), measured.end());
  std::vector<int> used;
  for (std::size_t j = 0; j < E; ++j)
    if (most > 0 && measured[j] * 2 >= most) used.push_back(static_cast<int>(j));
  const std::size_t Eu = used.size();
  if (Eu < 4) {
    out.waiting = "fewer than 4 energies measured across the image";
    return;
  }
  std::vector<double> eu(Eu);
  for (std::size_t i = 0; i < Eu; ++i) eu[i] = e[static_cast<std::size_t>(used[i])];


  // 2. A random sample of complete pixels (with material, when the scan has a mask), drawn as
  // runs of kRun consecutive pixels: one cache line per plane per run instead of one per pixel
  // (random single pixels cost a memory miss per energy each), and adjacent pairs within a run
  // measure the noise (below).
  constexpr std::size_t kRun = 16;
  const std::size_t want = static_cast<std::size_t>(std::max(1, settings_.sample));
  std::vector<std::size_t> sample;
  Rows Y(0, static_cast<Eigen::Index>(Eu));
  {
    std::vector<double> rows;  // sampled spectra, Eu each
    const std::size_t runs = (P + kRun - 1) / kRun;
    const bool all = runs * kRun <= want;
    const std::size_t attempts = all ? runs : std::min<std::size_t>(runs * 2, (want / kRun + 1) * 20);
    std::vector<std::uint8_t> taken(runs, 0);
    std::vector<float> block(Eu * kRun);
    std::vector<std::uint8_t> complete(kRun);
    for (std::size_t a = 0; a < attempts && sample.size() < want; ++a) {
      const std::size_t run = all ? a : static_cast<std::size_t>(rng_.below(static_cast<std::uint64_t>(runs)));
      if (taken[run]) continue;
      taken[run] = 1;
      const std::size_t p0 = run * kRun, nb = std::min(kRun, P - p0);
      std::fill(complete.begin(), complete.end(), 1);
      for (std::size_t i = 0; i < Eu; ++i) {
        const float* plane = in.planes + static_cast<std::size_t>(used[i]) * P + p0;
        for (std::size_t j = 0; j < nb; ++j) {
          block[j * Eu + i] = plane[j];
          complete[j] &= !std::isnan(plane[j]);
        }
      }
      for (std::size_t j = 0; j < nb && sample.size() < want; ++j) {
        if (!complete[j] || (in.material && !in.material[p0 + j])) continue;
        sample.push_back(p0 + j);
        rows.insert(rows.end(), block.begin() + static_cast<std::ptrdiff_t>(j * Eu), block.begin() + static_cast<std::ptrdiff_t>((j + 1) * Eu));
      }
    }
    Y = Eigen::Map<const Rows>(rows.data(), static_cast<Eigen::Index>(sample.size()), static_cast<Eigen::Index>(Eu));
  }
  const int k_floor = settings_.k > 0 ? settings_.k : 2;
  if (Y.rows() < std::max(20, 4 * k_floor)) {
    out.waiting = "too few pixels with material measured at the energies in use (" + std::to_string(Y.rows()) + ")";
    return;
  }

  // 3. Shapes of the sampled spectra (and the edge size of each).
  ShapeTransform shape(eu);
  Rows X;  // the sample's shapes, one per row: detrended as matrices, then sized and scaled
  shape.detrend_rows(Y, X);
  shape.set_direction(X.colwise().mean().transpose());
  const Eigen::VectorXd size_of = X * shape.direction();
  std::vector<double> sizes(size_of.data(), size_of.data() + size_of.size());
  for (Eigen::Index i = 0; i < X.rows(); ++i)
    if (size_of(i) > 0) X.row(i) /= size_of(i);
  // Without a mask, material = an edge size above 5 % of its 99th percentile (as mask.*'s default).
  double size_min = 0;
  if (!in.material) {
    std::vector<double> s = sizes;
    std::sort(s.begin(), s.end());
    size_min = 0.05 * s[static_cast<std::size_t>(0.99 * static_cast<double>(s.size() - 1))];
  }
  {
    Rows kept(0, X.cols()), kept_raw(0, X.cols());
    std::vector<std::size_t> ks;
    std::vector<Eigen::Index> keep;
    for (Eigen::Index i = 0; i < X.rows(); ++i)
      if (sizes[static_cast<std::size_t>(i)] > size_min) keep.push_back(i);
    kept.resize(static_cast<Eigen::Index>(keep.size()), X.cols());
    kept_raw.resize(static_cast<Eigen::Index>(keep.size()), X.cols());
    for (std::size_t i = 0; i < keep.size(); ++i) {
      kept.row(static_cast<Eigen::Index>(i)) = X.row(keep[i]);
      kept_raw.row(static_cast<Eigen::Index>(i)) = Y.row(keep[i]);
      ks.push_back(sample[static_cast<std::size_t>(keep[i])]);
    }
    X = std::move(kept);
    Y = std::move(kept_raw);
    sample = std::move(ks);
  }
  const Eigen::Index n = X.rows();
  if (n < std::max(20, 4 * k_floor)) {
    out.waiting = "too few pixels with an edge (" + std::to_string(n) + ")";
    return;
  }
  // Cluster means are edge-normalized for display and fitting with ranges from the image's mean.
  const Eigen::RowVectorXd raw_mean = Y.colwise().mean();
  const Normalization norm(eu, std::vector<double>(raw_mean.data(), raw_mean.data() + Eu), in.edge);

  // 4. PCA of the shapes; from reference mixtures while the sample is too small
  // to estimate an Eu×Eu covariance.
  Eigen::MatrixXd refs_u;  // Eu × K references on the energies in use
  if (in.model && in.model->n_refs() > 0) {
    refs_u.resize(static_cast<Eigen::Index>(Eu), in.model->n_refs());
    for (std::size_t i = 0; i < Eu; ++i)
      refs_u.row(static_cast<Eigen::Index>(i)) = in.model->X.row(used[i]).tail(in.model->n_refs());
  }
  PcaDiagnostics& pca = out.pca;
  pca = {};
  pca.energies = used;
  Eigen::MatrixXd basis_data;  // rows = spectra the PCA is computed from
  if (n < 10 * static_cast<Eigen::Index>(Eu) && refs_u.cols() > 1) {
    pca.seeded_from_references = true;
    const Eigen::Index m = 500;
    basis_data.resize(m, static_cast<Eigen::Index>(Eu));
    for (Eigen::Index i = 0; i < m; ++i) {
      Eigen::VectorXd f(refs_u.cols());
      for (Eigen::Index k = 0; k < f.size(); ++k) f(k) = rng_.exponential();  // Dirichlet(1)
      const Eigen::VectorXd mix = refs_u * (f / f.sum());
      shape(mix.data(), basis_data.row(i).data());
    }
  } else {
    // At most kPcaRows spectra, evenly spread over the sample: an Eu×Eu covariance is well
    // estimated from a few thousand, and this product dominated small images' updates.
    constexpr Eigen::Index kPcaRows = 4000;
    const Eigen::Index stride = std::max<Eigen::Index>(1, n / kPcaRows);
    basis_data.resize((n + stride - 1) / stride, static_cast<Eigen::Index>(Eu));
    for (Eigen::Index i = 0; i < basis_data.rows(); ++i) basis_data.row(i) = X.row(i * stride);
  }
  const Eigen::RowVectorXd mean = basis_data.colwise().mean();
  const Eigen::MatrixXd centred = basis_data.rowwise() - mean;
  const Eigen::MatrixXd cov = (centred.transpose() * centred) / static_cast<double>(std::max<Eigen::Index>(1, basis_data.rows() - 1));
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(cov);
  const auto Ev = static_cast<Eigen::Index>(Eu);
  Eigen::VectorXd lambda = eig.eigenvalues().reverse().cwiseMax(0.0);
  const Eigen::MatrixXd vectors = eig.eigenvectors().rowwise().reverse();
  const double total = lambda.sum();
  for (Eigen::Index i = 0; i < Ev; ++i) pca.explained.push_back(total > 0 ? lambda(i) / total : 0.0);
  // Noise floor: with few species most eigenvalues are noise, so their median estimates σ²;
  // above the Marchenko–Pastur edge σ²(1 + √(Eu/n))² (×1.5 margin) a component carries signal.
  std::vector<double> sorted(lambda.data(), lambda.data() + Ev);
  std::sort(sorted.begin(), sorted.end());
  double sigma2 = sorted[sorted.size() / 2];
  if (pca.seeded_from_references) {  // reference mixtures have no noise: measure it on the pixels
    const int rs = std::max(1, std::min<int>(refs_u.cols() - 1, static_cast<int>(Ev) - 1));
    const Eigen::MatrixXd V = vectors.leftCols(rs);
    const Eigen::MatrixXd c = X.rowwise() - mean;
    sigma2 = (c - c * V * V.transpose()).squaredNorm() / static_cast<double>(n * (Ev - rs));
  }
  pca.noise_sigma = std::sqrt(sigma2);
  const double edge = 1.5 * sigma2 * std::pow(1.0 + std::sqrt(static_cast<double>(Ev) / static_cast<double>(basis_data.rows())), 2);
  for (Eigen::Index i = 0; i < Ev; ++i) pca.significant += lambda(i) > edge && lambda(i) > 1e-12 * total;
  int r = settings_.components;
  if (r <= 0) {
    double cum = 0;
    r = 0;
    while (r < Ev && cum < settings_.variance) cum += pca.explained[static_cast<std::size_t>(r++)];
    r = std::min({r, std::max(1, pca.significant), settings_.max_components});
  }
  r = std::max(1, std::min<int>(r, static_cast<int>(Ev)));
  pca.components = r;

  FeatureSpace fs;
  fs.mean = mean.transpose();
  fs.basis = vectors.leftCols(r);
  fs.r = r;
  const double spectral_var = lambda.head(r).sum();
  fs.spectral_scale = spectral_var > 0 ? settings_.spectral_weight / std::sqrt(spectral_var) : 0.0;
  if (settings_.spatial_weight > 0 && in.cols > 0) {
    fs.spatial = true;
    double sr = 0, sc = 0, qr = 0, qc = 0;
    for (auto p : sample) {
      const double rr = static_cast<double>(p / static_cast<std::size_t>(in.cols)), cc = static_cast<double>(p % static_cast<std::size_t>(in.cols));
      sr += rr, sc += cc, qr += rr * rr, qc += cc * cc;
    }
    const double m = static_cast<double>(sample.size());
    fs.row_mean = sr / m, fs.col_mean = sc / m;
    const double var = (qr / m - fs.row_mean * fs.row_mean) + (qc / m - fs.col_mean * fs.col_mean);
    fs.spatial_scale = var > 0 ? settings_.spatial_weight / std::sqrt(var) : 0.0;
  }
  if (settings_.xrf_weight > 0 && in.xrf && in.xrf_channels > 0) {
    fs.xrf = in.xrf_channels;
    for (int c = 0; c < fs.xrf; ++c) {
      double s = 0, q = 0, m = 0;
      for (auto p : sample) {
        const double v = in.xrf[static_cast<std::size_t>(c) * P + p];
        if (std::isfinite(v)) s += v, q += v * v, ++m;
      }
      const double mu = m > 0 ? s / m : 0, var = m > 1 ? q / m - mu * mu : 0;
      fs.xrf_mean.push_back(mu);
      fs.xrf_scale.push_back(var > 0 ? settings_.xrf_weight / std::sqrt(var * fs.xrf) : 0.0);
    }
  }
  const int d = fs.dims();
  Rows F(n, d);
  F.leftCols(r) = ((X.rowwise() - fs.mean.transpose()) * fs.basis) * fs.spectral_scale;
  for (Eigen::Index i = 0; i < n; ++i) fs.extras(sample[static_cast<std::size_t>(i)], in.cols, in.xrf, P, F.row(i).data());

  // Noise in feature space, measured where it lives: adjacent pixels almost always share a
  // composition, so half the squared difference of their spectral features is noise (robust:
  // the median over the adjacent pairs the sampled runs hold; boundaries are outliers).
  double noise_var = 0;
  {
    const int m = fs.measured_dims();
    std::vector<std::vector<double>> diff2(static_cast<std::size_t>(m));
    for (Eigen::Index i = 0; i + 1 < n; ++i) {
      const std::size_t p = sample[static_cast<std::size_t>(i)], q = sample[static_cast<std::size_t>(i + 1)];
      if (q != p + 1 || in.cols < 2 || q % static_cast<std::size_t>(in.cols) == 0) continue;
      for (int j = 0; j < m; ++j) diff2[static_cast<std::size_t>(j)].push_back(0.5 * std::pow(F(i + 1, j) - F(i, j), 2));
    }
    for (auto& v : diff2) {
      if (v.empty()) continue;
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
      noise_var += v[v.size() / 2] / 0.4549 / m;  // median of χ²₁ is 0.4549
    }
    if (noise_var <= 0) noise_var = sigma2 * fs.spectral_scale * fs.spectral_scale;  // no neighbours: the PCA floor
  }

  // 5. k-means. k: the smallest whose within-cluster scatter of the measured features (PCA
  // scores, XRF) is within
  // noise_ratio × the noise (the clusters then explain all structure above noise;
  // k = 1 when the image's own scatter already is). The previous update's clusters, rebuilt
  // from the ids the sampled pixels had, are kept while their k still passes; a new clustering
  // inherits ids by overlap, so a domain keeps its id and colour while the map refines.
  auto ratio = [&](const Clustering& c) { return noise_var > 0 ? measured_scatter(F, c, fs.measured_dims()) / noise_var : INFINITY; };
  std::vector<std::uint8_t> previous_of_sample;
  if (warm)
    for (auto p : sample) previous_of_sample.push_back(previous[p]);
  Clustering kept;
  if (warm) {
    std::map<int, std::pair<Eigen::RowVectorXd, int>> acc;
    for (Eigen::Index i = 0; i < n; ++i) {
      const int id = previous_of_sample[static_cast<std::size_t>(i)];
      if (id == kBackground || id == kUnassigned) continue;
      auto [it, fresh] = acc.try_emplace(id, Eigen::RowVectorXd::Zero(d), 0);
      it->second.first += F.row(i);
      ++it->second.second;
    }
    for (auto& [id, a] : acc)
      if (a.second >= 3) {
        kept.centroids.conservativeResize(kept.centroids.rows() + 1, d);
        kept.centroids.row(kept.centroids.rows() - 1) = a.first / a.second;
        kept.ids.push_back(id);
      }
    if (!kept.ids.empty()) {
      lloyd(F, kept.centroids, kept.assign);
      drop_empty(kept);
    }
  }
  const int k_prev = static_cast<int>(kept.ids.size());
  Clustering cl;
  if (settings_.k > 0) {
    if (k_prev == settings_.k) cl = std::move(kept);
    else cl = fresh_kmeans(F, settings_.k, rng_);
  } else {
    const int k_max = std::max(2, settings_.k_max);
    const double tau = settings_.noise_ratio;
    // Search upwards from `from` for the first k that passes (k_max if none does).
    auto first_passing = [&](int from) {
      Clustering c;
      for (int k = from; k <= k_max; ++k) {
        c = fresh_kmeans(F, k, rng_);
        if (ratio(c) <= tau) break;
      }
      return c;
    };
    if (k_prev == 0 || k_prev > k_max) {
      cl = first_passing(1);
    } else if (ratio(kept) <= 1.15 * tau) {
      // The previous clusters still (nearly: a 15 % band against flicker) explain the data;
      // one fewer replaces them only if it passes comfortably. One fresh k-means per update.
      cl = std::move(kept);
      if (k_prev > 1) {
        auto fewer = fresh_kmeans(F, k_prev - 1, rng_);
        if (ratio(fewer) <= tau / 1.15) cl = std::move(fewer);
      }
    } else if (k_prev < k_max) {
      cl = first_passing(k_prev + 1);  // new structure (more energies, more of the image)
    } else {
      cl = std::move(kept);  // already at k_max
    }
  }
  if (cl.ids.size() != static_cast<std::size_t>(cl.centroids.rows())) inherit_ids(cl, previous_of_sample, next_id_);
  cl.silhouette = silhouette(F, cl.assign, static_cast<int>(cl.ids.size()), kSilhouetteSample);
  out.scatter_ratio = ratio(cl);
  features_ = F;
  out.silhouette = cl.silhouette;
  const auto k = static_cast<std::size_t>(cl.centroids.rows());

  // 6. Label every pixel and accumulate each cluster's normalized spectra.
  const int threads = std::max(1, in.threads);
  struct Acc {
    std::vector<std::size_t> count;
    Eigen::MatrixXd sum, sumsq;  // Eu × k
  };
  std::vector<Acc> accs(static_cast<std::size_t>(threads));
  for (auto& a : accs) {
    a.count.assign(k, 0);
    a.sum = Eigen::MatrixXd::Zero(Ev, static_cast<Eigen::Index>(k));
    a.sumsq = Eigen::MatrixXd::Zero(Ev, static_cast<Eigen::Index>(k));
  }
  // Block by block: a few hundred consecutive pixels are copied plane by plane (contiguous
  // reads; a pixel's spectrum alone is one float per plane, planes megabytes apart). Detrending
  // is linear, so the size and the PCA scores of a pixel are one small product with its raw
  // spectrum: [dirᵀ; Vᵀ]·(I − BQ)·y, in float (features need no more).
  Eigen::MatrixXd stacked(r + 1, Ev);
  stacked.row(0) = shape.direction().transpose();
  stacked.bottomRows(r) = fs.basis.transpose();
  const Eigen::MatrixXf project = (stacked * shape.detrend_matrix()).cast<float>();
  const Eigen::VectorXd basis_mean = fs.basis.transpose() * fs.mean;
  parallel_for(P, threads, [&](int t, std::size_t b, std::size_t en) {
    Acc& a = accs[static_cast<std::size_t>(t)];
    constexpr std::size_t kBlock = 256;
    Eigen::MatrixXf Yb(Ev, static_cast<Eigen::Index>(kBlock)), Pb(r + 1, static_cast<Eigen::Index>(kBlock));
    std::vector<std::uint8_t> complete(kBlock);
    std::vector<double> f(static_cast<std::size_t>(d));
    Eigen::VectorXd yw(Ev);
    for (std::size_t p0 = b; p0 < en; p0 += kBlock) {
      const std::size_t nb = std::min(kBlock, en - p0);
      const auto nbi = static_cast<Eigen::Index>(nb);
      std::fill(complete.begin(), complete.begin() + static_cast<std::ptrdiff_t>(nb), 1);
      for (std::size_t i = 0; i < Eu; ++i) {
        const float* plane = in.planes + static_cast<std::size_t>(used[i]) * P + p0;
        for (std::size_t j = 0; j < nb; ++j) {
          const float v = plane[j];
          complete[j] &= !std::isnan(v);
          Yb(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)) = v;
        }
      }
      Pb.leftCols(nbi).noalias() = project * Yb.leftCols(nbi);
      for (std::size_t j = 0; j < nb; ++j) {
        const std::size_t p = p0 + j;
        const auto ji = static_cast<Eigen::Index>(j);
        if (!complete[j]) {
          out.labels[p] = kUnassigned;
          continue;
        }
        const double w = Pb(0, ji);
        if ((in.material && !in.material[p]) || !(w > size_min)) {
          out.labels[p] = kBackground;
          continue;
        }
        const double inv_w = 1.0 / w;
        for (int i = 0; i < r; ++i) f[static_cast<std::size_t>(i)] = (Pb(1 + i, ji) * inv_w - basis_mean(i)) * fs.spectral_scale;
        fs.extras(p, in.cols, in.xrf, P, f.data());
        const int c = nearest(cl.centroids, f.data());
        out.labels[p] = static_cast<std::uint8_t>(cl.ids[static_cast<std::size_t>(c)]);
        ++a.count[static_cast<std::size_t>(c)];
        // The cluster mean is of spectra brought to a common edge size (not of shapes, which
        // lost their background): it stays a spectrum the references can fit.
        yw = Yb.col(ji).cast<double>() * inv_w;
        a.sum.col(c) += yw;
        a.sumsq.col(c) += yw.cwiseAbs2();
      }
    }
  });
  for (std::size_t t = 1; t < accs.size(); ++t) {
    for (std::size_t c = 0; c < k; ++c) accs[0].count[c] += accs[t].count[c];
    accs[0].sum += accs[t].sum;
    accs[0].sumsq += accs[t].sumsq;
  }
  const Acc& total_acc = accs[0];

  // 7. Cluster-then-fit: each cluster's mean spectrum, its standard error, and its LCF.
  out.clusters.clear();
  out.labelled = 0;
  Eigen::MatrixXd Xu;
  if (refs_u.cols() > 0) {
    Xu.resize(Ev, in.model->n_params());
    for (std::size_t i = 0; i < Eu; ++i) Xu.row(static_cast<Eigen::Index>(i)) = in.model->X.row(used[i]);
  }
  for (std::size_t c = 0; c < k; ++c) {
    const std::size_t m = total_acc.count[c];
    if (m == 0) continue;
    ClusterSummary s;
    s.id = cl.ids[c];
    s.pixels = m;
    out.labelled += m;
    s.mean.assign(E, kNaN);
    s.stderr_.assign(E, kNaN);
    const Eigen::VectorXd raw = total_acc.sum.col(static_cast<Eigen::Index>(c)) / static_cast<double>(m);
    Eigen::VectorXd mu(Ev);
    double step = norm.normalize(raw.data(), mu.data());
    if (!(step > 0)) step = 1, mu = raw;  // no edge to normalize by: the mean as it is
    for (std::size_t i = 0; i < Eu; ++i) {
      const auto ii = static_cast<Eigen::Index>(i);
      const double var = m > 1 ? std::max(0.0, (total_acc.sumsq(ii, static_cast<Eigen::Index>(c)) - m * raw(ii) * raw(ii)) / (m - 1.0)) : 0.0;
      s.mean[static_cast<std::size_t>(used[i])] = mu(ii);
      s.stderr_[static_cast<std::size_t>(used[i])] = std::sqrt(var / static_cast<double>(m)) / step;
    }
    if (Xu.size() > 0) {
      SolveOptions opt = in.fit;
      opt.n_free = in.model->n_background();
      const auto fit = solve(Xu.transpose() * Xu, Xu.transpose() * mu, mu.squaredNorm(), static_cast<int>(Eu), opt);
      if (fit.ok) {
        const auto K = in.model->n_refs();
        const Eigen::VectorXd cvec = fit.theta.tail(K);
        s.thickness = cvec.sum();
        s.residual = std::sqrt(fit.chi2 / static_cast<double>(Eu));
        if (s.thickness > 0) {
          for (Eigen::Index i = 0; i < K; ++i) s.fractions.push_back(cvec(i) / s.thickness);
          const Eigen::VectorXd sig = fraction_sigma(fit, opt.n_free);
          s.fraction_sigma.assign(sig.data(), sig.data() + sig.size());
          s.fitted = true;
        }
      }
    }
    out.clusters.push_back(std::move(s));
  }
  std::sort(out.clusters.begin(), out.clusters.end(), [](const auto& a, const auto& b) { return a.id < b.id; });

  // 8. Target transformation (Malinowski): the shapes are scaled spectra, so the data span
  // span{mean shape, principal components}; a reference that can be a component of the sample
  // has its shape in that span. Residual as RMS per point on unit-norm shapes and as a share.
  if (refs_u.cols() > 0) {
    Eigen::MatrixXd span(Ev, r + 1);
    span.col(0) = fs.mean;
    span.rightCols(r) = fs.basis;
    const Eigen::HouseholderQR<Eigen::MatrixXd> qr(span);
    const Eigen::MatrixXd Q = qr.householderQ() * Eigen::MatrixXd::Identity(Ev, r + 1);
    Eigen::VectorXd z(Ev);
    for (Eigen::Index kx = 0; kx < refs_u.cols(); ++kx) {
      const Eigen::VectorXd rk = refs_u.col(kx);
      shape(rk.data(), z.data());
      const Eigen::VectorXd res = z - Q * (Q.transpose() * z);
      const double rms = res.norm() / std::sqrt(static_cast<double>(Eu));
      pca.tt_residual.push_back(rms);
      pca.tt_ratio.push_back(z.norm() > 0 ? res.norm() / z.norm() : 0.0);
      pca.tt_plausible.push_back(rms < 3.0 * pca.noise_sigma);
    }
  }
  out.waiting.clear();
}

bool same_clustering(const SegmentationSettings& a, const SegmentationSettings& b) {
  return a.k == b.k && a.k_max == b.k_max && a.components == b.components && a.variance == b.variance &&
         a.max_components == b.max_components && a.spectral_weight == b.spectral_weight &&
         a.spatial_weight == b.spatial_weight && a.xrf_weight == b.xrf_weight && a.sample == b.sample &&
         a.noise_ratio == b.noise_ratio && a.seed == b.seed;
}

}  // namespace xanesd::science
