// Incremental LCF over a whole image (science.md §3): per-pixel sufficient statistics updated
// sample by sample, one Gram matrix per distinct set of measured energies, solves on demand.
// Single-threaded by design: the pipeline thread that owns the scan owns this object.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "science/lcf.hpp"

namespace xanesd::science {

// Interns the sets of energy indices pixels have been measured at. In an energy-major scan
// every pixel walks the same chain of sets (one per prefix), so there are only E of them and
// all pixels share each set's Gram matrix and factorization.
class EnergySets {
 public:
  explicit EnergySets(int n_energies);
  static constexpr std::uint32_t kEmpty = 0;
  std::uint32_t with(std::uint32_t set, int energy);  // set ∪ {energy}; cached transitions
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
  int n_energies_;
  std::vector<Set> sets_;
  std::unordered_map<std::vector<std::uint64_t>, std::uint32_t, BitsHash> index_;
  std::unordered_map<std::uint64_t, std::uint32_t> transitions_;  // (set << 32 | energy) → set
};

// The maps one solve produces (all P = rows·cols long, fractions K·P, reference-major).
struct LcfMaps {
  std::vector<float> fractions, thickness, residual;
  std::vector<std::uint16_t> nenergies;
  std::vector<std::uint8_t> fitted;  // 1 where the pixel had enough energies and a solution
  void resize(std::size_t npix, int k);
};

class IncrementalLcf {
 public:
  IncrementalLcf(LcfModel model, std::size_t npix, FitMethod method);

  // Folds sample y of pixel p at energy e into the statistics. If the pixel already had a
  // sample at e, pass it as `previous` and it is taken out first (re-measurement).
  void add(std::size_t p, int e, double y);
  void replace(std::size_t p, int e, double previous, double y);

  // Solves every pixel changed since the last solve and updates `maps()`. Returns how many.
  std::size_t solve_changed();
  void mark_all_changed();
  void set_method(FitMethod m);

  const LcfMaps& maps() const { return maps_; }
  const LcfModel& model() const { return model_; }
  FitMethod method() const { return method_; }
  std::size_t pixels() const { return npix_; }
  int energies_measured(std::size_t p) const { return sets_.count(set_of_[p]); }
  std::size_t energy_sets() const { return sets_.size(); }

 private:
  struct SetCache {  // per energy set: Gram matrix and, for least squares, its inverse
    bool ready = false, invertible = false;
    Eigen::MatrixXd G, G_inv;
  };
  const SetCache& cache_for(std::uint32_t set);
  void solve_pixel(std::size_t p);

  LcfModel model_;
  std::size_t npix_;
  int M_;                              // parameters per pixel
  FitMethod method_;
  std::vector<double> xrows_;          // E × M design matrix, row-major for the hot loop
  EnergySets sets_;
  std::vector<std::uint32_t> set_of_;  // pixel → its energy set
  std::vector<double> stats_;          // pixel → [s (M), q]
  std::vector<std::uint8_t> changed_;
  std::vector<std::size_t> changed_list_;
  std::vector<SetCache> caches_;
  LcfMaps maps_;
};

}  // namespace xanesd::science
