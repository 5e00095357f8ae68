#include "science/reference_selection.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "science/cancel.hpp"
#include "science/parallel.hpp"
#include "science/random.hpp"

namespace xanesd::science {

std::vector<std::uint8_t> ReferenceSelection::selected() const {
  std::vector<std::uint8_t> s;
  for (const auto& r : references) s.push_back(r.selected);
  return s;
}

std::vector<std::string> ReferenceSelection::selected_names() const {
  std::vector<std::string> s;
  for (const auto& r : references)
    if (r.selected) s.push_back(r.name);
  return s;
}

namespace {

// The pooled NNLS fit of a set of tiles on one candidate set of references.
struct TileFit {
  double misfit = 0;                  // Z = Σ χ²_t / v_t
  std::vector<int> used;              // per library reference: tiles giving it a coefficient > 0
  std::vector<double> fraction_sum;   // per library reference: Σ_t pixels_t · c_k/Σc
  double pixels = 0;
};

class TileProblem {
 public:
  TileProblem(const LcfModel& library, const SelectionEvidence& ev) : K_(library.n_refs()), nb_(library.n_background()) {
    const int n = static_cast<int>(ev.energies.size());
    Eigen::MatrixXd X(n, library.n_params());
    for (int i = 0; i < n; ++i) X.row(i) = library.X.row(ev.energies[static_cast<std::size_t>(i)]);
    G_ = X.transpose() * X;
    B_ = X.transpose() * ev.tile_means.transpose();  // M × T
    q_ = ev.tile_means.rowwise().squaredNorm();
    inv_var_.resize(ev.tiles());
    for (std::size_t t = 0; t < ev.tiles(); ++t) inv_var_[t] = 1.0 / std::max(ev.tile_variance[t], 1e-300);
    pixels_ = ev.tile_pixels;
  }
  int refs() const { return K_; }

  // set: library reference indices (0..K−1); tiles: which tiles to pool.
  TileFit fit(const std::vector<int>& set, const std::vector<std::size_t>& tiles) const {
    std::vector<int> cols;
    for (int b = 0; b < nb_; ++b) cols.push_back(b);
    for (int k : set) cols.push_back(nb_ + k);
    const int m = static_cast<int>(cols.size());
    Eigen::MatrixXd G(m, m);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) G(i, j) = G_(cols[static_cast<std::size_t>(i)], cols[static_cast<std::size_t>(j)]);
    TileFit out;
    out.used.assign(static_cast<std::size_t>(K_), 0);
    out.fraction_sum.assign(static_cast<std::size_t>(K_), 0.0);
    Eigen::VectorXd s(m);
    for (std::size_t t : tiles) {
      for (int i = 0; i < m; ++i) s(i) = B_(cols[static_cast<std::size_t>(i)], static_cast<Eigen::Index>(t));
      double chi2 = q_(static_cast<Eigen::Index>(t));
      if (m > 0) {
        const FitResult r = m > nb_ ? solve_nnls(G, s, q_(static_cast<Eigen::Index>(t)), nb_)
                                    : solve_least_squares(G, s, q_(static_cast<Eigen::Index>(t)));
        if (r.ok) {
          chi2 = r.chi2;
          const double total = r.theta.tail(m - nb_).sum();
          for (int i = nb_; i < m; ++i) {
            const auto k = static_cast<std::size_t>(cols[static_cast<std::size_t>(i)] - nb_);
            if (r.theta(i) > 0) ++out.used[k];
            if (total > 0) out.fraction_sum[k] += pixels_[t] * r.theta(i) / total;
          }
        }
      }
      out.misfit += chi2 * inv_var_[t];
      out.pixels += pixels_[t];
    }
    return out;
  }

 private:
  int K_, nb_;
  Eigen::MatrixXd G_, B_;
  Eigen::VectorXd q_;
  std::vector<double> inv_var_, pixels_;
};

struct Stepwise {
  const TileProblem& problem;
  const ReferenceSelectionSettings& settings;
  const std::vector<std::uint8_t>& previous;
  double log_n;

