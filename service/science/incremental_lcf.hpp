// Incremental LCF over a whole image (science.md §3): per-pixel sufficient statistics updated
// sample by sample, one Gram matrix per distinct set of measured energies, solves on demand.
// Single-threaded by design: the pipeline thread that owns the scan owns this object.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "science/lcf.hpp"
#include "science/spatial_fit.hpp"
#include "science/zeroed_allocator.hpp"

namespace xanesd::science {

// Interns the sets of energy indices pixels have been measured at. In an energy-major scan
// every pixel walks the same chain of sets (one per prefix), so there are only E of them and
// all pixels share each set's Gram matrix and factorization.
class EnergySets {
 public:
  explicit EnergySets(int n_energies);
  static constexpr std::uint32_t kEmpty = 0;
  std::uint32_t with(std::uint32_t set, int energy) {  // set ∪ {energy}
    // The samples of one energy nearly always make the same transition (a frame's pixels, and
    // each pixel of a spectra batch in turn at that energy): the last one is kept per energy.
    auto& last = last_[static_cast<std::size_t>(energy)];
    if (set != last.from) last = {set, with_slow(set, energy)};
    return last.to;
  }
  bool contains(std::uint32_t set, int energy) const;
  int count(std::uint32_t set) const { return sets_[set].count; }
  std::size_t size() const { return sets_.size(); }
  std::vector<int> members(std::uint32_t set) const;

 private:
  struct Set {
    std::vector<std::uint64_t> bits;
    int count = 0;
  };
  struct BitsHash {
    std::size_t operator()(const std::vector<std::uint64_t>& b) const;
  };
  std::uint32_t with_slow(std::uint32_t set, int energy);
  int n_energies_;
  struct Transition {
    std::uint32_t from = ~0u, to = 0;
  };
  std::vector<Transition> last_;  // per energy
  std::vector<Set> sets_;
  std::unordered_map<std::vector<std::uint64_t>, std::uint32_t, BitsHash> index_;
  std::unordered_map<std::uint64_t, std::uint32_t> transitions_;  // (set << 32 | energy) → set
};

// The maps one solve produces (all P = rows·cols long, fractions K·P, reference-major).
// Zeroed vectors: allocating them writes nothing, so a fresh object costs no zero-fill pass
// and fit_stack's threads fault the pages in as they write them.
struct LcfMaps {
  ZeroedVector<float> fractions, fraction_sigma;  // K·P: c_k/Σc and its standard error
  ZeroedVector<float> thickness;                  // Σc: the edge step in signal units
  ZeroedVector<float> residual;                   // RMS misfit √(χ²/n)
  ZeroedVector<float> rfactor;                    // χ²/Σy²
  ZeroedVector<std::uint16_t> nenergies;
  ZeroedVector<std::uint8_t> fitted;  // 1 where the pixel had enough energies and a solution
  // All-zero maps for npix pixels and k references, in `recycled`'s buffers where sizes match.
  void resize(std::size_t npix, int k, LcfMaps recycled = {});
  std::size_t held_bytes() const;
};

// Counting statistics (science.md §3): a pixel's raw samples and the count scale c_j of each,
// so that Poisson noise gives var(y_j) ≈ ŷ_j / c_j in fluorescence (c = I0: counts = I0·y) and
// (e^ŷ_j + 1) / c_j in transmission (c = flat − dark: y = −ln(I/F)). Weights then differ per
// pixel, so the shared Gram matrices no longer apply and the fit reads the raw samples.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual void samples(std::size_t p, std::vector<int>& energies, std::vector<double>& y,
                       std::vector<double>& scale) const = 0;
  virtual bool transmission() const = 0;
};

class IncrementalLcf {
 public:
  // Image-sized buffers one fit hands to the next (a new scan of the same size, the refit after
  // a reference selection): their pages are mapped already. Each is used where its size
  // matches (zeroed first), dropped otherwise.
  struct Buffers {
    ZeroedVector<std::uint32_t> set_of;
    ZeroedVector<double> stats;
    ZeroedVector<std::uint8_t> changed;
    LcfMaps maps;
    std::size_t held_bytes() const;
  };
  IncrementalLcf(LcfModel model, std::size_t npix, SolveOptions options, Buffers recycled = {});
  // This fit's buffers for the next one; the fit is left without statistics or maps.
  Buffers take_buffers() &&;
  // The bytes of its per-pixel buffers (statistics, maps, bookkeeping): what scan_memory models.
  std::size_t held_bytes() const;

