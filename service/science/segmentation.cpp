#include "science/segmentation.hpp"
#include "science/cancel.hpp"
#include "science/parallel.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
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
      return;
    } catch (const std::exception&) {
    }
    // find_e0 needs 5 points; with 4 energies in use the steepest rise over what there is.
    const double e0 = params.e0          ? *params.e0
                      : e.size() >= 5 ? find_e0(e, mean)
                                      : edge_energy(e, Eigen::Map<const Eigen::VectorXd>(mean.data(), static_cast<Eigen::Index>(mean.size())));
    for (std::size_t j = 0; j < e.size(); ++j)
      if (e[j] < e0 - 10.0) pre_.push_back(j);
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

 private:
  std::size_t n_;
  std::optional<PixelNormalizer> larch_;
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
    Z = Y;  // then the background subtracted in place: no image-sized temporary
    Z.noalias() -= (Y * Q_.transpose()) * B_.transpose();
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

// The feature map: PCA scores of the shape, then XRF channels, then position; each block
// scaled to total variance weight² over the sample, so weights mean what they say.
struct FeatureSpace {
  Eigen::VectorXd mean;     // Eu
  Eigen::MatrixXd basis;    // Eu × r
  double spectral_scale = 0;
  double spatial_scale = 0, row_mean = 0, col_mean = 0;
  std::vector<double> xrf_mean, xrf_scale;  // per channel (scale includes the block weight)
  int r = 0, xrf = 0;
  bool spatial = false;
  int dims() const { return r + (spatial ? 2 : 0) + xrf; }

