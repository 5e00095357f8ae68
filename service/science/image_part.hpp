// Part of an image: the row block one process of an MPI job fits (service/parallel). The
// image-level steps (the mask's thickness percentile, the reference selection's tile evidence)
// then combine every part's own pixels through `gather` and `sum`; in one process the part is
// the whole image and both are the identity, so the science has no MPI in it.
#pragma once

#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <vector>

namespace xanesd::science {

struct ImagePart {
  // Pixels [begin, end) of this part's arrays are its own; the rest are halo rows (neighbours'
  // pixels the spatial step reads), counted by the part that owns them.
  std::size_t begin = 0, end = std::numeric_limits<std::size_t>::max();
  int row0 = 0;        // the image row of the first own pixel
  int image_rows = 0;  // rows of the whole image (0: this part is the whole image)
  // Every part's values concatenated in image order; each element summed over the parts.
  std::function<std::vector<float>(std::vector<float>)> gather;
  std::function<void(std::span<double>)> sum;
};

}  // namespace xanesd::science