  // Folds sample y of pixel p at energy e into the statistics. If the pixel already had a
  // sample at e, pass it as `previous` and it is taken out first (re-measurement).
  // Per sample on the ingest path (defined below the class: inlined into the frame loop).
  inline void add(std::size_t p, int e, double y);
  inline void replace(std::size_t p, int e, double previous, double y);
  // One pixel's samples y[j] at energies e[j], j < n, in that order, each new (previous[j]
  // NaN) or replacing previous[j]: the sums add() and replace() make sample by sample, bit for
  // bit, with the pixel's statistics held in registers (a spectra batch, a pixel at a time).
  void add_spectrum(std::size_t p, std::size_t n, const int* e, const float* y, const float* previous);
  // Folds whole planes at once: for every pixel, the samples of `energies` in an energy-major
  // store (plane e at planes + e·plane_stride; NaN = not measured, skipped). The same sums as
  // add() sample by sample, in the same energy order, but a block of pixels at a time, several
  // planes per pass and on `threads` threads. A pixel must not have a sample at those energies yet.
  void add_planes(const float* planes, std::size_t plane_stride, const std::vector<int>& energies, int threads = 1);

  // Full-stack fit in one pass: accumulates and solves block by block without keeping
  // per-pixel statistics (the batch fit of a complete stack; fastest path). Fills maps() for
  // every pixel. Same solver as solve_changed(); pixels must have nothing measured yet.
  void fit_stack(const float* planes, std::size_t plane_stride, int threads = 1);

  // Solves every pixel changed since the last solve and updates `maps()`, on `threads`
  // threads (pixels are independent). Returns how many were solved.
  std::size_t solve_changed(int threads = 1);
  void mark_all_changed();
  void set_options(const SolveOptions& o);
  // Poisson-weighted fits (iteratively reweighted from the model's own prediction, which
  // avoids the low-count bias of weights from observed counts); nullptr: unweighted.
  void set_sample_source(const SampleSource* source) { samples_ = source; }
  // Edge-preserving spatial estimation (science/spatial_fit) of the fractions and their errors
  // on a rows×cols image: each pixel's fractions come from its neighbours' averaged statistics,
  // scaled to its own thickness; its residual and R-factor are its own data against that model.
  // Off by default here; the scan turns it on from its settings.
  void set_spatial(const SpatialSettings& s, int rows, int cols, SliceLayout slices = {});
  const SpatialSettings& spatial() const { return spatial_; }
  // Effective number of independent pixels behind each pixel's fractions (1: its own fit only,
  // 0: no fit); empty when the spatial step is off.
  const std::vector<float>& spatial_neighbours() const { return spatial_neighbours_; }

  const LcfMaps& maps() const { return maps_; }
  // The maps of a whole image assembled from row blocks other fits solved (the live shards'
  // FitDelegate::solve); this fit's statistics stay as they are (not solved again).
  void adopt_maps(LcfMaps maps, std::vector<float> spatial_neighbours) {
    maps_ = std::move(maps);
    spatial_neighbours_ = std::move(spatial_neighbours);
  }
  const LcfModel& model() const { return model_; }
  const SolveOptions& options() const { return options_; }
  FitMethod method() const { return options_.method; }
  std::size_t pixels() const { return npix_; }
  int energies_measured(std::size_t p) const { return set_of_.empty() ? maps_.nenergies[p] : sets_.count(set_of_[p]); }
  std::size_t energy_sets() const { return sets_.size(); }

