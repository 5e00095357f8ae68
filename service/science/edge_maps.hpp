// Per-pixel edge maps (PyXAS's peak / edge-position maps): an oxidation-state screen that
// needs no references. Every pixel is edge-normalized with the scan's pre-edge and post-edge
// ranges (from the image's mean spectrum, as Larch's pre_edge would choose them), then:
// E0 at the steepest rise, the half-step energy, the white-line peak and the edge step.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "science/edge_normalize.hpp"
#include "science/image_part.hpp"

namespace xanesd::science {

// Edge normalization of single pixels with scan-level ranges (one pre-edge line and one
// post-edge polynomial projector shared by every pixel): the edge maps and the segmentation
// both normalize this way, so a pixel's normalized spectrum means the same in both.
class PixelNormalizer {
 public:
  // energies: the energies every normalized pixel has; ranges: pre_edge() of the mean spectrum
  // on them. Throws std::invalid_argument when a range holds too few energies.
  PixelNormalizer(const std::vector<double>& energies, const PreEdgeResult& ranges);
  // norm = (y − pre-edge line)/step; returns the step (not > 0: no edge, norm meaningless).
  double normalize(const double* y, double* norm) const;
  // The same for n pixels at once, plane-major (energy j of pixel i at [j·stride + i], in y and
  // norm), the loops over the pixels so they vectorize (normalize is the case n = 1). step: n
  // values; norm where step ≤ 0 is meaningless.
  void normalize_block(const double* y, std::size_t stride, std::size_t n, double* norm, double* step) const;
  // The same, always inlined: for the edge maps' kernel in this file's translation unit, which
  // is compiled for wider vectors (AVX2) and takes these loops with it.
  void normalize_block_inline(const double* y, std::size_t stride, std::size_t n, double* norm, double* step) const;
  const PreEdgeResult& ranges() const { return ranges_; }

 private:
  struct Projector {  // least-squares polynomial coefficients = P · y[idx]
    std::vector<int> idx;
    Eigen::MatrixXd P;
  };
  static Projector make(const std::vector<double>& e, double e0, double lo, double hi, int deg);
  std::vector<double> de_;  // E − E0 per energy
  PreEdgeResult ranges_;
  Projector pre_, post_;
};

struct EdgeMaps {
  std::vector<float> e0;          // eV, maximum of dμ/dE (0 where not computed)
  std::vector<float> half_step;   // eV, where the normalized spectrum first reaches 0.5
  std::vector<float> white_line;  // eV, vertex of the parabola through the maximum above E0
  std::vector<float> edge_step;   // signal units
  PreEdgeResult ranges;           // the scan-level normalization (E0 and ranges used)
  std::size_t computed = 0;
};

// What every pixel's edge maps share: the pixels to map and the scan-level ranges.
struct EdgeMapPlan {
  std::vector<std::uint8_t> use;        // P: selected, measured at every energy (and own, in a part)
  std::size_t n = 0;                    // such pixels, in every part
  std::optional<PreEdgeResult> ranges;  // none: too few energies, pixels or points in a range
};

// planes: E×P energy-major (NaN = not measured); only pixels with `selected[p]` and every
// energy measured are mapped. `part` shared (an MPI rank's block): its own rows only, the mean
// spectrum summed over every block (one reduction, on the calling thread).
EdgeMapPlan plan_edge_maps(std::span<const float> planes, const std::vector<double>& energies_eV, std::size_t npix,
                           const std::vector<std::uint8_t>& selected, const PreEdgeParams& params, int threads,
                           const ImagePart* part = nullptr);
EdgeMaps compute_edge_maps(const EdgeMapPlan& plan, std::span<const float> planes, const std::vector<double>& energies_eV,
                           std::size_t npix, int threads);

}  // namespace xanesd::science