  // What the change in misfit must exceed for reference k: the BIC penalty on the tiles that
  // use it, a share of the larger model's misfit, scaled by the hysteresis when live.
  double threshold(int k, int used, double misfit_without) const {
    double t = std::max(settings.penalty * log_n * std::max(used, 1), settings.min_share * misfit_without);
    if (!previous.empty()) t *= previous[static_cast<std::size_t>(k)] ? 1.0 / settings.hysteresis : settings.hysteresis;
    return t;
  }

  std::vector<int> run(std::vector<int> set, const std::vector<std::size_t>& tiles) const {
    const int K = problem.refs();
    for (int round = 0; round < 4 * K + 4; ++round) {
      bool changed = false;
      const TileFit now = problem.fit(set, tiles);
      // Forward: the reference whose addition most exceeds its threshold.
      int best = -1;
      double best_margin = 0;
      for (int k = 0; k < K; ++k) {
        if (std::find(set.begin(), set.end(), k) != set.end()) continue;
        auto with = set;
        with.push_back(k);
        const TileFit f = problem.fit(with, tiles);
        const double margin = (now.misfit - f.misfit) - threshold(k, f.used[static_cast<std::size_t>(k)], now.misfit);
        if (margin > best_margin) best_margin = margin, best = k;
      }
      if (best >= 0) {
        set.push_back(best);
        changed = true;
      }
      // Backward: the reference whose removal costs least below its threshold.
      const TileFit full = changed ? problem.fit(set, tiles) : now;
      int worst = -1;
      double worst_margin = 0;
      for (std::size_t i = 0; i < set.size(); ++i) {
        if (changed && set[i] == best) continue;  // just added: it passed
        auto without = set;
        without.erase(without.begin() + static_cast<long>(i));
        const TileFit f = problem.fit(without, tiles);
        const int k = set[i];
        const double margin = (f.misfit - full.misfit) - threshold(k, full.used[static_cast<std::size_t>(k)], f.misfit);
        if (margin < worst_margin) worst_margin = margin, worst = static_cast<int>(i);
      }
      if (worst >= 0) {
        set.erase(set.begin() + worst);
        changed = true;
      }
      if (!changed) break;
    }
    std::sort(set.begin(), set.end());
    return set;
  }
};

}  // namespace