 private:
  struct SetCache {  // per energy set: Gram matrix and, for least squares, its inverse
    bool ready = false, invertible = false;
    Eigen::MatrixXd G, G_inv;
  };
  struct Workspace;  // per-thread scratch: no heap allocation per pixel on the common paths
  const SetCache& cache_for(std::uint32_t set);
  // Per-pixel statistics exist only once samples arrive one by one: fit_stack never needs them.
  void ensure_incremental_state() {
    if (set_of_.empty() && npix_ != 0) allocate_incremental_state();
  }
  void allocate_incremental_state();
  void solve_pixel(std::size_t p, Workspace& ws) const;
  // The spatial step's solve of a pixel: the noise variance its averaged statistics carry
  // (instead of χ²/(n − |A|)) and the pixel's own statistics [s, q], against which the
  // averaged model's residual and R-factor are reported.
  struct SpatialSolve {
    double sigma2;
    const double* own;
  };
  // Solves pixel p from statistics st = [s (M), q] over energy set `set` and writes its maps;
  // with `spatial`, st are averaged statistics (solved unweighted). Returns false when it wrote
  // nothing (a spatial solve without a solution: the pixel's own fit must stand).
  bool solve_stats(std::size_t p, std::uint32_t set, const double* st, Workspace& ws,
                   const SpatialSolve* spatial = nullptr) const;
  void solve_spatial(int threads);
  bool block_solvable(const SetCache& c) const;
  struct BlockOut {  // where solve_block writes a block's maps: into maps_ or a scratch block
    float *fractions, *fraction_sigma;  // reference k at [k·k_stride + i]
    std::size_t k_stride;
    float *thickness, *residual, *rfactor;
    std::uint16_t* nenergies;
    std::uint8_t* fitted;
  };
  // Scratch doubles solve_block needs for M parameters.
  static std::size_t block_scratch(int M);
  template <class T>
  void solve_block(const SetCache& c, int n, std::size_t B, const T* acc, const double* q, const BlockOut& out,
                   double* scratch, std::uint8_t* settled) const;
  void solve_listed(const std::size_t* pixels, std::size_t B, std::uint32_t set, Workspace& ws);
  // The settled pixels of a block solved into a scratch BlockOut, to their places in maps_.
  void scatter_block(const BlockOut& out, const std::size_t* pixels, std::size_t B, const std::uint8_t* settled);
  void nnls_block(std::uint32_t set, std::size_t B, const double* s, const double* q, const double* theta,
                  const std::uint8_t* todo, const BlockOut& out, std::uint8_t* settled, Workspace& ws,
                  const double* own = nullptr, const double* own_q = nullptr, const double* sigma2 = nullptr) const;
  FitResult solve_weighted(std::size_t p, const SetCache& c, const Eigen::Ref<const Eigen::VectorXd>& s, double q,
                           int n) const;

  LcfModel model_;
  std::size_t npix_;
  int M_;                              // parameters per pixel
  SolveOptions options_;
  const SampleSource* samples_ = nullptr;
  std::vector<double> xrows_;          // E × M design matrix, row-major for the hot loop
  EnergySets sets_;
  ZeroedVector<std::uint32_t> set_of_;  // pixel → its energy set
  ZeroedVector<double> stats_;          // pixel → [s (M), q]
  ZeroedVector<std::uint8_t> changed_;
  Buffers recycled_;  // the statistics' buffers, until ensure_incremental_state takes them
  std::vector<std::size_t> changed_list_;
  std::vector<SetCache> caches_;
  LcfMaps maps_;
  SpatialSettings spatial_{.enabled = false};
  int rows_ = 0, cols_ = 0;
  SliceLayout slices_;  // a volume's slices: the spatial window stays in one
  std::vector<float> spatial_neighbours_;  // the last step's (SpatialRow::neighbours)
  std::vector<std::uint8_t> smoothed_;  // pixel's fractions came from the spatial step last time
  // Changed pixels whose own fit is left to the spatial step: a pixel it smooths never needs
  // that fit (its maps come from the averaged statistics).
  std::vector<std::uint8_t> own_pending_;
};

inline void IncrementalLcf::add(std::size_t p, int e, double y) {
  ensure_incremental_state();
  const double* x = &xrows_[static_cast<std::size_t>(e * M_)];
  double* st = &stats_[p * static_cast<std::size_t>(M_ + 1)];
  for (int m = 0; m < M_; ++m) st[m] += x[m] * y;
  st[M_] += y * y;
  set_of_[p] = sets_.with(set_of_[p], e);
  if (!changed_[p]) changed_[p] = 1, changed_list_.push_back(p);
}

inline void IncrementalLcf::replace(std::size_t p, int e, double previous, double y) {
  ensure_incremental_state();
  const double* x = &xrows_[static_cast<std::size_t>(e * M_)];
  double* st = &stats_[p * static_cast<std::size_t>(M_ + 1)];
  for (int m = 0; m < M_; ++m) st[m] += x[m] * (y - previous);
  st[M_] += y * y - previous * previous;
  if (!changed_[p]) changed_[p] = 1, changed_list_.push_back(p);
}

}  // namespace xanesd::science