  // The XRF and position blocks (after the r spectral features). Measured blocks (spectra,
  // XRF) come first: the automatic k compares their scatter with their noise; position has no
  // noise to compare with.
  // p: the pixel's index in the whole image (its position); xrf_values: its channel 0, channel c
  // at xrf_values[c·stride].
  void extras(std::size_t p, int cols, const float* xrf_values, std::size_t stride, double* f) const {
    int d = r;
    for (int c = 0; c < xrf; ++c) {
      const double v = xrf_values[static_cast<std::size_t>(c) * stride];
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

// Real images hold zingers, hot and dead pixels: the farthest 2 % of the sampled pixels are
// left out of the centres and of the scatter that chooses k (trimmed k-means), so a handful
// of wild pixels neither gets clusters of its own nor merges real domains. The price: a
// domain smaller than ~2 % of the image is not found as its own cluster.
constexpr double kTrim = 0.02;

// k-means (best of 3 starts) as a clustering without ids yet.
Clustering fresh_kmeans(const Rows& F, int k, Rng& rng) {
  auto km = kmeans(F, k, rng, 3, kTrim);
  Clustering c;
  c.centroids = std::move(km.centroids);
  c.assign = std::move(km.labels);
  return c;
}

// Regularized lower incomplete gamma P(a, x) by its power series (a, x of the size used here).
double gamma_p(double a, double x) {
  if (x <= 0) return 0;
  double term = 1.0 / a, sum = term;
  for (int n = 1; n < 1000 && term > sum * 1e-15; ++n) sum += (term *= x / (a + n));
  return std::min(1.0, sum * std::exp(-x + a * std::log(x) - std::lgamma(a)));
}

// E[χ²_m | χ²_m below its (1 − kTrim) quantile] / m: what trimming leaves of pure noise's mean
// (E[X·1{X ≤ q}] = m·F_{m+2}(q) for X ~ χ²_m).
double trimmed_chi2_share(int m) {
  const double a = 0.5 * m;
  double lo = 0, hi = m + 20.0 * std::sqrt(static_cast<double>(m)) + 20.0;
  for (int i = 0; i < 200; ++i) {  // the (1 − kTrim) quantile q of χ²_m by bisection
    const double mid = 0.5 * (lo + hi);
    (gamma_p(a, 0.5 * mid) < 1.0 - kTrim ? lo : hi) = mid;
  }
  return gamma_p(a + 1.0, 0.5 * lo) / (1.0 - kTrim);
}

// Within-cluster scatter of the first m feature columns (the measured blocks), per dimension,
// over all but the farthest kTrim of the points.
double measured_scatter(const Rows& F, const Clustering& c, int m) {
  const Eigen::Index d = F.cols();
  std::vector<double> r(static_cast<std::size_t>(F.rows()));
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    const double* x = F.data() + i * d;
    const double* cc = c.centroids.data() + c.assign[static_cast<std::size_t>(i)] * d;
    double s = 0;
    for (int j = 0; j < m; ++j) s += (x[j] - cc[j]) * (x[j] - cc[j]);
    r[static_cast<std::size_t>(i)] = s;
  }
  const auto keep = static_cast<std::size_t>(std::ceil((1.0 - kTrim) * static_cast<double>(r.size())));
  std::nth_element(r.begin(), r.begin() + static_cast<std::ptrdiff_t>(keep - 1), r.end());
  double s = 0;
  for (std::size_t i = 0; i < keep; ++i) s += r[i];
  // A trimmed mean of χ²-like terms underestimates the full mean: rescale by what trimming
  // removes from pure noise (Gaussian, m dimensions), so "scatter = noise" still reads 1.
  return s / static_cast<double>(keep * static_cast<std::size_t>(m)) / trimmed_chi2_share(m);
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

// The energies in use: indices into the scan's energies and their values.
struct EnergiesInUse {
  std::vector<int> index;
  std::vector<double> e;
  std::size_t size() const { return index.size(); }
};

// The pixels this process segments: in one process the whole image; in an MPI job a rank's own
// rows (its arrays' halo rows belong to its neighbours), the image-level steps combining the
// ranks' (in.part). Sampled pixels are image indices: local index + offset.
struct OwnPixels {
  std::size_t begin = 0, end = 0;  // local pixel indices
  std::size_t offset = 0;          // image index of local pixel 0
  std::size_t image_npix = 0;
  const ImagePart* part = nullptr;  // set when several parts share the image
  bool shared() const { return part != nullptr; }
  std::size_t rows_begin(int cols) const { return begin / static_cast<std::size_t>(cols); }
  std::size_t rows_end(int cols) const { return end / static_cast<std::size_t>(cols); }
};

OwnPixels own_pixels(const SegmentInput& in) {
  OwnPixels o;
  o.end = o.image_npix = in.npix;
  if (in.part && in.part->shared() && in.cols > 0) {
    const auto cols = static_cast<std::size_t>(in.cols);
    o.part = in.part;
    o.begin = std::min(in.part->begin, in.npix), o.end = std::min(in.part->end, in.npix);
    o.offset = static_cast<std::size_t>(in.slices.first_row) * cols;
    o.image_npix = static_cast<std::size_t>(in.part->image_rows) * cols;
  }
  return o;
}

// Pixels measured (not NaN) at each of the scan's energies.
std::vector<std::size_t> measured_per_energy(const SegmentInput& in, const OwnPixels& own) {
  const std::size_t E = in.energies->size(), P = in.npix;
  std::vector<std::size_t> measured(E, 0);
  std::vector<std::vector<std::size_t>> part(static_cast<std::size_t>(std::max(1, in.threads)), std::vector<std::size_t>(E, 0));
  parallel_ranges(own.end - own.begin, in.threads, 16384, [&](int t, std::size_t b, std::size_t en) {
    b += own.begin, en += own.begin;
    for (std::size_t j = 0; j < E; ++j) {
      if (in.ready && !in.ready[j]) continue;  // counted as not measured: never read
      const float* plane = in.planes + j * P;
      std::size_t c = 0;
      for (std::size_t p = b; p < en; ++p) c += !std::isnan(plane[p]);
      part[static_cast<std::size_t>(t)][j] = c;
    }
  });
  std::vector<double> total(E, 0.0);  // counts: exact in doubles
  for (const auto& v : part)
    for (std::size_t j = 0; j < E; ++j) total[j] += static_cast<double>(v[j]);
  if (own.shared()) own.part->sum(total);
  for (std::size_t j = 0; j < E; ++j) measured[j] = static_cast<std::size_t>(total[j]);
  return measured;
}

// 1. The energies in use: measured by at least half as many pixels as the best-measured one.
EnergiesInUse energies_in_use(const SegmentInput& in, const OwnPixels& own) {
  const std::vector<std::size_t> measured = measured_per_energy(in, own);
  const std::size_t most = *std::max_element(measured.begin(), measured.end());
  EnergiesInUse u;
  for (std::size_t j = 0; j < measured.size(); ++j)
    if (most > 0 && measured[j] * 2 >= most) u.index.push_back(static_cast<int>(j));
  for (int j : u.index) u.e.push_back((*in.energies)[static_cast<std::size_t>(j)]);
  return u;
}

// Copies the spectra of pixels p0 … p0 + nb − 1 at the energies in use into block (pixel by
// pixel, used.size() values each) and marks which pixels are measured at all those energies.
void read_block(const SegmentInput& in, const std::vector<int>& used, std::size_t p0, std::size_t nb, float* block, std::uint8_t* complete) {
  const std::size_t Eu = used.size();
  std::fill(complete, complete + nb, 1);
  for (std::size_t i = 0; i < Eu; ++i) {
    const float* plane = in.planes + static_cast<std::size_t>(used[i]) * in.npix + p0;
    for (std::size_t j = 0; j < nb; ++j) {
      const float v = plane[j];
      complete[j] &= !std::isnan(v);
      block[j * Eu + i] = v;
    }
  }
}

// The sampled pixels the PCA and k-means are fitted on; row i of Y and X and sizes[i] belong
// to pixel pixels[i] (an image index).
struct Sample {
  std::vector<std::size_t> pixels;
  Rows Y;                     // raw spectra on the energies in use
  Rows X;                     // their shapes (ShapeTransform)
  std::vector<double> sizes;  // their edge sizes
  std::vector<float> xrf;     // C per pixel (in.xrf_channels; empty without XRF)
};

// 2. A random sample of complete pixels (with material, when the scan has a mask), drawn as
// runs of kRun consecutive pixels: one cache line per plane per run instead of one per pixel
// (random single pixels cost a memory miss per energy each), and adjacent pairs within a run
// measure the noise (feature_noise).
// The runs are drawn over the whole image, a batch of draws at a time: each part marks which of
// their pixels it owns are usable, the parts' marks are summed, and the draws are then walked in
// order, so every part (and one process) takes the same pixels and leaves `rng` where one
// process's draw-by-draw loop would. The chosen pixels' values are then gathered.
void draw_sample(const SegmentInput& in, const OwnPixels& own, const std::vector<int>& used, std::size_t want, Rng& rng, Sample& s) {
  constexpr std::size_t kRun = 16;
  const std::size_t Eu = used.size(), P = own.image_npix, lo = own.offset + own.begin, hi = own.offset + own.end;
  const std::size_t runs = (P + kRun - 1) / kRun;
  const bool all = runs * kRun <= want;
  const std::size_t attempts = all ? runs : std::min<std::size_t>(runs * 2, (want / kRun + 1) * 20);
  std::vector<std::uint8_t> taken(runs, 0);
  std::vector<float> block(Eu * kRun);
  std::vector<std::uint8_t> complete(kRun);
  std::vector<std::size_t> chosen;  // image indices, in draw order
  Rng ahead = rng;
  std::size_t draws = 0;
  for (std::size_t a = 0; a < attempts && chosen.size() < want;) {
    // Enough draws to fill the sample if every pixel of their runs were usable.
    const std::size_t batch = std::min(attempts - a, std::max<std::size_t>(64, 2 * ((want - chosen.size()) / kRun + 1)));
    std::vector<std::size_t> run_of(batch, runs);  // runs: a draw of a run already taken
    for (std::size_t i = 0; i < batch; ++i) {
      const std::size_t run = all ? a + i : static_cast<std::size_t>(ahead.below(static_cast<std::uint64_t>(runs)));
      if (!taken[run]) taken[run] = 1, run_of[i] = run;
    }
    std::vector<double> usable(batch * kRun, 0.0);
    for (std::size_t i = 0; i < batch; ++i) {
      if (run_of[i] == runs) continue;
      const std::size_t p0 = std::max(run_of[i] * kRun, lo), p1 = std::min({run_of[i] * kRun + kRun, P, hi});
      if (p0 >= p1) continue;
      const std::size_t local0 = p0 - own.offset;
      read_block(in, used, local0, p1 - p0, block.data(), complete.data());
      for (std::size_t j = 0; j < p1 - p0; ++j)
        usable[i * kRun + (p0 - run_of[i] * kRun) + j] = complete[j] && !(in.material && !in.material[local0 + j]);
    }
    if (own.shared()) own.part->sum(usable);
    for (std::size_t i = 0; i < batch && chosen.size() < want; ++i, ++draws) {
      if (run_of[i] == runs) continue;
      for (std::size_t j = 0; j < kRun && chosen.size() < want; ++j)
        if (usable[i * kRun + j] > 0) chosen.push_back(run_of[i] * kRun + j);
    }
    a += batch;
  }
  if (!all)
    for (std::size_t i = 0; i < draws; ++i) rng.below(static_cast<std::uint64_t>(runs));
  // The chosen pixels' spectra and XRF, each part's in image order (the parts' rows are in image
  // order too), then put in draw order. s's matrices keep their memory when the size is the
  // same as the last update's (fresh pages cost more than the copy on some machines).
  const std::size_t C = in.xrf && in.xrf_channels > 0 ? static_cast<std::size_t>(in.xrf_channels) : 0, width = Eu + C;
  std::vector<std::size_t> order(chosen.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return chosen[x] < chosen[y]; });
  s.pixels = chosen;
  s.Y.resize(static_cast<Eigen::Index>(chosen.size()), static_cast<Eigen::Index>(Eu));
  s.xrf.resize(chosen.size() * C);
  if (!own.shared()) {  // every chosen pixel is this process's: straight into its row
    for (std::size_t i : order) {
      const std::size_t p = chosen[i] - own.offset;
      double* y = s.Y.data() + i * Eu;
      for (std::size_t e = 0; e < Eu; ++e) y[e] = in.planes[static_cast<std::size_t>(used[e]) * in.npix + p];
      for (std::size_t c = 0; c < C; ++c) s.xrf[i * C + c] = in.xrf[c * in.npix + p];
    }
    return;
  }
  std::vector<float> values;
  values.reserve(chosen.size() * width);
  for (std::size_t i : order) {
    if (chosen[i] < lo || chosen[i] >= hi) continue;
    const std::size_t p = chosen[i] - own.offset;
    for (int e : used) values.push_back(in.planes[static_cast<std::size_t>(e) * in.npix + p]);
    for (std::size_t c = 0; c < C; ++c) values.push_back(in.xrf[c * in.npix + p]);
  }
  values = own.part->gather(std::move(values));
  if (values.size() != chosen.size() * width) throw std::logic_error("segmentation: the gathered sample has the wrong size");
  for (std::size_t k = 0; k < order.size(); ++k) {
    const float* v = values.data() + k * width;
    const auto row = static_cast<Eigen::Index>(order[k]);
    for (std::size_t e = 0; e < Eu; ++e) s.Y(row, static_cast<Eigen::Index>(e)) = v[e];
    std::copy(v + Eu, v + width, s.xrf.begin() + static_cast<std::ptrdiff_t>(order[k] * C));
  }
}

// 3. Shapes of the sampled spectra (and the edge size of each), sizes measured along the
// sample's mean detrended spectrum; returns the transform.
ShapeTransform shape_sample(const std::vector<double>& eu, Sample& s) {
  ShapeTransform shape(eu);
  // The shapes are detrended as matrices, then sized and scaled.
  shape.detrend_rows(s.Y, s.X);
  shape.set_direction(s.X.colwise().mean().transpose());
  const Eigen::VectorXd size_of = s.X * shape.direction();
  s.sizes.assign(size_of.data(), size_of.data() + size_of.size());
  for (Eigen::Index i = 0; i < s.X.rows(); ++i)
    if (size_of(i) > 0) s.X.row(i) /= size_of(i);
  return shape;
}

// The edge size material must exceed. Without a mask, material = an edge size above 5 % of
// its 99th percentile (as mask.*'s default).
double material_size_min(const SegmentInput& in, std::vector<double> sizes) {
  if (in.material) return 0;
  std::sort(sizes.begin(), sizes.end());
  return 0.05 * sizes[static_cast<std::size_t>(0.99 * static_cast<double>(sizes.size() - 1))];
}

// Keeps the sampled pixels whose edge size is above size_min, in place (rows only move up).
void keep_with_edge(Sample& s, double size_min) {
  const std::size_t C = s.pixels.empty() ? 0 : s.xrf.size() / s.pixels.size();
  const Eigen::Index n = s.X.rows();
  Eigen::Index kept = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    const auto from = static_cast<std::size_t>(i);
    if (!(s.sizes[from] > size_min)) continue;
    if (kept != i) {
      const auto to = static_cast<std::size_t>(kept);
      s.X.row(kept) = s.X.row(i);
      s.Y.row(kept) = s.Y.row(i);
      s.pixels[to] = s.pixels[from], s.sizes[to] = s.sizes[from];
      std::copy_n(s.xrf.begin() + static_cast<std::ptrdiff_t>(from * C), C, s.xrf.begin() + static_cast<std::ptrdiff_t>(to * C));
    }
    ++kept;
  }
  if (kept == n) return;
  // Row-major: the leading rows stay where they are.
  s.X.conservativeResize(kept, Eigen::NoChange);
  s.Y.conservativeResize(kept, Eigen::NoChange);
  s.pixels.resize(static_cast<std::size_t>(kept)), s.sizes.resize(static_cast<std::size_t>(kept));
  s.xrf.resize(static_cast<std::size_t>(kept) * C);
}

// Cluster means are edge-normalized for display and fitting with ranges from the image's mean.
Normalization mean_normalization(const std::vector<double>& eu, const Rows& Y, const PreEdgeParams& edge) {
  const Eigen::RowVectorXd raw_mean = Y.colwise().mean();
  return Normalization(eu, std::vector<double>(raw_mean.data(), raw_mean.data() + raw_mean.size()), edge);
}

// The LCF model on the energies in use; both empty without references.
struct ModelInUse {
  Eigen::MatrixXd X;     // Eu × M, the model's rows (background columns, then references)
  Eigen::MatrixXd refs;  // Eu × K, the references
};

ModelInUse model_in_use(const SegmentInput& in, const std::vector<int>& used) {
  ModelInUse m;
  if (!in.model || in.model->n_refs() <= 0) return m;
  m.X.resize(static_cast<Eigen::Index>(used.size()), in.model->n_params());
  for (std::size_t i = 0; i < used.size(); ++i) m.X.row(static_cast<Eigen::Index>(i)) = in.model->X.row(used[i]);
  m.refs = m.X.rightCols(in.model->n_refs());
  return m;
}

// Rows for the PCA while the sample is too small: shapes of random mixtures of the references
// (Dirichlet(1) fractions).
Eigen::MatrixXd reference_mixtures(const Eigen::MatrixXd& refs_u, const ShapeTransform& shape, Rng& rng) {
  const Eigen::Index m = 500;
  Rows basis_data(m, refs_u.rows());  // row-major: shape() writes each mixture as one contiguous row
  for (Eigen::Index i = 0; i < m; ++i) {
    Eigen::VectorXd f(refs_u.cols());
    for (Eigen::Index k = 0; k < f.size(); ++k) f(k) = rng.exponential();  // Dirichlet(1)
    const Eigen::VectorXd mix = refs_u * (f / f.sum());
    shape(mix.data(), basis_data.row(i).data());
  }
  return basis_data;
}

// At most kPcaRows spectra, evenly spread over the sample: an Eu×Eu covariance is well
// estimated from a few thousand, and this product dominated small images' updates.
Eigen::MatrixXd spread_rows(const Rows& X) {
  constexpr Eigen::Index kPcaRows = 4000;
  const Eigen::Index n = X.rows();
  const Eigen::Index stride = std::max<Eigen::Index>(1, n / kPcaRows);
  Eigen::MatrixXd basis_data((n + stride - 1) / stride, X.cols());
  for (Eigen::Index i = 0; i < basis_data.rows(); ++i) basis_data.row(i) = X.row(i * stride);
  return basis_data;
}

// The rows without the wildest kTrim of them, for the PCA: a zinger (one energy many times too
// bright) is a direction of its own with a large eigenvalue, and a few of them push the real
// domains' differences out of the leading components (the features k-means sees). A row's
// wildness is its largest robust z-score over the energies, |x − median| / (1.4826·MAD) per
// column; real domains differ from the median by a few such units, a zinger by hundreds.
Eigen::MatrixXd without_wild_rows(const Eigen::MatrixXd& data) {
  const Eigen::Index n = data.rows(), m = data.cols();
  if (n < 50) return data;
  Eigen::RowVectorXd median(m), scale(m);
  std::vector<double> col(static_cast<std::size_t>(n));
  auto median_of = [&](std::vector<double>& v) {
    const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
    std::nth_element(v.begin(), mid, v.end());
    return *mid;
  };
  for (Eigen::Index j = 0; j < m; ++j) {
    for (Eigen::Index i = 0; i < n; ++i) col[static_cast<std::size_t>(i)] = data(i, j);
    median(j) = median_of(col);
    for (Eigen::Index i = 0; i < n; ++i) col[static_cast<std::size_t>(i)] = std::abs(data(i, j) - median(j));
    scale(j) = 1.4826 * median_of(col);
  }
  const double floor = 1e-12 * std::max(1e-300, scale.maxCoeff());
  // A column at a time (the matrix is column-major): each value's z-score as before, their
  // maximum per row in any order.
  std::vector<double> wild(static_cast<std::size_t>(n), 0.0);
  for (Eigen::Index j = 0; j < m; ++j) {
    const double med = median(j), s = std::max(scale(j), floor);
    const double* __restrict x = data.col(j).data();
    double* __restrict w = wild.data();
    for (Eigen::Index i = 0; i < n; ++i) w[i] = std::max(w[i], std::abs(x[i] - med) / s);
  }
  std::vector<double> sorted = wild;
  const auto keep = static_cast<std::size_t>(std::ceil((1.0 - kTrim) * static_cast<double>(n)));
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(keep - 1), sorted.end());
  const double limit = sorted[keep - 1];
  Eigen::MatrixXd kept(static_cast<Eigen::Index>(keep), m);
  Eigen::Index r = 0;
  for (Eigen::Index i = 0; i < n && r < kept.rows(); ++i)
    if (wild[static_cast<std::size_t>(i)] <= limit) kept.row(r++) = data.row(i);
  return kept.topRows(r);
}