ReferenceSelection select_references(const LcfModel& library, const SelectionEvidence& ev,
                                     const ReferenceSelectionSettings& settings, const std::vector<std::uint8_t>& previous) {
  const int K = library.n_refs();
  if (!previous.empty() && previous.size() != static_cast<std::size_t>(K))
    throw std::invalid_argument("previous selection has " + std::to_string(previous.size()) + " entries for " +
                                std::to_string(K) + " references");
  if (ev.tile_pixels.size() != ev.tiles() ||
      (ev.tiles() > 0 && (static_cast<std::size_t>(ev.tile_means.rows()) != ev.tiles() ||
                          static_cast<std::size_t>(ev.tile_means.cols()) != ev.energies.size())))
    throw std::invalid_argument("selection evidence: tile means, variances and pixel counts disagree in shape");
  ReferenceSelection out;
  for (const auto& n : library.reference_names) out.references.push_back({n});
  out.tiles = static_cast<int>(ev.tiles());
  out.energies = static_cast<int>(ev.energies.size());
  out.pixel_sigma = ev.pixel_sigma;
  if (K == 0) {
    out.waiting = "no references loaded";
    return out;
  }
  if (ev.tiles() == 0) {
    out.waiting = ev.energies.size() < static_cast<std::size_t>(library.n_params() + 3)
                      ? "too few energies measured to weigh " + std::to_string(K) + " references"
                      : "no material pixels measured";
    return out;
  }

  // Indistinguishable pairs: the references' shapes on these energies, background removed.
  {
    const int n = out.energies, nb = library.n_background();
    Eigen::MatrixXd X(n, library.n_params());
    for (int i = 0; i < n; ++i) X.row(i) = library.X.row(ev.energies[static_cast<std::size_t>(i)]);
    Eigen::MatrixXd R = X.rightCols(K);
    if (nb > 0) {
      const Eigen::MatrixXd Bg = X.leftCols(nb);
      R -= Bg * (Bg.transpose() * Bg).ldlt().solve(Bg.transpose() * R);
    }
    for (int i = 0; i < K; ++i)
      for (int j = i + 1; j < K; ++j) {
        const double c = R.col(i).dot(R.col(j)) / std::max(R.col(i).norm() * R.col(j).norm(), 1e-300);
        if (c > settings.collinear_cos) out.collinear.emplace_back(i, j), out.collinear_cos.push_back(c);
      }
  }

  const TileProblem problem(library, ev);
  const Stepwise stepwise{problem, settings, previous, std::log(static_cast<double>(std::max(2, out.energies)))};
  std::vector<std::size_t> all(ev.tiles());
  std::iota(all.begin(), all.end(), std::size_t{0});
  std::vector<int> start;
  for (int k = 0; k < K; ++k)
    if (!previous.empty() && previous[static_cast<std::size_t>(k)]) start.push_back(k);
  const std::vector<int> chosen = stepwise.run(start, all);

  // The evidence for each reference against the final set.
  const TileFit final_fit = problem.fit(chosen, all);
  out.misfit = final_fit.misfit;
  out.misfit_per_point = final_fit.misfit / (static_cast<double>(ev.tiles()) * out.energies);
  for (int k = 0; k < K; ++k) {
    auto& r = out.references[static_cast<std::size_t>(k)];
    const bool in = std::find(chosen.begin(), chosen.end(), k) != chosen.end();
    r.selected = in;
    if (in) {
      auto without = chosen;
      without.erase(std::find(without.begin(), without.end(), k));
      const TileFit f = problem.fit(without, all);
      r.delta_chi2 = f.misfit - final_fit.misfit;
      r.tiles_used = final_fit.used[static_cast<std::size_t>(k)];
      r.threshold = stepwise.threshold(k, r.tiles_used, f.misfit);
      r.share = r.delta_chi2 / std::max(f.misfit, 1e-300);
      r.mean_fraction = final_fit.fraction_sum[static_cast<std::size_t>(k)] / std::max(final_fit.pixels, 1e-300);
    } else {
      auto with = chosen;
      with.push_back(k);
      const TileFit f = problem.fit(with, all);
      r.delta_chi2 = final_fit.misfit - f.misfit;
      r.tiles_used = f.used[static_cast<std::size_t>(k)];
      r.threshold = stepwise.threshold(k, r.tiles_used, final_fit.misfit);
      r.share = r.delta_chi2 / std::max(final_fit.misfit, 1e-300);
    }
  }

  // Stability: the same selection (no hysteresis) on random halves of the tiles.
  if (settings.stability_samples > 0 && ev.tiles() >= 4) {
    Rng rng(settings.seed);
    const std::vector<std::uint8_t> none;
    const Stepwise fresh{problem, settings, none, stepwise.log_n};
    std::vector<int> count(static_cast<std::size_t>(K), 0);
    for (int b = 0; b < settings.stability_samples; ++b) {
      std::vector<std::size_t> half = all;
      for (std::size_t i = half.size(); i > 1; --i) std::swap(half[i - 1], half[rng.below(i)]);
      half.resize(all.size() / 2);
      for (int k : fresh.run({}, half)) ++count[static_cast<std::size_t>(k)];
    }
    for (int k = 0; k < K; ++k)
      out.references[static_cast<std::size_t>(k)].stability =
          static_cast<double>(count[static_cast<std::size_t>(k)]) / settings.stability_samples;
  }
  return out;
}

int selection_tile_side(int rows, int cols, int max_tiles) {
  const double area = static_cast<double>(rows) * cols / std::max(1, max_tiles);
  return std::max(6, static_cast<int>(std::ceil(std::sqrt(area))));
}

