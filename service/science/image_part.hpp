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

// A volume fitted as one image of its Z slices stacked (Z·Y rows, `xanesd fit` of an
// E × Z × Y × X file): the steps that read a pixel's neighbours (the spatial fit's window, the
// segment labels' smoothing) never reach into another slice.
struct SliceLayout {
  int slice_rows = 0;  // image rows per slice (Y); 0: an image, no slices
  int first_row = 0;   // the image row of the arrays' row 0 (an MPI rank's block with its halo)
  bool same_slice(int r, int q) const {
    return slice_rows <= 0 || (first_row + r) / slice_rows == (first_row + q) / slice_rows;
  }
};

}  // namespace xanesd::science