struct Pca {
  Eigen::RowVectorXd mean;  // of the rows it was computed from
  Eigen::VectorXd lambda;   // eigenvalues, descending, ≥ 0
  Eigen::MatrixXd vectors;  // their eigenvectors, as columns
  double total = 0;         // Σ lambda
  Eigen::Index rows = 0;    // spectra it was computed from
  double sigma2 = 0;        // noise floor: per-point noise variance of the shapes
};

// Eigen-decomposition of the covariance of data's rows.
Pca principal_components(const Eigen::MatrixXd& data) {
  Pca pca;
  pca.rows = data.rows();
  pca.mean = data.colwise().mean();
  const Eigen::MatrixXd centred = data.rowwise() - pca.mean;
  const Eigen::MatrixXd cov = (centred.transpose() * centred) / static_cast<double>(std::max<Eigen::Index>(1, data.rows() - 1));
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(cov);
  pca.lambda = eig.eigenvalues().reverse().cwiseMax(0.0);
  pca.vectors = eig.eigenvectors().rowwise().reverse();
  pca.total = pca.lambda.sum();
  return pca;
}

// Noise floor: with few species most eigenvalues are noise, so their median estimates σ²;
// above the Marchenko–Pastur edge σ²(1 + √(Eu/n))² (×1.5 margin) a component carries signal.
double noise_floor(const Pca& pca, const Rows& X, Eigen::Index refs, bool seeded_from_references) {
  const Eigen::Index Ev = pca.lambda.size();
  std::vector<double> sorted(pca.lambda.data(), pca.lambda.data() + Ev);
  std::sort(sorted.begin(), sorted.end());
  double sigma2 = sorted[sorted.size() / 2];
  if (seeded_from_references) {  // reference mixtures have no noise: measure it on the pixels
    const int rs = std::max(1, std::min<int>(refs - 1, static_cast<int>(Ev) - 1));
    const Eigen::MatrixXd V = pca.vectors.leftCols(rs);
    const Eigen::MatrixXd c = X.rowwise() - pca.mean;
    sigma2 = (c - c * V * V.transpose()).squaredNorm() / static_cast<double>(X.rows() * (Ev - rs));
  }
  return sigma2;
}

// Eigenvalues above the Marchenko–Pastur edge of the noise floor (and not numerically 0).
int significant_components(const Pca& pca) {
  const Eigen::Index Ev = pca.lambda.size();
  const double edge = 1.5 * pca.sigma2 * std::pow(1.0 + std::sqrt(static_cast<double>(Ev) / static_cast<double>(pca.rows)), 2);
  int significant = 0;
  for (Eigen::Index i = 0; i < Ev; ++i) significant += pca.lambda(i) > edge && pca.lambda(i) > 1e-12 * pca.total;
  return significant;
}

// Components used as features: the setting, else enough for the explained-variance target but
// no more than are significant (at least 1) nor than max_components.
int choose_components(const PcaDiagnostics& diag, Eigen::Index Ev, const SegmentationSettings& settings) {
  int r = settings.components;
  if (r <= 0) {
    double cum = 0;
    r = 0;
    while (r < Ev && cum < settings.variance) cum += diag.explained[static_cast<std::size_t>(r++)];
    r = std::min({r, std::max(1, diag.significant), settings.max_components});
  }
  return std::max(1, std::min<int>(r, static_cast<int>(Ev)));
}

