// Realistic scenes and how a fit is scored against their truth, shared by the accuracy and
// model-choice tests (tests/test_accuracy.cpp, tests/test_model_choice.cpp) and the benchmarks
// (bench/bench_accuracy.cpp, bench/bench_segment.cpp), so a number in a test and the same number
// in a benchmark table are the same computation.
//
//   scene_params   the simulator's scene layout as issues 10 and 11 describe it: S counts per
//                  unit edge step, background 0.002, I0 recorded in ion-chamber units (1e5)
//   pick_references   named references of a library, in the order asked (throws if one is missing)
//   material / edge_band   pixel sets of the truth: thickness > 0; within r px of a domain change
//   fraction_rmse  RMSE of the truth species' fractions (0 where the fit lacks the species)
//   zscore_spread  std of (estimate − truth)/σ
//   ari_on_material   adjusted Rand index of a labelling against truth.domains over material pixels
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "science/kmeans.hpp"
#include "science/references.hpp"
#include "simulate/simulate.hpp"

namespace xanesd::sim {

// The four species of the issues' scene (a published chemical map's Fe phases).
inline const std::vector<std::string>& scene_species() {
  static const std::vector<std::string> names{"Magnetite", "Goethite", "Pyrite", "Hematite_NP"};
  return names;
}

// A rows×cols fluorescence scene on `energies_eV`: S = `counts` per unit edge step, background
// 0.002 under the edge, I0 recorded as an ion chamber would (1e5 units per unit beam).
inline Params scene_params(int rows, int cols, const std::vector<double>& energies_eV, double counts, std::uint64_t seed = 1) {
  Params p;
  p.rows = rows, p.cols = cols;
  p.energies_eV = energies_eV;
  p.layout = Params::Layout::scene;
  p.counts = counts;
  p.background = 0.002;
  p.i0_units = 1e5;
  p.seed = seed;
  return p;
}

inline std::vector<science::Reference> pick_references(const std::vector<science::Reference>& all,
                                                        const std::vector<std::string>& names) {
  std::vector<science::Reference> out;
  for (const auto& n : names) {
    const auto it = std::find_if(all.begin(), all.end(), [&](const auto& r) { return r.name == n; });
    if (it == all.end()) throw std::runtime_error("reference " + n + " not in the library");
    out.push_back(*it);
  }
  return out;
}

// 1 where the truth has material (thickness > 0).
inline std::vector<std::uint8_t> material(const Scan& truth) {
  std::vector<std::uint8_t> m(truth.pixels());
  for (std::size_t p = 0; p < m.size(); ++p) m[p] = truth.thickness[p] > 0;
  return m;
}

// Material pixels within `radius` px (square window) of a change of truth.domains (between two
// domains, or between a domain and the empty background).
inline std::vector<std::uint8_t> edge_band(const Scan& truth, int radius) {
  const int R = truth.params.rows, C = truth.params.cols;
  std::vector<std::uint8_t> out(truth.pixels(), 0);
  if (truth.domains.empty()) return out;
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const std::size_t p = static_cast<std::size_t>(r) * C + c;
      if (truth.thickness[p] <= 0) continue;
      for (int dr = -radius; dr <= radius && !out[p]; ++dr)
        for (int dc = -radius; dc <= radius; ++dc) {
          const int rr = r + dr, cc = c + dc;
          if (rr < 0 || cc < 0 || rr >= R || cc >= C) continue;
          if (truth.domains[static_cast<std::size_t>(rr) * C + cc] != truth.domains[p]) {
            out[p] = 1;
            break;
          }
        }
    }
  return out;
}

// Fraction RMSE of the truth's species over the material pixels (and `subset`, if given):
// `fractions` is K_fit × P (reference k at [k·P + p]) named `names`; a truth species the fit
// lacks counts as estimate 0.
inline double fraction_rmse(std::span<const float> fractions, const std::vector<std::string>& names, const Scan& truth,
                            const std::vector<std::uint8_t>* subset = nullptr) {
  const std::size_t P = truth.pixels();
  double se = 0;
  std::size_t n = 0;
  for (std::size_t k = 0; k < truth.reference_names.size(); ++k) {
    const auto it = std::find(names.begin(), names.end(), truth.reference_names[k]);
    const auto fk = static_cast<std::size_t>(it - names.begin());
    for (std::size_t p = 0; p < P; ++p) {
      if (truth.thickness[p] <= 0 || (subset && !(*subset)[p])) continue;
      const double est = it == names.end() ? 0.0 : fractions[fk * P + p];
      se += (est - truth.fractions[k * P + p]) * (est - truth.fractions[k * P + p]), ++n;
    }
  }
  return n ? std::sqrt(se / static_cast<double>(n)) : 0.0;
}

// Standard deviation of the z-scores (estimate − truth)/σ of the truth species the fit has, over
// material pixels where `valid` is set and σ > 0: 1 when the reported uncertainties are right.
inline double zscore_spread(std::span<const float> fractions, std::span<const float> sigma,
                            const std::vector<std::string>& names, const Scan& truth, const std::vector<std::uint8_t>& valid) {
  const std::size_t P = truth.pixels();
  double s1 = 0, s2 = 0;
  std::size_t n = 0;
  for (std::size_t k = 0; k < truth.reference_names.size(); ++k) {
    const auto it = std::find(names.begin(), names.end(), truth.reference_names[k]);
    if (it == names.end()) continue;
    const auto fk = static_cast<std::size_t>(it - names.begin());
    for (std::size_t p = 0; p < P; ++p) {
      if (truth.thickness[p] <= 0 || !valid[p] || !(sigma[fk * P + p] > 0)) continue;
      const double z = (fractions[fk * P + p] - truth.fractions[k * P + p]) / sigma[fk * P + p];
      s1 += z, s2 += z * z, ++n;
    }
  }
  if (n < 2) return 0.0;
  const double mean = s1 / static_cast<double>(n);
  return std::sqrt(std::max(0.0, s2 / static_cast<double>(n) - mean * mean));
}

// ARI of `labels` (one per pixel) against truth.domains over the truth's material pixels.
inline double ari_on_material(const std::vector<std::uint8_t>& labels, const std::vector<std::uint8_t>& domains) {
  std::vector<int> a, b;
  for (std::size_t p = 0; p < domains.size(); ++p)
    if (domains[p] > 0) a.push_back(labels[p]), b.push_back(domains[p]);
  return science::adjusted_rand_index(a, b);
}

}  // namespace xanesd::sim