SelectionEvidence selection_evidence(const LcfModel& library, const float* all_planes, std::size_t npix, int rows, int cols,
                                     const std::uint8_t* all_material, int max_tiles, int noise_pixels, const ImagePart& part,
                                     const std::uint8_t* ready) {
  SelectionEvidence ev;
  const int E = static_cast<int>(library.X.rows()), M = library.n_params();
  // This part's own pixels: `own` of them from pixel own0, plane e at planes + e·npix.
  const std::size_t own0 = std::min(part.begin, npix), own = std::min(part.end, npix) - own0;
  const float* planes = all_planes + own0;
  const std::uint8_t* material = all_material + own0;
  const int own_rows = cols > 0 ? static_cast<int>(own / static_cast<std::size_t>(cols)) : 0;
  const int image_rows = part.image_rows > 0 ? part.image_rows : rows, row0 = part.row0;
  auto sum = [&](std::span<double> v) {
    if (part.sum) part.sum(v);
  };
  // Counts over the whole image: material pixels, then those measured at each energy.
  std::vector<double> measured(static_cast<std::size_t>(E) + 1, 0.0);
  for (std::size_t p = 0; p < own; ++p) measured[static_cast<std::size_t>(E)] += material[p] != 0;
  for (int e = 0; e < E; ++e) {
    if (ready && !ready[e]) continue;  // never read: not measured here
    const float* plane = planes + static_cast<std::size_t>(e) * npix;
    std::size_t n = 0;
    // Branch-free (& of comparisons; v == v is false for NaN) so it vectorizes: a pass over the stack.
    for (std::size_t p = 0; p < own; ++p) n += (material[p] != 0) & (plane[p] == plane[p]);
    measured[static_cast<std::size_t>(e)] = static_cast<double>(n);
  }
  sum(measured);
  const auto n_material = static_cast<std::size_t>(measured[static_cast<std::size_t>(E)]);
  if (n_material == 0) return ev;
  for (int e = 0; e < E; ++e)
    if (static_cast<std::size_t>(measured[static_cast<std::size_t>(e)]) * 10 >= n_material * 9) ev.energies.push_back(e);
  const int n = static_cast<int>(ev.energies.size());
  if (n < M + 3) return ev;

  // Noise: the residual of each pixel outside the span of the whole library (and background).
  Eigen::MatrixXd X(n, M);
  for (int i = 0; i < n; ++i) X.row(i) = library.X.row(ev.energies[static_cast<std::size_t>(i)]);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(X);
  const Eigen::MatrixXd Q = qr.householderQ() * Eigen::MatrixXd::Identity(n, M);
  const double dof = n - M;

  // Square tiles, at least 6 pixels a side, at most max_tiles of them.
  const int side = selection_tile_side(image_rows, cols, max_tiles);
  if (row0 % side != 0 || ((row0 + own_rows) % side != 0 && row0 + own_rows != image_rows))
    throw std::invalid_argument("selection_evidence: image rows " + std::to_string(row0) + ".." +
                                std::to_string(row0 + own_rows - 1) + " do not start and end on tiles of " +
                                std::to_string(side) + " rows");
  const int tiles_across = (cols + side - 1) / side, tiles_down = (image_rows + side - 1) / side;
  const std::size_t T = static_cast<std::size_t>(tiles_across) * static_cast<std::size_t>(tiles_down);
  // Which pixels count: material, measured at every energy used (plane by plane: contiguous reads).
  std::vector<std::uint8_t> use(material, material + own);
  for (int e : ev.energies) {
    // A restrict pointer: byte stores through use[p] may alias the vector's own pointer, which
    // GCC then reloads every iteration instead of vectorizing.
    const float* __restrict plane = planes + static_cast<std::size_t>(e) * npix;
    std::uint8_t* __restrict u = use.data();
    for (std::size_t p = 0; p < own; ++p) u[p] &= std::fabs(plane[p]) <= FLT_MAX;  // finite
  }
  std::vector<std::uint32_t> tile_of(own);
  std::vector<double> count(T, 0.0);
  for (int r = 0; r < own_rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const std::size_t p = static_cast<std::size_t>(r) * cols + c;
      tile_of[p] = static_cast<std::uint32_t>(((row0 + r) / side) * tiles_across + c / side);
      count[tile_of[p]] += use[p];
    }
  // Tile sums, plane by plane: each row's run of `side` pixels summed at once (a contiguous,
  // vectorizable loop), the planes split over two threads (a full pass over the stack).
  Eigen::MatrixXd sums = Eigen::MatrixXd::Zero(n, static_cast<Eigen::Index>(T));
  auto tile_sums = [&](int i_begin, int i_end) {
    for (int i = i_begin; i < i_end; ++i) {
      // A stop waits for a live analysis only until the next plane (the parts of an MPI job
      // sum their evidence together below: none of them stops alone).
      if (!part.shared()) throw_if_cancelled();
      const float* plane = planes + static_cast<std::size_t>(ev.energies[static_cast<std::size_t>(i)]) * npix;
      for (int r = 0; r < own_rows; ++r)
        for (int c0 = 0, t = ((row0 + r) / side) * tiles_across; c0 < cols; c0 += side, ++t) {
          const std::size_t p0 = static_cast<std::size_t>(r) * cols + c0, len = static_cast<std::size_t>(std::min(side, cols - c0));
          double s = 0;
          for (std::size_t k = 0; k < len; ++k) s += use[p0 + k] ? static_cast<double>(plane[p0 + k]) : 0.0;
          sums(i, t) += s;
        }
    }
  };
  parallel_ranges(static_cast<std::size_t>(n), own >= 65536 ? 2 : 1, 1, [&](int, std::size_t i_begin, std::size_t i_end) {
    tile_sums(static_cast<int>(i_begin), static_cast<int>(i_end));
  });
  // Noise: the first noise_pixels used pixels of each tile, gathered one by one.
  std::vector<double> var_sum(T, 0.0), noise_count(T, 0.0);
  Eigen::VectorXd y(n);
  for (std::size_t p = 0; p < own; ++p) {
    const auto t = tile_of[p];
    if (!use[p] || noise_count[t] >= noise_pixels) continue;
    for (int i = 0; i < n; ++i) y(i) = planes[static_cast<std::size_t>(ev.energies[static_cast<std::size_t>(i)]) * npix + p];
    var_sum[t] += std::max(0.0, y.squaredNorm() - (Q.transpose() * y).squaredNorm()) / dof, ++noise_count[t];
  }
  // Every tile is in one part: the other parts add zeros.
  sum(count);
  sum(std::span<double>(sums.data(), static_cast<std::size_t>(sums.size())));
  sum(var_sum);
  sum(noise_count);
  std::vector<Eigen::VectorXd> means;
  std::vector<double> sigmas;
  for (std::size_t t = 0; t < T; ++t) {
    if (count[t] == 0 || var_sum[t] <= 0) continue;
    means.push_back(sums.col(static_cast<Eigen::Index>(t)) / count[t]);
    ev.tile_variance.push_back(var_sum[t] / noise_count[t] / count[t]);
    ev.tile_pixels.push_back(count[t]);
    sigmas.push_back(std::sqrt(var_sum[t] / noise_count[t]));
  }
  ev.tile_means.resize(static_cast<Eigen::Index>(means.size()), n);
  for (std::size_t t = 0; t < means.size(); ++t) ev.tile_means.row(static_cast<Eigen::Index>(t)) = means[t].transpose();
  if (!sigmas.empty()) {
    std::nth_element(sigmas.begin(), sigmas.begin() + static_cast<long>(sigmas.size() / 2), sigmas.end());
    ev.pixel_sigma = sigmas[sigmas.size() / 2];
  }
  return ev;
}

}  // namespace xanesd::science