// 4. PCA of the shapes; from reference mixtures while the sample is too small
// to estimate an Eu×Eu covariance. Fills diag's scree, noise floor and components.
Pca fit_pca(const Rows& X, const Eigen::MatrixXd& refs_u, const ShapeTransform& shape, const SegmentationSettings& settings, Rng& rng,
            PcaDiagnostics& diag) {
  const Eigen::Index n = X.rows(), Ev = X.cols();
  diag.seeded_from_references = n < 10 * Ev && refs_u.cols() > 1;
  Pca pca = principal_components(diag.seeded_from_references ? reference_mixtures(refs_u, shape, rng)
                                                                : without_wild_rows(spread_rows(X)));
  for (Eigen::Index i = 0; i < Ev; ++i) diag.explained.push_back(pca.total > 0 ? pca.lambda(i) / pca.total : 0.0);
  pca.sigma2 = noise_floor(pca, X, refs_u.cols(), diag.seeded_from_references);
  diag.noise_sigma = std::sqrt(pca.sigma2);
  diag.significant = significant_components(pca);
  diag.components = choose_components(diag, Ev, settings);
  return pca;
}

// The position block's centre and scale over the sampled pixels.
void scale_position(FeatureSpace& fs, const std::vector<std::size_t>& sample, int cols, double weight) {
  fs.spatial = true;
  double sr = 0, sc = 0, qr = 0, qc = 0;
  for (auto p : sample) {
    const double rr = static_cast<double>(p / static_cast<std::size_t>(cols)), cc = static_cast<double>(p % static_cast<std::size_t>(cols));
    sr += rr, sc += cc, qr += rr * rr, qc += cc * cc;
  }
  const double m = static_cast<double>(sample.size());
  fs.row_mean = sr / m, fs.col_mean = sc / m;
  const double var = (qr / m - fs.row_mean * fs.row_mean) + (qc / m - fs.col_mean * fs.col_mean);
  fs.spatial_scale = var > 0 ? weight / std::sqrt(var) : 0.0;
}

// The XRF block's per-channel centres and scales over the sampled pixels.
void scale_xrf(FeatureSpace& fs, const Sample& sample, int channels, double weight) {
  fs.xrf = channels;
  const auto C = static_cast<std::size_t>(channels);
  for (int c = 0; c < fs.xrf; ++c) {
    double s = 0, q = 0, m = 0;
    for (std::size_t i = 0; i < sample.pixels.size(); ++i) {
      const double v = sample.xrf[i * C + static_cast<std::size_t>(c)];
      if (std::isfinite(v)) s += v, q += v * v, ++m;
    }
    const double mu = m > 0 ? s / m : 0, var = m > 1 ? q / m - mu * mu : 0;
    fs.xrf_mean.push_back(mu);
    fs.xrf_scale.push_back(var > 0 ? weight / std::sqrt(var * fs.xrf) : 0.0);
  }
}

// The feature space of the first r components, plus position and XRF when they are weighted.
FeatureSpace feature_space(const Pca& pca, int r, const SegmentationSettings& settings, const SegmentInput& in,
                           const Sample& sample) {
  FeatureSpace fs;
  fs.mean = pca.mean.transpose();
  fs.basis = pca.vectors.leftCols(r);
  fs.r = r;
  const double spectral_var = pca.lambda.head(r).sum();
  fs.spectral_scale = spectral_var > 0 ? settings.spectral_weight / std::sqrt(spectral_var) : 0.0;
  if (settings.spatial_weight > 0 && in.cols > 0) scale_position(fs, sample.pixels, in.cols, settings.spatial_weight);
  if (settings.xrf_weight > 0 && in.xrf && in.xrf_channels > 0) scale_xrf(fs, sample, in.xrf_channels, settings.xrf_weight);
  return fs;
}

// The sampled pixels' features, one row each.
Rows features_of(const FeatureSpace& fs, const Sample& s, int cols) {
  const auto n = static_cast<Eigen::Index>(s.pixels.size());
  Rows F(n, fs.dims());
  F.leftCols(fs.r) = ((s.X.rowwise() - fs.mean.transpose()) * fs.basis) * fs.spectral_scale;
  const std::size_t C = s.pixels.empty() ? 0 : s.xrf.size() / s.pixels.size();
  for (Eigen::Index i = 0; i < n; ++i) {
    const auto row = static_cast<std::size_t>(i);
    fs.extras(s.pixels[row], cols, s.xrf.data() + row * C, 1, F.row(i).data());
  }
  return F;
}

// Noise in feature space, measured where it lives: adjacent pixels almost always share a
// composition, so half the squared difference of their spectral features is noise (robust:
// the median over the adjacent pairs the sampled runs hold; boundaries are outliers). The
// first m features are the measured ones; without neighbours, `pca_floor`.
double feature_noise(const Rows& F, int m, const std::vector<std::size_t>& sample, int cols, double pca_floor) {
  double noise_var = 0;
  std::vector<std::vector<double>> diff2(static_cast<std::size_t>(m));
  for (Eigen::Index i = 0; i + 1 < F.rows(); ++i) {
    const std::size_t p = sample[static_cast<std::size_t>(i)], q = sample[static_cast<std::size_t>(i + 1)];
    if (q != p + 1 || cols < 2 || q % static_cast<std::size_t>(cols) == 0) continue;
    for (int j = 0; j < m; ++j) diff2[static_cast<std::size_t>(j)].push_back(0.5 * std::pow(F(i + 1, j) - F(i, j), 2));
  }
  for (auto& v : diff2) {
    if (v.empty()) continue;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    noise_var += v[v.size() / 2] / 0.4549 / m;  // median of χ²₁ is 0.4549
  }
  if (noise_var <= 0) noise_var = pca_floor;  // no neighbours: the PCA floor
  return noise_var;
}

// Within-cluster scatter of the measured features relative to their noise.
struct ScatterRatio {
  const Rows& F;
  int measured;
  double noise_var;
  double operator()(const Clustering& c) const { return noise_var > 0 ? measured_scatter(F, c, measured) / noise_var : INFINITY; }
};

// The previous update's clusters, rebuilt from the ids the sampled pixels had (ids with at
// least 3 of them) and refined on this update's features. Empty on a cold start.
Clustering previous_clustering(const Rows& F, const std::vector<std::uint8_t>& previous_of_sample) {
  const Eigen::Index d = F.cols();
  Clustering kept;
  std::map<int, std::pair<Eigen::RowVectorXd, int>> acc;
  for (std::size_t i = 0; i < previous_of_sample.size(); ++i) {
    const int id = previous_of_sample[i];
    if (id == kBackground || id == kUnassigned) continue;
    auto [it, fresh] = acc.try_emplace(id, Eigen::RowVectorXd::Zero(d), 0);
    it->second.first += F.row(static_cast<Eigen::Index>(i));
    ++it->second.second;
  }
  for (auto& [id, a] : acc)
    if (a.second >= 3) {
      kept.centroids.conservativeResize(kept.centroids.rows() + 1, d);
      kept.centroids.row(kept.centroids.rows() - 1) = a.first / a.second;
      kept.ids.push_back(id);
    }
  if (!kept.ids.empty()) {
    lloyd(F, kept.centroids, kept.assign, 100, kTrim);
    drop_empty(kept);
  }
  return kept;
}

// k: the smallest whose within-cluster scatter of the measured features (PCA scores, XRF) is
// within noise_ratio × the noise (the clusters then explain all structure above noise; k = 1
// when the image's own scatter already is). The previous clusters are kept while their k
// still passes.
Clustering choose_clustering(const Rows& F, Clustering kept, const ScatterRatio& ratio, const SegmentationSettings& settings, Rng& rng) {
  const int k_prev = static_cast<int>(kept.ids.size());
  if (settings.k > 0) {
    if (k_prev == settings.k) return kept;
    return fresh_kmeans(F, settings.k, rng);
  }
  // With merging, the k-means clusters are bins grouped into domains afterwards: up to 2·k_max.
  const int k_max = std::min(254, std::max(2, settings.k_max) * (settings.merge ? 2 : 1));
  const double tau = settings.noise_ratio;
  // Search upwards from `from` for the first k that passes (k_max if none does).
  auto first_passing = [&](int from) {
    Clustering c;
    for (int k = from; k <= k_max; ++k) {
      c = fresh_kmeans(F, k, rng);
      if (ratio(c) <= tau) break;
    }
    return c;
  };
  if (k_prev == 0 || k_prev > k_max) return first_passing(1);
  if (ratio(kept) <= 1.15 * tau) {
    // The previous clusters still (nearly: a 15 % band against flicker) explain the data;
    // one fewer replaces them only if it passes comfortably. One fresh k-means per update.
    if (k_prev > 1) {
      auto fewer = fresh_kmeans(F, k_prev - 1, rng);
      if (ratio(fewer) <= tau / 1.15) return fewer;
    }
    return kept;
  }
  if (k_prev < k_max) return first_passing(k_prev + 1);  // new structure (more energies, more of the image)
  // Already at k_max and not passing (a gradient needs more bins than k_max): keep whichever
  // of the previous clusters and a fresh k-means fits better, so an early, poor clustering
  // (made when few energies were in) is not kept forever.
  auto fresh = fresh_kmeans(F, k_max, rng);
  return ratio(fresh) < ratio(kept) ? fresh : kept;
}

