// Per-pixel edge maps (PyXAS's peak / edge-position maps): an oxidation-state screen that
// needs no references. Every pixel is edge-normalized with the scan's pre-edge and post-edge
// ranges (from the image's mean spectrum, as Larch's pre_edge would choose them), then:
// E0 at the steepest rise, the half-step energy, the white-line peak and the edge step.
#pragma once

#include <cstdint>
#include <vector>

#include "science/edge_normalize.hpp"

namespace xanesd::science {

struct EdgeMaps {
  std::vector<float> e0;          // eV, maximum of dμ/dE (0 where not computed)
  std::vector<float> half_step;   // eV, where the normalized spectrum first reaches 0.5
  std::vector<float> white_line;  // eV, vertex of the parabola through the maximum above E0
  std::vector<float> edge_step;   // signal units
  PreEdgeResult ranges;           // the scan-level normalization (E0 and ranges used)
  std::size_t computed = 0;
};

// planes: E×P energy-major (NaN = not measured); only pixels with `selected[p]` and every
// energy measured are computed.
EdgeMaps compute_edge_maps(const std::vector<float>& planes, const std::vector<double>& energies_eV, std::size_t npix,
                           const std::vector<std::uint8_t>& selected, const PreEdgeParams& params, int threads);

}  // namespace xanesd::science