// 5. k-means with automatic k (choose_clustering), warm-started from the previous update's
// clusters; a new clustering inherits ids by overlap, so a domain keeps its id and colour
// while the map refines. previous_of_sample: the sampled pixels' previous labels (empty on a
// cold start).
Clustering cluster_sample(const Rows& F, const std::vector<std::uint8_t>& previous_bins_of_sample, const ScatterRatio& ratio,
                          const SegmentationSettings& settings, Rng& rng) {
  return choose_clustering(F, previous_clustering(F, previous_bins_of_sample), ratio, settings, rng);
}

// Domains: the k-means bins grouped (merge_bins); group per bin row, ids per group.
struct Domains {
  std::vector<int> group;  // per bin (centroid row): its domain, 0..count−1
  int count = 0;
  std::vector<int> ids;    // per domain: its cluster id
};

Domains identity_domains(const Clustering& bins) {
  Domains d;
  d.count = static_cast<int>(bins.centroids.rows());
  for (int i = 0; i < d.count; ++i) d.group.push_back(i);
  return d;
}

// The filled-segment test of two bins: project their pixels on the segment between the centres
// (t = 0 at bin a, 1 at bin b) and compare the density in its middle fifth with that near the
// less populated end. One continuous cloud that k-means cut (noise, or a composition that
// drifts continuously through both) fills the middle; two distinct compositions leave it
// nearly empty (two blobs 4σ apart: ~0.14; a uniform gradient: ~1).
double fill_ratio(const Rows& F, const Clustering& bins, int a, int b) {
  const Eigen::Index d = F.cols();
  const Eigen::RowVectorXd ca = bins.centroids.row(a), v = bins.centroids.row(b) - ca;
  const double vv = v.squaredNorm();
  if (!(vv > 0)) return INFINITY;
  std::size_t mid = 0, end_a = 0, end_b = 0;
  for (Eigen::Index i = 0; i < F.rows(); ++i) {
    const int l = bins.assign[static_cast<std::size_t>(i)];
    if (l != a && l != b) continue;
    double t = 0;
    const double* x = F.data() + i * d;
    for (Eigen::Index j = 0; j < d; ++j) t += (x[j] - ca(j)) * v(j);
    t /= vv;
    mid += t > 0.4 && t < 0.6;
    end_a += t > -0.1 && t < 0.1;
    end_b += t > 0.9 && t < 1.1;
  }
  return static_cast<double>(mid) / static_cast<double>(std::max<std::size_t>(1, std::min(end_a, end_b)));
}

constexpr double kFillMerge = 0.3;

void fit_mean(const Eigen::VectorXd& mu, const Eigen::MatrixXd& Xu, const SegmentInput& in, ClusterSummary& s);

// Groups the bins into domains (automatic k): union of pairs whose segment is filled
// (fill_ratio), and, with references, of bins whose mean spectra need the same references
// (the LCF support of each bin's mean, fractions ≥ merge_fraction: a composition drifting
// smoothly between the same species, whereas a domain of other species, or of one species
// more or fewer, needs a different set).
Domains merge_bins(const Rows& F, const Clustering& bins, const Rows& Y, const std::vector<double>& sizes, const Normalization& norm,
                   const Eigen::MatrixXd& Xu, const SegmentInput& in, double merge_fraction, bool chemistry) {
  const int k = static_cast<int>(bins.centroids.rows());
  std::vector<int> parent(static_cast<std::size_t>(k));
  for (int i = 0; i < k; ++i) parent[static_cast<std::size_t>(i)] = i;
  auto find = [&](int a) {
    while (parent[static_cast<std::size_t>(a)] != a) a = parent[static_cast<std::size_t>(a)] = parent[static_cast<std::size_t>(parent[static_cast<std::size_t>(a)])];
    return a;
  };
  auto unite = [&](int a, int b) { parent[static_cast<std::size_t>(find(a))] = find(b); };
  // Chemistry: each bin's mean spectrum (spectra brought to a common edge size) fitted.
  std::vector<std::vector<int>> support(static_cast<std::size_t>(k));
  std::vector<int> dominant(static_cast<std::size_t>(k), -1);
  if (Xu.size() > 0) {
    Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(Y.cols(), k);
    std::vector<std::size_t> count(static_cast<std::size_t>(k), 0);
    for (Eigen::Index i = 0; i < Y.rows(); ++i) {
      const int l = bins.assign[static_cast<std::size_t>(i)];
      sum.col(l) += Y.row(i).transpose() / sizes[static_cast<std::size_t>(i)];
      ++count[static_cast<std::size_t>(l)];
    }
    for (int c = 0; c < k; ++c) {
      if (count[static_cast<std::size_t>(c)] < 3) continue;
      const Eigen::VectorXd raw = sum.col(c) / static_cast<double>(count[static_cast<std::size_t>(c)]);
      Eigen::VectorXd mu(raw.size());
      if (!(norm.normalize(raw.data(), mu.data()) > 0)) continue;
      ClusterSummary s;
      fit_mean(mu, Xu, in, s);
      if (!s.fitted) continue;
      for (std::size_t r = 0; r < s.fractions.size(); ++r) {
        if (s.fractions[r] >= merge_fraction) support[static_cast<std::size_t>(c)].push_back(static_cast<int>(r));
        if (s.fractions[r] >= 0.5) dominant[static_cast<std::size_t>(c)] = static_cast<int>(r);
      }
    }
  }
  for (int a = 0; a < k; ++a)
    for (int b = a + 1; b < k; ++b) {
      const auto& sa = support[static_cast<std::size_t>(a)];
      const auto& sb = support[static_cast<std::size_t>(b)];
      // One composition drifting between two species: the same majority species and, together,
      // no more than two species (e.g. pure A, A + 3 % B and A + 30 % B).
      std::vector<int> both = sa;
      both.insert(both.end(), sb.begin(), sb.end());
      std::sort(both.begin(), both.end());
      both.erase(std::unique(both.begin(), both.end()), both.end());
      const bool same_majority = dominant[static_cast<std::size_t>(a)] >= 0 && dominant[static_cast<std::size_t>(a)] == dominant[static_cast<std::size_t>(b)];
      const bool drift = chemistry && same_majority && (sa == sb || both.size() <= 2);
      if (drift || fill_ratio(F, bins, a, b) >= kFillMerge) unite(a, b);
    }
  Domains d;
  std::map<int, int> index;
  for (int i = 0; i < k; ++i) {
    auto [it, fresh] = index.try_emplace(find(i), static_cast<int>(index.size()));
    d.group.push_back(it->second);
  }
  d.count = static_cast<int>(index.size());
  return d;
}

// Per domain: ids by overlap of the sampled pixels' domains with their previous labels.
void domain_ids(Domains& d, const Clustering& bins, const std::vector<std::uint8_t>& previous_of_sample, int& next_id) {
  Clustering tmp;
  tmp.centroids.resize(d.count, 1);
  for (int a : bins.assign) tmp.assign.push_back(d.group[static_cast<std::size_t>(a)]);
  inherit_ids(tmp, previous_of_sample, next_id);
  d.ids = tmp.ids;
}

// What the spatial smoothing needs per labelled pixel: the data cost of each domain and the
// edge size.
struct PixelEvidence {
  std::vector<float> cost;  // P × domains
  std::vector<float> size;  // P
  double inv_two_var_at_unit_size = 0;  // 1/(2σ²) at edge size 1: σ² = noise_var · median size / size
};

// Per cluster: its pixels, and the sums of their spectra brought to a common edge size and of
// those spectra's squares.
struct ClusterSums {
  std::vector<std::size_t> count;
  Eigen::MatrixXd sum, sumsq;  // Eu × k

  ClusterSums(Eigen::Index Eu, std::size_t k)
      : count(k, 0), sum(Eigen::MatrixXd::Zero(Eu, static_cast<Eigen::Index>(k))), sumsq(Eigen::MatrixXd::Zero(Eu, static_cast<Eigen::Index>(k))) {}
  ClusterSums& operator+=(const ClusterSums& o) {
    for (std::size_t c = 0; c < count.size(); ++c) count[c] += o.count[c];
    sum += o.sum;
    sumsq += o.sumsq;
    return *this;
  }
};

// Every part's sums (and pixels the smoothing changed) on every part. The sums then differ from
// one process's in rounding (added in another order); the counts are exact.
void reduce(ClusterSums& sums, std::size_t& smoothed, const ImagePart& part) {
  const std::size_t k = sums.count.size(), n = static_cast<std::size_t>(sums.sum.size());
  std::vector<double> v;
  v.reserve(k + 2 * n + 1);
  for (auto c : sums.count) v.push_back(static_cast<double>(c));
  v.insert(v.end(), sums.sum.data(), sums.sum.data() + n);
  v.insert(v.end(), sums.sumsq.data(), sums.sumsq.data() + n);
  v.push_back(static_cast<double>(smoothed));
  part.sum(v);
  for (std::size_t c = 0; c < k; ++c) sums.count[c] = static_cast<std::size_t>(v[c]);
  std::copy(v.begin() + static_cast<std::ptrdiff_t>(k), v.begin() + static_cast<std::ptrdiff_t>(k + n), sums.sum.data());
  std::copy(v.begin() + static_cast<std::ptrdiff_t>(k + n), v.begin() + static_cast<std::ptrdiff_t>(k + 2 * n), sums.sumsq.data());
  smoothed = static_cast<std::size_t>(v.back());
}

// sum += w·y, sumsq += (w·y)² over n energies: a labelled pixel's spectrum into its cluster's
// sums (the largest part of labelling: every energy of every pixel), in AVX2 where the CPU has it.
__attribute__((target_clones("arch=x86-64-v3", "default")))
void add_scaled(const float* __restrict y, std::size_t n, double w, double* __restrict sum, double* __restrict sumsq) {
  for (std::size_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(y[i]) * w;
    sum[i] += v;
    sumsq[i] += v * v;
  }
}

// Labels pixels with the nearest cluster's id (kBackground without material or an edge,
// kUnassigned when not measured at every energy in use) and sums the clusters' spectra.
// Block by block: a few hundred consecutive pixels are copied plane by plane (contiguous
// reads; a pixel's spectrum alone is one float per plane, planes megabytes apart). Detrending
// is linear, so the size and the PCA scores of a pixel are one small product with its raw
// spectrum: [dirᵀ; Vᵀ]·(I − BQ)·y, in float (features need no more).
class PixelLabeller {
 public:
  PixelLabeller(const SegmentInput& in, const OwnPixels& own, const std::vector<int>& used, const ShapeTransform& shape,
                const FeatureSpace& fs, const Clustering& cl, const Domains& dom, double size_min, PixelEvidence* evidence)
      : in_(in), offset_(own.offset), used_(used), fs_(fs), cl_(cl), dom_(dom), size_min_(size_min), evidence_(evidence),
        basis_mean_(fs.basis.transpose() * fs.mean) {
    Eigen::MatrixXd stacked(fs.r + 1, fs.mean.size());
    stacked.row(0) = shape.direction().transpose();
    stacked.bottomRows(fs.r) = fs.basis.transpose();
    project_ = (stacked * shape.detrend_matrix()).cast<float>();
  }

  // Labels pixels [b, en) into labels and adds the clustered ones to a.
  void label(std::size_t b, std::size_t en, std::vector<std::uint8_t>& labels, std::vector<std::uint8_t>& bins, ClusterSums& a) const {
    const auto G = static_cast<std::size_t>(dom_.count);
    constexpr std::size_t kBlock = 256;
    const int r = fs_.r;
    const auto Ev = static_cast<Eigen::Index>(used_.size());
    Eigen::MatrixXf Yb(Ev, static_cast<Eigen::Index>(kBlock)), Pb(r + 1, static_cast<Eigen::Index>(kBlock));
    std::vector<std::uint8_t> complete(kBlock);
    std::vector<double> f(static_cast<std::size_t>(fs_.dims()));
    const Eigen::Index bins_k = cl_.centroids.rows();
    std::vector<double> dist(static_cast<std::size_t>(bins_k));
    for (std::size_t p0 = b; p0 < en; p0 += kBlock) {
      const std::size_t nb = std::min(kBlock, en - p0);
      const auto nbi = static_cast<Eigen::Index>(nb);
      read_block(in_, used_, p0, nb, Yb.data(), complete.data());
      Pb.leftCols(nbi).noalias() = project_ * Yb.leftCols(nbi);
      for (std::size_t j = 0; j < nb; ++j) {
        const std::size_t p = p0 + j;
        const auto ji = static_cast<Eigen::Index>(j);
        bins[p] = 0;
        if (!complete[j]) {
          labels[p] = kUnassigned;
          continue;
        }
        const double w = Pb(0, ji);
        if ((in_.material && !in_.material[p]) || !(w > size_min_)) {
          labels[p] = kBackground;
          continue;
        }
        const double inv_w = 1.0 / w;
        for (int i = 0; i < r; ++i) f[static_cast<std::size_t>(i)] = (Pb(1 + i, ji) * inv_w - basis_mean_(i)) * fs_.spectral_scale;
        fs_.extras(offset_ + p, in_.cols, in_.xrf ? in_.xrf + p : nullptr, in_.npix, f.data());
        // The squared distance to every bin, once: the nearest bin labels the pixel, and all of
        // them give the smoothing's evidence.
        const int c = nearest(cl_.centroids, f.data(), nullptr, dist.data());
        const auto g = static_cast<std::size_t>(dom_.group[static_cast<std::size_t>(c)]);
        labels[p] = static_cast<std::uint8_t>(dom_.ids[g]);
        bins[p] = static_cast<std::uint8_t>(c + 1);
        ++a.count[g];
        if (evidence_) {
          // The data term of the spatial smoothing: per domain, the squared distance to its
          // nearest bin over 2σ², σ² the noise at this pixel's edge size (shape noise ∝ 1/√size).
          float* D = evidence_->cost.data() + p * G;
          std::fill(D, D + G, std::numeric_limits<float>::infinity());
          const double scale = w * evidence_->inv_two_var_at_unit_size;
          for (Eigen::Index cc = 0; cc < bins_k; ++cc) {
            float& slot = D[dom_.group[static_cast<std::size_t>(cc)]];
            slot = std::min(slot, static_cast<float>(dist[static_cast<std::size_t>(cc)] * scale));
          }
          evidence_->size[p] = static_cast<float>(w);
        }
        // The cluster mean is of spectra brought to a common edge size (not of shapes, which
        // lost their background): it stays a spectrum the references can fit.
        add_scaled(Yb.col(ji).data(), static_cast<std::size_t>(Ev), inv_w, a.sum.col(static_cast<Eigen::Index>(g)).data(),
                   a.sumsq.col(static_cast<Eigen::Index>(g)).data());
      }
    }
  }

 private:
  const SegmentInput& in_;
  std::size_t offset_;  // image index of local pixel 0 (positions are the image's)
  const std::vector<int>& used_;
  const FeatureSpace& fs_;
  const Clustering& cl_;
  const Domains& dom_;
  double size_min_;
  PixelEvidence* evidence_;
  Eigen::MatrixXf project_;     // (r + 1) × Eu: [dirᵀ; Vᵀ]·(I − BQ)
  Eigen::VectorXd basis_mean_;  // Vᵀ·mean, the mean shape's scores
};

// 6. Label every pixel (in parallel) and accumulate each cluster's normalized spectra.
// Pixels between two looks at the cancellation in the passes over every pixel (a few ms).
constexpr std::size_t kCancelPixels = 65536;

ClusterSums label_pixels(const SegmentInput& in, const OwnPixels& own, const PixelLabeller& labeller, Eigen::Index Eu, std::size_t k,
                         std::vector<std::uint8_t>& labels, std::vector<std::uint8_t>& bins) {
  const int threads = std::max(1, in.threads);
  std::vector<ClusterSums> sums(static_cast<std::size_t>(threads), ClusterSums(Eu, k));
  parallel_ranges(own.end - own.begin, threads, 16384, [&](int t, std::size_t b, std::size_t en) {
    // In pieces, each after a look at the cancellation (thread-local: on the calling thread): a
    // stop waits for this pass, 0.4 s on one thread at 2048², only until the next piece.
    for (std::size_t p = b; p < en; p += kCancelPixels) {
      throw_if_cancelled();
      labeller.label(own.begin + p, own.begin + std::min(en, p + kCancelPixels), labels, bins, sums[static_cast<std::size_t>(t)]);
    }
  });
  for (std::size_t t = 1; t < sums.size(); ++t) sums[0] += sums[t];
  return sums[0];
}

// Spatially coherent labels: ICM (Besag 1986) on a Potts model over 4-neighbours. Each
// labelled pixel takes the domain minimizing its data cost (evidence) + beta × the number of its
// labelled 4-neighbours in another domain, in raster sweeps until nothing changes (at most 5).
// 4-neighbours, not 8: a one-pixel line has as many neighbours along it as across it, so the
// prior is neutral on it and its own spectrum decides: thin features survive. The pixels that
// change are moved between the domains' spectral sums (their spectra re-read).
// Parts of one image (MPI ranks) sweep their own rows as one process would sweep the image: a
// part's first row sees the row above as the part above left it in the same sweep, and its last
// row sees the row below as the part below left it in the previous sweep; each part passes those
// rows on as soon as it has them, so the parts' sweeps run as a pipeline. They make all 5 sweeps:
// a sweep that changes nothing leaves a fixed point, which further sweeps keep, so the labels
// are those of one process that stopped early.
std::size_t smooth_labels(const SegmentInput& in, const OwnPixels& own, const std::vector<int>& used, const Domains& dom,
                          const PixelEvidence& ev, double beta, std::vector<std::uint8_t>& labels, std::vector<std::uint8_t>& bins,
                          ClusterSums& sums) {
  const auto G = static_cast<std::size_t>(dom.count);
  const int rows = in.rows, cols = in.cols;
  if (G < 2 || rows <= 0 || cols <= 0 || static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) != in.npix) return 0;
  std::array<int, 256> group_of;
  group_of.fill(-1);
  for (std::size_t g = 0; g < G; ++g) group_of[static_cast<std::size_t>(dom.ids[g])] = static_cast<int>(g);
  const std::vector<std::uint8_t> before = labels;
  std::vector<int> n(G);
  std::vector<double> cost(G);
  const auto ucols = static_cast<std::size_t>(cols);
  const int r0 = static_cast<int>(own.rows_begin(cols)), r1 = static_cast<int>(own.rows_end(cols));
  const bool above = own.shared() && own.offset + own.begin > 0, below = own.shared() && own.offset + own.end < own.image_npix;
  std::vector<std::uint8_t> up(ucols, kBackground), down(ucols, kBackground);  // the neighbours' rows
  auto row_at = [&](int r) -> const std::uint8_t* {
    if (r == r0 - 1) return up.data();
    if (r == r1) return down.data();
    return labels.data() + static_cast<std::size_t>(r) * ucols;
  };
  auto own_row = [&](int r) { return std::span<const std::uint8_t>(labels.data() + static_cast<std::size_t>(r) * ucols, ucols); };
  constexpr int kSweeps = 5;
  if (above) own.part->send_row(-1, own_row(r0));  // the part above's sweep 0 sees this
  for (int sweep = 0; sweep < kSweeps; ++sweep) {
    std::size_t changed = 0;
    if (above) own.part->receive_row(-1, up);
    for (int r = r0; r < r1; ++r) {
      // Parts of an MPI job exchange rows as they sweep: only one process's sweeps stop midway.
      if (!own.shared() && static_cast<std::size_t>(r - r0) % (kCancelPixels / std::max<std::size_t>(ucols, 1) + 1) == 0)
        throw_if_cancelled();
      if (r == r1 - 1 && below) own.part->receive_row(+1, down);
      const bool look_up = (r > r0 || above) && in.slices.same_slice(r, r - 1);
      const bool look_down = (r + 1 < r1 || below) && in.slices.same_slice(r, r + 1);
      const std::uint8_t* row = labels.data() + static_cast<std::size_t>(r) * ucols;
      const std::uint8_t* row_up = look_up ? row_at(r - 1) : nullptr;
      const std::uint8_t* row_down = look_down ? row_at(r + 1) : nullptr;
      for (int c = 0; c < cols; ++c) {
        const std::size_t p = static_cast<std::size_t>(r) * ucols + static_cast<std::size_t>(c);
        const int own_group = group_of[labels[p]];
        if (own_group < 0) continue;
        std::fill(n.begin(), n.end(), 0);
        int nn = 0;
        auto look = [&](std::uint8_t label) {
          const int g = group_of[label];
          if (g >= 0) ++n[static_cast<std::size_t>(g)], ++nn;
        };
        if (row_up) look(row_up[c]);
        if (row_down) look(row_down[c]);
        if (c > 0) look(row[c - 1]);
        if (c + 1 < cols) look(row[c + 1]);
        if (nn == 0) continue;
        const float* D = ev.cost.data() + p * G;
        std::size_t best = static_cast<std::size_t>(own_group);
        double bc = INFINITY;
        for (std::size_t g = 0; g < G; ++g) {
          const double v = static_cast<double>(D[g]) + beta * (nn - n[g]);
          if (v < bc) bc = v, best = g;
        }
        if (static_cast<int>(best) != own_group) labels[p] = static_cast<std::uint8_t>(dom.ids[best]), ++changed;
      }
      if (r == r0 && above && sweep + 1 < kSweeps) own.part->send_row(-1, own_row(r0));
    }
    if (below) own.part->send_row(+1, own_row(r1 - 1));
    if (changed == 0 && !own.shared()) break;
  }
  // Move the changed pixels' spectra between the domains' sums.
  std::size_t moved = 0;
  const std::size_t Eu = used.size();
  Eigen::VectorXd yw(static_cast<Eigen::Index>(Eu));
  for (std::size_t p = own.begin; p < own.end; ++p) {
    if (labels[p] == before[p]) continue;
    const auto a = static_cast<Eigen::Index>(group_of[before[p]]), b = static_cast<Eigen::Index>(group_of[labels[p]]);
    for (std::size_t i = 0; i < Eu; ++i) yw(static_cast<Eigen::Index>(i)) = in.planes[static_cast<std::size_t>(used[i]) * in.npix + p];
    yw /= static_cast<double>(ev.size[p]);
    sums.sum.col(a) -= yw, sums.sumsq.col(a) -= yw.cwiseAbs2(), --sums.count[static_cast<std::size_t>(a)];
    sums.sum.col(b) += yw, sums.sumsq.col(b) += yw.cwiseAbs2(), ++sums.count[static_cast<std::size_t>(b)];
    bins[p] = 0;  // its bin is no longer its domain's: left out of the next warm start
    ++moved;
  }
  return moved;
}

// Cluster c's edge-normalized mean spectrum and its standard error on the scan's E energies
// (NaN where not used) into s; returns the normalized mean on the energies in use.
Eigen::VectorXd mean_spectrum(const ClusterSums& sums, std::size_t c, const std::vector<int>& used, std::size_t E, const Normalization& norm,
                              ClusterSummary& s) {
  const std::size_t m = sums.count[c], Eu = used.size();
  s.mean.assign(E, kNaN);
  s.stderr_.assign(E, kNaN);
  const Eigen::VectorXd raw = sums.sum.col(static_cast<Eigen::Index>(c)) / static_cast<double>(m);
  Eigen::VectorXd mu(static_cast<Eigen::Index>(Eu));
  double step = norm.normalize(raw.data(), mu.data());
  if (!(step > 0)) step = 1, mu = raw;  // no edge to normalize by: the mean as it is
  for (std::size_t i = 0; i < Eu; ++i) {
    const auto ii = static_cast<Eigen::Index>(i);
    const double var = m > 1 ? std::max(0.0, (sums.sumsq(ii, static_cast<Eigen::Index>(c)) - m * raw(ii) * raw(ii)) / (m - 1.0)) : 0.0;
    s.mean[static_cast<std::size_t>(used[i])] = mu(ii);
    s.stderr_[static_cast<std::size_t>(used[i])] = std::sqrt(var / static_cast<double>(m)) / step;
  }
  return mu;
}

// LCF of a cluster's mean normalized spectrum mu with the model's rows Xu on the energies in use.
void fit_mean(const Eigen::VectorXd& mu, const Eigen::MatrixXd& Xu, const SegmentInput& in, ClusterSummary& s) {
  const auto Eu = Xu.rows();
  SolveOptions opt = in.fit;
  opt.n_free = in.model->n_background();
  const auto fit = solve(Xu.transpose() * Xu, Xu.transpose() * mu, mu.squaredNorm(), static_cast<int>(Eu), opt);
  if (!fit.ok) return;
  const auto K = in.model->n_refs();
  const Eigen::VectorXd cvec = fit.theta.tail(K);
  s.thickness = cvec.sum();
  s.residual = std::sqrt(fit.chi2 / static_cast<double>(Eu));
  double var = 0;
  int n = 0;
  for (double e : s.stderr_)
    if (std::isfinite(e)) var += e * e, ++n;
  s.noise = n > 0 ? std::sqrt(var / n) : 0.0;
  s.unexplained = (s.residual > 5.0 * s.noise && s.residual > 0.01) || s.thickness < 0.7 || s.thickness > 1.3;
  if (s.thickness > 0) {
    for (Eigen::Index i = 0; i < K; ++i) s.fractions.push_back(cvec(i) / s.thickness);
    const Eigen::VectorXd sig = fraction_sigma(fit, opt.n_free);
    s.fraction_sigma.assign(sig.data(), sig.data() + sig.size());
    s.fitted = true;
  }
}

// 7. Cluster-then-fit: each cluster's mean spectrum, its standard error, and its LCF (Xu: the
// model on the energies in use, empty without references); sorted by id.
std::vector<ClusterSummary> summarize_clusters(const ClusterSums& sums, const std::vector<int>& ids, const SegmentInput& in,
                                               const std::vector<int>& used, const Normalization& norm, const Eigen::MatrixXd& Xu) {
  std::vector<ClusterSummary> clusters;
  for (std::size_t c = 0; c < sums.count.size(); ++c) {
    if (sums.count[c] == 0) continue;
    ClusterSummary s;
    s.id = ids[c];
    s.pixels = sums.count[c];
    const Eigen::VectorXd mu = mean_spectrum(sums, c, used, in.energies->size(), norm, s);
    if (Xu.size() > 0) fit_mean(mu, Xu, in, s);
    clusters.push_back(std::move(s));
  }
  std::sort(clusters.begin(), clusters.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return clusters;
}

// 8. Target transformation (Malinowski): the shapes are scaled spectra, so the data span
// span{mean shape, principal components}; a reference that can be a component of the sample
// has its shape in that span. Residual as RMS per point (shape units, as noise_sigma) and as a
// share of the shape's norm.
void target_transformation(const Eigen::MatrixXd& refs_u, const FeatureSpace& fs, const ShapeTransform& shape, PcaDiagnostics& pca) {
  const Eigen::Index Ev = fs.mean.size();
  const int r = fs.r;
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
    const double rms = res.norm() / std::sqrt(static_cast<double>(Ev));
    pca.tt_residual.push_back(rms);
    pca.tt_ratio.push_back(z.norm() > 0 ? res.norm() / z.norm() : 0.0);
    pca.tt_plausible.push_back(rms < 3.0 * pca.noise_sigma);
  }
}

}  // namespace

void OnlineSegmenter::update(const SegmentInput& in) {
  // Cancelled (science::Cancelled) midway, e.g. inside the labelling pass, the segmenter is put
  // back as it was: its next update starts from the last complete one, and its result stays
  // whole (the labels and the bins: 8 MB of copies at 2048², against 0.2–0.5 s for the update;
  // the copied labels are also what the update starts from).
  Segmentation result = result_;
  std::vector<std::uint8_t> bins = bin_labels_;
  FeatureMatrix features = features_;
  const Rng rng = rng_;
  const int next_id = next_id_;
  try {
    update_once(in, result.labels);
  } catch (const Cancelled&) {
    result_ = std::move(result), bin_labels_ = std::move(bins), features_ = std::move(features);
    rng_ = rng, next_id_ = next_id;
    throw;
  }
}

void OnlineSegmenter::update_once(const SegmentInput& in, const std::vector<std::uint8_t>& previous) {
  Segmentation& out = result_;
  ++out.updates;
  const OwnPixels own = own_pixels(in);
  // A warm start reads the sampled pixels' previous labels: one process's (the daemon's); the
  // parts of an MPI job segment once, cold.
  const bool warm = previous.size() == in.npix && !own.shared();
  if (!warm) out.labels.assign(in.npix, kUnassigned);

  const EnergiesInUse eu = energies_in_use(in, own);  // 1.
  if (eu.size() < 4) {
    out.waiting = "fewer than 4 energies measured across the image";
    return;
  }
  // The sample's matrices are lent by the segmenter for the update and go back to it after.
  Sample sample;
  sample.Y.swap(sample_spectra_), sample.X.swap(sample_shapes_);
  struct GiveBack {
    Sample& s;
    OnlineSegmenter& to;
    ~GiveBack() { s.Y.swap(to.sample_spectra_), s.X.swap(to.sample_shapes_); }
  } give_back{sample, *this};
  draw_sample(in, own, eu.index, static_cast<std::size_t>(std::max(1, settings_.sample)), rng_, sample);  // 2.
  throw_if_cancelled();  // between the steps: a live scan's analysis stops when the scan does
  const int k_floor = settings_.k > 0 ? settings_.k : 2;
  if (sample.Y.rows() < std::max(20, 4 * k_floor)) {
    out.waiting = "too few pixels with material measured at the energies in use (" + std::to_string(sample.Y.rows()) + ")";
    return;
  }
  const ShapeTransform shape = shape_sample(eu.e, sample);  // 3.
  const double size_min = material_size_min(in, sample.sizes);
  keep_with_edge(sample, size_min);
  if (sample.X.rows() < std::max(20, 4 * k_floor)) {
    out.waiting = "too few pixels with an edge (" + std::to_string(sample.X.rows()) + ")";
    return;
  }
  const Normalization norm = mean_normalization(eu.e, sample.Y, in.edge);

  const ModelInUse model = model_in_use(in, eu.index);  // 4.
  out.pca = {};
  out.pca.energies = eu.index;
  const Pca pca = fit_pca(sample.X, model.refs, shape, settings_, rng_, out.pca);
  const FeatureSpace fs = feature_space(pca, out.pca.components, settings_, in, sample);
  const Rows F = features_of(fs, sample, in.cols);
  const double noise_var = feature_noise(F, fs.measured_dims(), sample.pixels, in.cols, pca.sigma2 * fs.spectral_scale * fs.spectral_scale);
  throw_if_cancelled();

  std::vector<std::uint8_t> previous_of_sample, previous_bins_of_sample;  // 5.
  const bool warm_bins = warm && bin_labels_.size() == in.npix;
  if (warm)
    for (auto p : sample.pixels) {
      previous_of_sample.push_back(previous[p]);
      previous_bins_of_sample.push_back(warm_bins ? bin_labels_[p] : kBackground);
    }
  const ScatterRatio ratio{F, fs.measured_dims(), noise_var};
  Clustering cl = cluster_sample(F, previous_bins_of_sample, ratio, settings_, rng_);  // the bins
  cl.ids.clear();
  for (Eigen::Index i = 0; i < cl.centroids.rows(); ++i) cl.ids.push_back(static_cast<int>(i) + 1);  // bin keys (bin_labels_)
  out.scatter_ratio = ratio(cl);
  out.bins = static_cast<int>(cl.centroids.rows());
  features_ = F;
  // Automatic k: the bins grouped into domains; told k: each bin is one.
  Domains dom = settings_.k <= 0 && settings_.merge ? merge_bins(F, cl, sample.Y, sample.sizes, norm, model.X, in, settings_.merge_fraction,
                                                               /* chemistry only when the spectra alone are clustered: XRF or position
                                                                  blocks separate what the spectra cannot */
                                                               fs.dims() == fs.r)
                                                    : identity_domains(cl);
  domain_ids(dom, cl, previous_of_sample, next_id_);
  {
    std::vector<int> by_domain;
    for (int a : cl.assign) by_domain.push_back(dom.group[static_cast<std::size_t>(a)]);
    out.silhouette = silhouette(F, by_domain, dom.count, kSilhouetteSample);
  }

  throw_if_cancelled();
  const auto k = static_cast<std::size_t>(dom.count);  // 6.
  std::optional<PixelEvidence> evidence;
  if (settings_.smoothing > 0 && dom.count >= 2 && noise_var > 0) {
    evidence.emplace();
    evidence->cost.resize(in.npix * k);
    evidence->size.resize(in.npix);
    std::vector<double> sizes = sample.sizes;
    std::nth_element(sizes.begin(), sizes.begin() + static_cast<std::ptrdiff_t>(sizes.size() / 2), sizes.end());
    evidence->inv_two_var_at_unit_size = 1.0 / (2.0 * noise_var * sizes[sizes.size() / 2]);
  }
  bin_labels_.assign(in.npix, 0);
  ClusterSums sums = label_pixels(in, own, PixelLabeller(in, own, eu.index, shape, fs, cl, dom, size_min, evidence ? &*evidence : nullptr),
                                  static_cast<Eigen::Index>(eu.size()), k, out.labels, bin_labels_);
  out.smoothed = evidence ? smooth_labels(in, own, eu.index, dom, *evidence, settings_.smoothing, out.labels, bin_labels_, sums) : 0;
  if (own.shared()) reduce(sums, out.smoothed, *own.part);  // every part's pixels

  throw_if_cancelled();
  out.clusters = summarize_clusters(sums, dom.ids, in, eu.index, norm, model.X);  // 7.
  out.labelled = 0;
  for (const auto& c : out.clusters) out.labelled += c.pixels;

  if (model.refs.cols() > 0) target_transformation(model.refs, fs, shape, out.pca);  // 8.
  out.waiting.clear();
}

bool same_clustering(const SegmentationSettings& a, const SegmentationSettings& b) {
  return a.k == b.k && a.k_max == b.k_max && a.components == b.components && a.variance == b.variance &&
         a.max_components == b.max_components && a.spectral_weight == b.spectral_weight &&
         a.spatial_weight == b.spatial_weight && a.xrf_weight == b.xrf_weight && a.sample == b.sample &&
         a.noise_ratio == b.noise_ratio && a.seed == b.seed && a.merge == b.merge && a.merge_fraction == b.merge_fraction &&
         a.smoothing == b.smoothing;
}

}  // namespace xanesd::science
